"""Server-side paths: only inside the configured roots, after resolving ``..`` and symlinks."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from api.errors import ApiError


def confine(raw: str, roots: Sequence[Path]) -> Path:
    """The real path of ``raw`` if it lies inside one of ``roots``; an :class:`ApiError` otherwise.

    ``raw`` must be absolute and free of ``..``; symbolic links anywhere on the way are
    resolved first, so a link pointing out of a root is refused like the target itself.
    """
    if not roots:
        raise ApiError(
            403,
            "server-side paths are disabled: the server has no allowed roots (set IMSEARCH_ALLOWED_ROOTS)",
            kind="paths-disabled",
            title="Server-side paths disabled",
        )
    if not raw or "\x00" in raw:
        raise ApiError(422, "the path is empty or contains a NUL character", kind="invalid-path")
    path = Path(raw)
    if not path.is_absolute():
        raise ApiError(
            422,
            f"{raw!r} is not an absolute path; give a full path under one of the allowed roots",
            kind="invalid-path",
        )
    if ".." in path.parts:
        raise ApiError(403, f"{raw!r} contains '..'; give the path without it", kind="path-outside-roots")
    resolved = Path(os.path.realpath(path))
    for root in roots:
        real_root = Path(os.path.realpath(root))
        if resolved == real_root or resolved.is_relative_to(real_root):
            return resolved
    # never say where a link resolves: that would describe what lies outside the roots
    raise ApiError(
        403,
        f"{raw} is outside the folders this server may read (or links out of them); allowed roots: "
        + ", ".join(str(r) for r in roots),
        kind="path-outside-roots",
        title="Path outside the allowed roots",
    )
