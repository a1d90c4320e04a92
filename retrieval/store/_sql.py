"""Helpers shared by the catalog modules: dialect upserts, chunked IN lists, prefix ranges."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from retrieval.errors import CatalogError
from retrieval.store.tables import ALL_SPACES

T = TypeVar("T")

# Rows per executemany / ids per IN (...) list: below SQLite's 32766 and PostgreSQL's
# 65535 bound-parameter limits.
CHUNK = 5000

_INSERTS: dict[str, Callable[[sa.Table], Any]] = {
    "sqlite": sqlite.insert,
    "postgresql": postgresql.insert,
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def int_list(values: Any, what: str) -> list[int]:
    """``values`` (sequence or array of integers) as a list of Python ints."""
    array = np.asarray(values)
    if array.size == 0:
        return []
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise CatalogError(f"{what} must be a 1-D sequence of integers, got {array.dtype} {array.shape}")
    return [int(v) for v in array.tolist()]


def check_space(space: str) -> str:
    if space not in ALL_SPACES:
        raise CatalogError(f"unknown vector space {space!r}; valid spaces: {', '.join(ALL_SPACES)}")
    return space


def upsert(
    session: Session,
    table: sa.Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    keys: Sequence[str],
    update: Sequence[str] = (),
    update_expr: Callable[[Any], Mapping[str, Any]] | None = None,
) -> None:
    """Bulk ``INSERT ... ON CONFLICT (keys) DO UPDATE`` (``DO NOTHING`` when nothing to update).

    Rows repeating a key keep the last one (PostgreSQL refuses to touch a row twice in one
    statement); rows are written in key order, so concurrent upserts cannot deadlock.
    ``update`` columns take the new value; ``update_expr(stmt)`` may return SQL expressions
    (using ``stmt.excluded``) for other columns.
    """
    if not rows:
        return
    # Last row per key wins; key order makes concurrent writers lock rows in the same order.
    by_key = {tuple(row[k] for k in keys): row for row in rows}
    unique = [by_key[key] for key in sorted(by_key)]
    dialect = session.get_bind().dialect.name
    make_insert = _INSERTS.get(dialect)
    if make_insert is None:
        raise CatalogError(f"the catalog does not support the {dialect!r} database; use SQLite or PostgreSQL")
    stmt = make_insert(table)
    set_: dict[str, Any] = {name: stmt.excluded[name] for name in update}
    if update_expr is not None:
        set_.update(update_expr(stmt))
    if set_:
        stmt = stmt.on_conflict_do_update(index_elements=list(keys), set_=set_)
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=list(keys))
    for chunk in chunks(unique):
        session.execute(stmt, list(chunk))


def prefix_condition(column: sa.ColumnElement[Any], prefix: str) -> sa.ColumnElement[bool]:
    """``column`` starts with ``prefix``, as an index-friendly half-open range.

    Both back ends compare these columns by code point (SQLite BINARY, PostgreSQL "C"),
    where the strings starting with ``p`` are exactly those in ``[p, p[:-1] + succ(p[-1]))``.
    """
    if not prefix:
        return column.is_not(None)
    stem = prefix
    while stem and ord(stem[-1]) == 0x10FFFF:
        stem = stem[:-1]
    if not stem:
        return column >= prefix
    succ = ord(stem[-1]) + 1
    if 0xD800 <= succ <= 0xDFFF:  # surrogates never occur in stored text
        succ = 0xE000
    upper = stem[:-1] + chr(succ)
    return sa.and_(column >= prefix, column < upper)


def rowcount(result: Any) -> int:
    """Rows touched by an executed ``UPDATE`` / ``DELETE``."""
    return int(cast("CursorResult[Any]", result).rowcount)
