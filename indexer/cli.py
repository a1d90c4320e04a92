"""The ``imsearch`` command line: one sub-command per module in :mod:`indexer.commands`.

Each command module exposes ``register(subparsers)``, which adds its parser and sets
``func`` (``args -> exit code``) on it. Options can also come from environment variables
(prefix ``IMSEARCH_``) and a config file (see :mod:`indexer.config`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from indexer.config import flags_given, resolve
from retrieval import __version__
from retrieval.errors import ImsearchError
from retrieval.runtime import INDEX_ARENAS, INDEX_MMAP_THRESHOLD, tune_malloc, tune_onednn

logger = logging.getLogger("imsearch")

#: command modules, in the order ``imsearch --help`` lists them
COMMAND_MODULES: tuple[str, ...] = (
    "index",
    "search",
    "stats",
    "labels",
    "duplicates",
    "calibrate",
    "eval",
    "reindex",
    "train",
    "serve",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imsearch",
        description="Image-retrieval search engine: index photos, search by example, serve the HTTP API.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"imsearch {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"indexer.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``imsearch`` console script."""
    tune_onednn()  # before any convolution: kernels of every input shape stay built (see retrieval.runtime)
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.command == "index":  # throughput over the last MiB; elsewhere large blocks get their own mappings
        tune_malloc(mmap_threshold=INDEX_MMAP_THRESHOLD, arena_max=INDEX_ARENAS)
    else:
        tune_malloc()
    level = logging.WARNING if args.quiet else (logging.DEBUG if args.verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not args.verbose:
        for noisy in ("retrieval.models.backbones", "retrieval.models.extract", "alembic", "faiss"):
            logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        sub = getattr(args, "_parser", None)
        if sub is not None:
            resolve(sub, args, flags_given(argv), args.command)
            if getattr(args, "print_config", False):
                for key, value in sorted(vars(args).items()):
                    if not key.startswith("_") and key not in ("func", "print_config"):
                        print(f"{key} = {value!r}")
                return 0
        return int(func(args))
    except ImsearchError as exc:
        logger.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        logger.warning("interrupted")
        return 130
