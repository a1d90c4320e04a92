"""Where model files live, and checking that a file is the model it claims to be (sha256)."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from retrieval.errors import ModelFormatError, WeightsUnavailableError

logger = logging.getLogger(__name__)

MODEL_DIR_ENV = "IMSEARCH_MODEL_DIR"

#: sha256 of the model files this project knows (see shared/models/MODELS.md).
KNOWN_SHA256: dict[str, str] = {
    "yolox_nano.onnx": "695e750a5d5754bb5a8d5325643b59282191a7e7a564e435a415fd3c578eab14",
    "deeplabv3_mobilenetv2_voc.onnx": "48a46b346ca7e2e96760b8a10a302046a3b5a9ce55e59d4c659c36d9cbd44118",
}


def model_dir(directory: str | os.PathLike[str] | None = None) -> Path:
    """The model directory: ``directory``, else ``$IMSEARCH_MODEL_DIR``, else ``../shared/models``
    (relative to the current directory) if it exists, else ``~/.cache/imsearch/models``."""
    if directory is not None:
        return Path(directory).expanduser()
    env = os.environ.get(MODEL_DIR_ENV)
    if env:
        return Path(env).expanduser()
    shared = Path.cwd().parent / "shared" / "models"
    if shared.is_dir():
        return shared
    return Path.home() / ".cache" / "imsearch" / "models"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_model_file(
    file: str | os.PathLike[str],
    *,
    directory: str | os.PathLike[str] | None = None,
    sha256: str | None = None,
    verify: bool = True,
) -> tuple[Path, str]:
    """Find a model file and check its sha256; returns ``(path, actual_sha256)``.

    ``file`` is a path (used as is when it names an existing file or has a directory part)
    or a bare file name looked up in :func:`model_dir`. The expected hash is ``sha256`` when
    given, else the known hash of that file name. A file with no expected hash is refused
    unless ``verify=False``, which accepts any file with a warning.
    """
    candidate = Path(file).expanduser()
    has_dir = candidate.parent != Path(".")
    path = candidate if has_dir or candidate.is_file() else model_dir(directory) / candidate
    expected = sha256.lower() if sha256 else KNOWN_SHA256.get(path.name)
    if not path.is_file():
        raise WeightsUnavailableError(
            f"model file {path} not found (expected sha256 {expected or 'unknown'}); put the file there, "
            f"or point model_dir= / ${MODEL_DIR_ENV} at the folder holding it"
        )
    actual = file_sha256(path)
    if not verify:
        if expected and actual != expected:
            logger.warning("model file %s has sha256 %s, not the expected %s; used unverified as asked",
                           path, actual, expected)
        else:
            logger.warning("model file %s (sha256 %s) used without verification", path, actual)
        return path, actual
    if expected is None:
        raise ModelFormatError(
            f"model file {path} is not a known model (sha256 {actual}); pass sha256='<expected hex>' "
            "to pin it, or verify=False to accept it unverified"
        )
    if actual != expected:
        raise ModelFormatError(
            f"model file {path} has sha256 {actual} but {expected} was expected: the file is corrupt or "
            "a different model; replace it with the right file (see shared/models/MODELS.md)"
        )
    return path, actual
