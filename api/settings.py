"""Service settings: one pydantic-settings class, environment prefix ``IMSEARCH_``.

Every field can be set from the environment (``IMSEARCH_DATA_DIR``, ``IMSEARCH_API_KEYS``,
``IMSEARCH_ALLOWED_ROOTS`` ...) or passed to :func:`api.app.create_app` as a
:class:`Settings` object. List fields take a comma-separated string from the
environment (``IMSEARCH_API_KEYS=key1,key2``) or a JSON array.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MAX_ID = (1 << 63) - 1


def _split_list(value: Any) -> Any:
    """``"a, b"`` or ``'["a", "b"]'`` -> ``["a", "b"]``; lists pass through."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Everything the HTTP service can be configured with."""

    model_config = SettingsConfigDict(env_prefix="IMSEARCH_", extra="ignore", validate_default=True)

    # the collection
    data_dir: Path = Field(default=Path("imsearch-data"), description="collection directory (index, model, uploads)")
    db: str | None = Field(default=None, description="catalog database URL (default: SQLite in data_dir)")
    device: str = Field(default="auto", description="torch device of the descriptor model: auto, cpu, cuda, cuda:1")
    model_engine: Literal["auto", "torch", "onnxruntime"] = Field(
        default="auto", description="what runs the network for searches and uploads: onnxruntime (float32, "
        "CPU; searches by upload measured 1.3x faster than with torch bf16), torch, or auto = onnxruntime on CPU "
        "when installed. Index jobs always run torch, which can pause between layers for searches"
    )
    read_only: bool = Field(default=False, description="open the collection read-only: writes answer 409")

    # access
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="keys accepted in the X-API-Key header; writes need one"
    )
    read_requires_key: bool = Field(default=False, description="also require a key for search and other reads")
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list, description="origins allowed by CORS")
    allowed_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="folders whose files may be added or indexed by server-side path; when "
        "set, indexed originals are served only from inside them (and from the uploads)"
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="addresses of reverse proxies whose X-Forwarded-For / X-Forwarded-Proto "
        "are believed (the rate limit then keys on the client they name); empty: believed from nobody"
    )

    # limits
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, ge=1024, description="largest accepted upload")
    max_json_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="largest accepted request body that is not a multipart upload"
    )
    max_pixels: int = Field(default=60_000_000, ge=1, description="largest accepted image, width x height")
    max_k: int = Field(default=200, ge=1, le=1000, description="most results one search may ask for")
    rate_limit_per_minute: int = Field(default=600, ge=0, description="requests per minute per client (0: no limit)")
    rate_limit_burst: int = Field(default=60, ge=1, description="requests a client may send at once")

    # indexing (uploads and jobs)
    detect: bool = Field(default=False, description="run the object detector on added images and in index jobs")
    segment: bool = Field(default=False, description="run the segmenter on added images and in index jobs")
    detector: str = Field(default="yolox_nano", description="detector name")
    segmenter: str = Field(default="deeplabv3_mobilenetv2_voc", description="segmenter name")
    model_dir: Path | None = Field(default=None, description="folder of the detector/segmenter model files")
    region_min_score: float = Field(default=0.5, ge=0.0, le=1.0, description="detections this sure get regions")
    save_every_s: float = Field(default=30.0, ge=0.0, description="save the index this often after writes")
    job_isolation: Literal["process", "thread"] = Field(
        default="process", description="where index jobs describe images: process = a child process per job (its "
        "model, decode buffers and activations stay out of the server's memory and go back to the system when "
        "the job ends; ~3 s to start it), thread = a thread of the server (shares the server's model)"
    )
    job_batch_size: int = Field(default=8, ge=1, description="images per model batch in index jobs")
    job_workers: int = Field(default=1, ge=1, description="decode threads of an index job")
    job_nice: int = Field(default=10, ge=0, le=19, description="CPU niceness of index jobs, so searches stay fast")
    job_threads: int = Field(
        default=0, ge=0, description="torch threads of index jobs (0: half the cores, at least 1); searches get "
        "the rest plus one"
    )
    job_yield_max_ms: int = Field(
        default=1000, ge=0, le=60000, description="index jobs pause before each layer while a search runs, for "
        "at most this long in a row (0: never pause)"
    )
    job_min_run_ms: int = Field(
        default=250, ge=1, le=60000, description="after pausing job_yield_max_ms, an index job runs this long "
        "before it pauses again (its minimum share of the CPU under a constant stream of searches)"
    )
    malloc_arena_max: int = Field(default=2, ge=0, description="glibc malloc arenas (0: the default, 8 per core)")
    malloc_mmap_threshold_mib: int = Field(
        default=8, ge=1, le=32,
        description="glibc: blocks of at least this many MiB get their own mapping (8: a query's activations "
        "reuse heap memory, ~40% faster searches by upload than 1; 1: ~200 MiB less memory during index jobs)",
    )
    warmup: bool = Field(default=True, description="run the model once at start-up, so no query pays for it")
    thumbnail_quality: int = Field(default=85, ge=30, le=100, description="JPEG quality of cached thumbnails")

    @field_validator("api_keys", "cors_origins", "allowed_roots", "trusted_proxies", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("allowed_roots")
    @classmethod
    def _absolute_roots(cls, roots: list[Path]) -> list[Path]:
        for root in roots:
            if not root.expanduser().is_absolute():
                raise ValueError(f"allowed root {root} must be an absolute path")
        return [root.expanduser() for root in roots]

    @field_validator("api_keys")
    @classmethod
    def _strong_keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        for key in keys:
            if len(key.get_secret_value()) < 8:
                raise ValueError("API keys must be at least 8 characters long")
        return keys

    @model_validator(mode="after")
    def _data_dir(self) -> Settings:
        self.data_dir = self.data_dir.expanduser()
        return self

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir.resolve() / "uploads"

    @property
    def thumbnails_dir(self) -> Path:
        return self.data_dir.resolve() / "thumbnails"

    def key_values(self) -> list[bytes]:
        return [key.get_secret_value().encode("utf-8") for key in self.api_keys]
