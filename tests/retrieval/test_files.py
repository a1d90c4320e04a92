"""retrieval.files: indexed files confined to their roots and checked against the catalog at every read."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from retrieval.errors import ImageDecodeError
from retrieval.files import (
    FileAccessError,
    FileChangedError,
    IndexedFile,
    confine,
    first_readable,
    open_confined,
    open_indexed,
    open_indexed_file,
)

CONTENT = b"\xff\xd8\xff\xe0 an indexed photo " * 100
SECRET = b"TOPSECRET " * 170


@pytest.fixture()
def tree(tmp_path: Path) -> dict[str, Path]:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "photo.jpg").write_bytes(CONTENT)
    (outside / "secret.jpg").write_bytes(SECRET)
    (root / "link_out.jpg").symlink_to(outside / "secret.jpg")
    (root / "link_in.jpg").symlink_to(root / "photo.jpg")
    (root / "dir_out").symlink_to(outside)
    os.mkfifo(root / "fifo.jpg")
    return {"root": root, "outside": outside}


def read(path: Path, roots: list[Path], data: bytes = CONTENT, mtime_ns: int | None = None, **kw: int) -> bytes:
    """open_indexed of ``path`` expecting ``data`` (as the catalog would have recorded it)."""
    sha = hashlib.sha256(data).hexdigest()
    return open_indexed(path, roots=roots, size=len(data), mtime_ns=mtime_ns, sha256=sha, **kw)


def test_confine_resolves_every_link_and_keeps_to_the_roots(tree: dict[str, Path]) -> None:
    root = tree["root"]
    assert confine(root / "photo.jpg", [root]) == (root / "photo.jpg").resolve()
    assert confine(root / "link_in.jpg", [root]) == (root / "photo.jpg").resolve()  # a link inside is fine
    for name, why in (("link_out.jpg", "outside"), ("dir_out/secret.jpg", "outside"), ("sub", "not a regular"),
                      ("fifo.jpg", "not a regular"), ("gone.jpg", "no longer on disk")):
        with pytest.raises(FileAccessError, match=why) as err:
            confine(root / name, [root])
        assert str(tree["outside"]) not in str(err.value) and "TOPSECRE" not in str(err.value)
    with pytest.raises(FileAccessError):
        confine(root / "photo.jpg", [])  # no roots: nothing is inside
    with pytest.raises(FileAccessError, match="NUL"):
        confine(f"{root}/photo\x00.jpg", [root])
    # no roots given (the command line): anywhere, but the file itself must not be a link
    assert confine(tree["outside"] / "secret.jpg", None) == (tree["outside"] / "secret.jpg").resolve()
    with pytest.raises(FileAccessError, match="symbolic link"):
        confine(root / "link_out.jpg", None)


def test_open_confined_reads_the_checked_file(tree: dict[str, Path]) -> None:
    real, fh = open_confined(tree["root"] / "photo.jpg", [tree["root"]])
    with fh:
        assert real == (tree["root"] / "photo.jpg").resolve() and fh.read() == CONTENT
    with pytest.raises(FileAccessError):
        open_confined(tree["root"] / "fifo.jpg", [tree["root"]])  # never opened: it would block


def test_open_indexed_checks_size_mtime_and_hash(tree: dict[str, Path]) -> None:
    root = tree["root"]
    photo = root / "photo.jpg"
    mtime = photo.stat().st_mtime_ns
    assert read(photo, [root], mtime_ns=mtime) == CONTENT
    # same content, another mtime (copied back, touched): the hash says it is the same file
    os.utime(photo, ns=(mtime + 10**9, mtime + 10**9))
    assert read(photo, [root], mtime_ns=mtime) == CONTENT
    # other content of the same size: the hash differs
    photo.write_bytes(CONTENT[::-1])
    with pytest.raises(FileChangedError, match="SHA-256") as err:
        read(photo, [root], mtime_ns=mtime)
    assert str(root) in str(err.value) and "index it again" in str(err.value)
    # another size: changed, and the new size is not told
    photo.write_bytes(SECRET)
    with pytest.raises(FileChangedError, match="size differs") as err:
        read(photo, [root])
    assert str(len(SECRET)) not in str(err.value)
    photo.write_bytes(CONTENT)
    with pytest.raises(ImageDecodeError, match="over the limit"):
        read(photo, [root], max_bytes=100)
    # a link out, to a file of the very same content: refused by the roots, not by the content
    (tree["outside"] / "copy.jpg").write_bytes(CONTENT)
    (root / "copy_link.jpg").symlink_to(tree["outside"] / "copy.jpg")
    with pytest.raises(FileAccessError, match="outside"):
        read(root / "copy_link.jpg", [root])


def test_open_indexed_file_streams_the_checked_descriptor(tree: dict[str, Path]) -> None:
    photo = tree["root"] / "photo.jpg"
    sha = hashlib.sha256(CONTENT).hexdigest()
    opened = open_indexed_file(photo, roots=[tree["root"]], size=len(CONTENT), mtime_ns=None, sha256=sha)
    assert opened.size == len(CONTENT) and b"".join(opened.chunks(chunk_size=333)) == CONTENT
    assert opened.file.closed
    with pytest.raises(FileChangedError):
        open_indexed_file(photo, roots=[tree["root"]], size=len(CONTENT), mtime_ns=None, sha256="0" * 64)


def test_first_readable_prefers_a_good_copy_then_tells_changed_from_missing(tree: dict[str, Path]) -> None:
    root = tree["root"]
    sha = hashlib.sha256(CONTENT).hexdigest()

    def at(name: str, size: int = len(CONTENT)) -> IndexedFile:
        return IndexedFile(str(root / name), (root,), size, sha)

    assert first_readable([at("gone.jpg"), at("link_out.jpg"), at("photo.jpg")], IndexedFile.read, what="x") == CONTENT
    (root / "edited.jpg").write_bytes(CONTENT[::-1])
    with pytest.raises(FileChangedError, match=r"^image 7 cannot be served"):
        first_readable([at("gone.jpg"), at("edited.jpg")], IndexedFile.read, what="image 7")
    with pytest.raises(FileAccessError, match=r"^image 7 cannot be served") as err:
        first_readable([at("gone.jpg"), at("link_out.jpg")], IndexedFile.read, what="image 7")
    assert not isinstance(err.value, FileChangedError)
    with pytest.raises(FileAccessError, match="no file on record"):
        first_readable([], IndexedFile.read, what="image 7")
