"""Error hierarchy: every error a user can cause says what was wrong and what to do."""

from __future__ import annotations


class ImsearchError(Exception):
    """Base class of all errors raised on purpose by imsearch."""


class ImageDecodeError(ImsearchError):
    """An image could not be decoded (corrupt, truncated, unsupported, too large...)."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class UnknownNameError(ImsearchError, KeyError):
    """A name looked up in a registry does not exist; the message lists the valid names."""

    def __init__(self, kind: str, name: str, valid: list[str]) -> None:
        msg = f"unknown {kind} {name!r}; valid {kind}s: {', '.join(sorted(valid))}"
        super().__init__(msg)
        self.kind = kind
        self.name = name
        self.valid = sorted(valid)

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class WeightsUnavailableError(ImsearchError):
    """Pretrained weights were asked for but cannot be found or fetched."""


class ModelMismatchError(ImsearchError):
    """A descriptor model does not match the one an index was built with."""


class ModelFormatError(ImsearchError):
    """A model artifact is unreadable, of an unknown format version, or inconsistent."""


class VectorIndexError(ImsearchError):
    """The vector index is unusable (wrong dimension, corrupt file, not trained...)."""


class CatalogError(ImsearchError):
    """The metadata catalog refused an operation."""


class NotFoundError(ImsearchError, LookupError):
    """An image, region or job that was asked for does not exist."""


class EvaluationError(ImsearchError, ValueError):
    """Retrieval-evaluation input is unusable (bad ranks, no positives, malformed ground truth)."""


class TrainingError(ImsearchError, ValueError):
    """Training input or settings are unusable (bad CSV, missing images, empty dataset, bad config)."""
