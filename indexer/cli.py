"""The ``imsearch`` command line."""

from __future__ import annotations

import argparse
import sys

from retrieval import __version__


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``imsearch`` console script."""
    parser = argparse.ArgumentParser(prog="imsearch", description="Image-retrieval search engine.")
    parser.add_argument("--version", action="version", version=f"imsearch {__version__}")
    parser.parse_args(argv)
    parser.print_help(sys.stderr)
    return 2
