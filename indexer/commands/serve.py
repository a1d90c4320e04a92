"""``imsearch serve``: run the HTTP API and web page (uvicorn, the app by its import string)."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from indexer.config import add_common

APP = "api.app:create_app"

EXAMPLES = """examples:
  imsearch serve                                  # http://127.0.0.1:8000 (web page at /, API docs at /docs)
  IMSEARCH_API_KEYS=$(openssl rand -hex 16) imsearch serve --allowed-root ~/Photos
  imsearch serve --host 0.0.0.0 --port 8080 --data-dir /srv/imsearch --db postgresql://me@db/imsearch
  imsearch serve --read-only --workers 4          # several processes serving one collection

Every service setting can also come from the environment (IMSEARCH_API_KEYS, IMSEARCH_ALLOWED_ROOTS,
IMSEARCH_READ_REQUIRES_KEY, IMSEARCH_CORS_ORIGINS, IMSEARCH_MAX_UPLOAD_BYTES, IMSEARCH_RATE_LIMIT_PER_MINUTE,
IMSEARCH_DETECT ...); see api/settings.py. API keys are read from the environment only.
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="run the HTTP API and web page",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes (default: 1). A writable collection has exactly one writer: more than one "
        "worker needs --read-only",
    )
    p.add_argument("--read-only", action="store_true", help="serve searches only; writes answer 409")
    p.add_argument(
        "--allowed-root",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder whose files may be added or indexed by server-side path (repeatable)",
    )
    p.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="ADDR",
        help="a reverse proxy (IP address or network, e.g. 10.0.0.5 or 10.0.0.0/24) whose X-Forwarded-For is "
        "believed (repeatable; also IMSEARCH_TRUSTED_PROXIES). Default: none, not even loopback",
    )
    p.add_argument("--detect", action="store_true", help="run the object detector on added images and index jobs")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    add_common(p)
    p.set_defaults(func=run, _parser=p)


def _environment(args: argparse.Namespace) -> dict[str, str]:
    """The service settings the flags give, as the IMSEARCH_* variables the app reads."""
    env = {"IMSEARCH_DATA_DIR": str(args.data_dir), "IMSEARCH_DEVICE": str(args.device)}
    if args.db:
        env["IMSEARCH_DB"] = str(args.db)
    if args.read_only:
        env["IMSEARCH_READ_ONLY"] = "true"
    if args.detect:
        env["IMSEARCH_DETECT"] = "true"
    if args.trusted_proxy:
        env["IMSEARCH_TRUSTED_PROXIES"] = ",".join(args.trusted_proxy)
    if args.allowed_root:
        env["IMSEARCH_ALLOWED_ROOTS"] = ",".join(os.path.abspath(os.path.expanduser(r)) for r in args.allowed_root)
    return env


def trusted_proxies(value: str) -> list[str]:
    """``IMSEARCH_TRUSTED_PROXIES`` as a list: comma-separated or a JSON array (as api.settings reads it)."""
    text = value.strip()
    if text.startswith("["):
        return [str(v).strip() for v in json.loads(text) if str(v).strip()]
    return [part.strip() for part in text.split(",") if part.strip()]


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from retrieval.errors import ImsearchError

    if args.workers < 1:
        raise ImsearchError(f"--workers must be at least 1, got {args.workers}")
    if args.workers > 1 and not args.read_only:
        raise ImsearchError(
            "a writable collection has exactly one writer process: use --workers 1, or add --read-only "
            "to serve searches from several processes"
        )
    if not 0 < args.port < 65536:
        raise ImsearchError(f"--port must be within 1..65535, got {args.port}")
    os.environ.update(_environment(args))
    proxies = trusted_proxies(os.environ.get("IMSEARCH_TRUSTED_PROXIES", ""))
    uvicorn.run(
        APP,
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        timeout_graceful_shutdown=60,
        # uvicorn believes X-Forwarded-For from 127.0.0.1 by default: a local client could pick its address
        proxy_headers=bool(proxies),
        forwarded_allow_ips=",".join(proxies) if proxies else None,
    )
    return 0
