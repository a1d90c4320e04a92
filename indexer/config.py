"""Layered configuration of the command line: built-in defaults < config file < environment < flags.

* Config file: TOML, from ``--config FILE``, else ``$IMSEARCH_CONFIG``, else ``./imsearch.toml``
  when it exists. Top-level keys apply to every command; a table named after a command
  (``[index]``, ``[search]`` ...) applies to that command only::

      data_dir = "/srv/imsearch"
      db = "postgresql://imsearch@db/imsearch"
      [index]
      detect = true

* Environment: ``IMSEARCH_<OPTION>`` with the option's name upper-cased, dashes as
  underscores (``IMSEARCH_DATA_DIR``, ``IMSEARCH_DB``, ``IMSEARCH_DEVICE`` ...).
* Flags win over both. ``imsearch <command> --print-config`` shows the resolved values.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from pathlib import Path
from typing import Any

from retrieval.errors import ImsearchError

ENV_PREFIX = "IMSEARCH_"


def add_common(parser: argparse.ArgumentParser) -> None:
    """Options every command that opens a collection takes."""
    group = parser.add_argument_group("collection")
    group.add_argument(
        "--data-dir",
        default="imsearch-data",
        metavar="DIR",
        help="where the index, the model and (by default) the SQLite catalog live (default: %(default)s; "
        "env IMSEARCH_DATA_DIR). Example: --data-dir ~/photos-index",
    )
    group.add_argument(
        "--db",
        default=None,
        metavar="URL",
        help="catalog database URL (default: SQLite in the data dir; env IMSEARCH_DB). "
        "Example: --db postgresql://me@localhost/imsearch",
    )
    group.add_argument(
        "--device",
        default="auto",
        help="torch device for the model: auto (CUDA when present), cpu, cuda, cuda:1 (default: %(default)s)",
    )
    group.add_argument("--config", default=None, metavar="FILE", help="TOML config file (env IMSEARCH_CONFIG)")
    group.add_argument("--print-config", action="store_true", help="print the resolved options and exit")


def _coerce(action: argparse.Action, raw: Any, source: str) -> Any:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ImsearchError(f"{source}: expected a boolean (true/false), got {raw!r}")
    if action.nargs in ("*", "+") and isinstance(raw, str):
        raw = raw.split(",")
    try:
        if action.type is not None and callable(action.type):
            if isinstance(raw, list):
                return [action.type(v) for v in raw]
            return action.type(raw)
    except (TypeError, ValueError) as exc:
        raise ImsearchError(f"{source}: invalid value {raw!r} for --{action.dest.replace('_', '-')}: {exc}") from exc
    return raw


def _file_values(path: str | None, command: str) -> tuple[dict[str, Any], str | None]:
    explicit = path or os.environ.get(f"{ENV_PREFIX}CONFIG")
    candidate = Path(explicit) if explicit else Path("imsearch.toml")
    if not candidate.is_file():
        if explicit:
            raise ImsearchError(f"config file {candidate} does not exist")
        return {}, None
    try:
        data = tomllib.loads(candidate.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ImsearchError(f"cannot read config file {candidate}: {exc}") from exc
    values = {k: v for k, v in data.items() if not isinstance(v, dict)}
    section = data.get(command, {})
    if isinstance(section, dict):
        values.update(section)
    return {k.replace("-", "_"): v for k, v in values.items()}, str(candidate)


def resolve(parser: argparse.ArgumentParser, args: argparse.Namespace, argv_flags: set[str], command: str) -> None:
    """Fill ``args`` options the user did not give on the command line from env and config file."""
    values, source = _file_values(getattr(args, "config", None), command)
    known = {a.dest: a for a in parser._actions if a.dest not in ("help", "func", "config")}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ImsearchError(f"config file {source}: unknown options for '{command}': {', '.join(unknown)}")
    for dest, action in known.items():
        if any(opt in argv_flags for opt in action.option_strings) or not action.option_strings:
            continue
        env_name = ENV_PREFIX + dest.upper()
        if env_name in os.environ:
            setattr(args, dest, _coerce(action, os.environ[env_name], f"${env_name}"))
        elif dest in values:
            setattr(args, dest, _coerce(action, values[dest], f"{source} [{dest}]"))


def flags_given(argv: list[str]) -> set[str]:
    """The option strings present in ``argv`` (``--k=5`` counts as ``--k``)."""
    return {a.split("=", 1)[0] for a in argv if a.startswith("-")}
