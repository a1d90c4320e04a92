"""Property-based fuzzing of the OpenAPI schema with schemathesis against the real app: no 500s.

Every operation gets up to ``MAX_EXAMPLES`` generated requests, valid and invalid ones,
sent with a valid API key through ASGI (one lifespan: the real collection, FAISS, SQLite).
Beyond "not a server error", the responses are checked against the documented statuses,
content types, schemas and security. One check is left out for image uploads: no schema
can say "a decodable image", so a schema-valid random file is rightly refused (415/422).

Two more fuzzers go where the schema cannot: JSON bodies holding non-finite numbers
(``NaN``, ``Infinity``, ``1e400``, which Python's JSON parser accepts) anywhere, and
bodies streamed in arbitrary chunks with or without a ``Content-Length`` (the body-limit
middleware's ``receive`` wrapper), over and under the limits, with and without a key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import positive_data_acceptance
from starlette.types import Message

from api.app import create_app
from tests.api.conftest import API_KEY, Layout, build_collection, make_settings, running

MAX_EXAMPLES = 25
AUTH = {"X-API-Key": API_KEY}
FUZZ_LIMITS = {"max_upload_bytes": 64 * 1024, "max_json_bytes": 4096}


@pytest.fixture(scope="module")
def fuzz_data_dir(layout: Layout, small_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir: Path = tmp_path_factory.mktemp("api-fuzz")
    build_collection(data_dir, None, small_model, layout.library_photos()[:4])
    return data_dir


def fuzz(operation: Any, calls: list[int]) -> None:
    """Up to MAX_EXAMPLES valid and invalid requests to one operation, each response checked."""
    uploads = "multipart/form-data" in str(operation.definition.raw)
    excluded = [positive_data_acceptance] if uploads else []
    strategy = st.one_of(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )

    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case=strategy)
    def check(case: Any) -> None:
        calls.append(1)
        case.call_and_validate(headers=AUTH, excluded_checks=excluded)

    check()


def test_openapi_fuzz_no_server_errors(layout: Layout, fuzz_data_dir: Path) -> None:
    app = create_app(make_settings(fuzz_data_dir, None, layout, **FUZZ_LIMITS))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    # unknown query parameters are ignored, as most HTTP APIs do (cache busters, tracking): not a negative case
    schema.config.generation.update(allow_extra_parameters=False)
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 14, [op.label for op in operations]
    failures: list[str] = []
    calls: list[int] = []
    try:
        for operation in operations:
            try:
                fuzz(operation, calls)
            except Exception as exc:  # collect every operation's failure, then report them all
                failures.append(f"{operation.label}: {exc}")
    finally:
        asgi.shutdown_lifespans()
    print(f"schemathesis: {len(calls)} requests over {len(operations)} operations")
    assert not failures, "\n\n".join(failures)
    assert len(calls) >= len(operations) * 5


# ---------------------------------------------------------------------------- non-finite numbers

NON_FINITE = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e999"])
_PLACEHOLDER = "\u0000nonfinite\u0000"


def _json_value(leaf: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=8), leaf)
    return st.recursive(
        scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
        max_leaves=12,
    )


def json_operations(schema: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(path, property names) of every operation taking a JSON body."""
    components = schema["components"]["schemas"]
    out = []
    for path, item in schema["paths"].items():
        for op in item.values():
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body is not None:
                ref = body["schema"].get("$ref", "")
                props = components.get(ref.rsplit("/", 1)[-1], {}).get("properties", {})
                out.append((path, sorted(props)))
    return out


def strict_json(text: bytes) -> Any:
    def refuse(constant: str) -> Any:
        raise AssertionError(f"the response holds {constant}, which JSON cannot")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_numbers_anywhere_in_json_bodies(layout: Layout, fuzz_data_dir: Path) -> None:
    """Bodies of each JSON operation's own fields, with NaN/Infinity/1e400 placed anywhere: 4xx problem JSON."""
    calls: list[int] = []
    with running(make_settings(fuzz_data_dir, None, layout, **FUZZ_LIMITS)) as client:
        operations = json_operations(client.get("/openapi.json").json())
        assert len(operations) >= 3, operations

        @hypothesis.settings(max_examples=60, deadline=None, derandomize=True, database=None,
                             suppress_health_check=list(HealthCheck))
        @hypothesis.given(data=st.data())
        def check(data: Any) -> None:
            path, props = data.draw(st.sampled_from(operations))
            keys = st.sampled_from(props) if props else st.text(min_size=1, max_size=8)
            body = data.draw(st.dictionaries(keys, _json_value(st.just(_PLACEHOLDER)), min_size=1, max_size=4))
            text = json.dumps(body, allow_nan=True)
            literal = data.draw(NON_FINITE)
            text = text.replace(json.dumps(_PLACEHOLDER), literal)
            if not re.search(r"NaN|Infinity|1e[0-9]{3}", text):  # no non-finite drawn: put one in
                text = text[:-1] + (", " if len(text) > 2 else "") + f'"{props[0] if props else "k"}": {literal}}}'
            r = client.post(path, content=text, headers={**AUTH, "Content-Type": "application/json"})
            calls.append(1)
            assert r.status_code < 500, (path, text, r.text)
            if r.status_code >= 400:
                assert r.headers["content-type"] == "application/problem+json", r.headers
                assert strict_json(r.content)["status"] == r.status_code

        check()
    assert len(calls) >= 60


# ---------------------------------------------------------------------------- streamed bodies


def _chunks(total: int, sizes: list[int]) -> Iterator[bytes]:
    """``total`` bytes in chunks of the given sizes (cycled); a JSON-ish start so parsers get going."""
    sent = 0
    i = 0
    while sent < total:
        n = min(max(1, sizes[i % len(sizes)]), total - sent)
        yield (b'{"path": "/' + b"a" * n)[:n] if sent == 0 else b"a" * n
        sent += n
        i += 1


def test_streamed_bodies_no_server_errors(layout: Layout, fuzz_data_dir: Path) -> None:
    """Raw ASGI requests with bodies in arbitrary chunks (chunked framing as uvicorn hands it over)."""
    settings = make_settings(fuzz_data_dir, None, layout, **FUZZ_LIMITS)
    limits = {"multipart/form-data": settings.max_upload_bytes + 64 * 1024, "application/json": settings.max_json_bytes}
    calls: list[int] = []
    with running(settings) as client:
        operations = [(p, sorted(item)) for p, item in client.get("/openapi.json").json()["paths"].items()]
        posts = [p for p, methods in operations if "post" in methods]
        json_paths = {p for p, _ in json_operations(client.get("/openapi.json").json())}
        assert len(posts) >= 5, posts
        app, state = client.app, client.app_state

        async def call(scope: dict[str, Any], chunks: list[bytes]) -> tuple[int, bytes]:
            pending = list(chunks)
            messages: list[dict[str, Any]] = []

            async def receive() -> dict[str, Any]:
                if pending:
                    chunk = pending.pop(0)
                    return {"type": "http.request", "body": chunk, "more_body": bool(pending)}
                if not chunks:
                    chunks.append(b"")
                    return {"type": "http.request", "body": b"", "more_body": False}
                return {"type": "http.disconnect"}

            async def send(message: Message) -> None:
                messages.append(dict(message))

            await app(scope, receive, send)
            start = next(m for m in messages if m["type"] == "http.response.start")
            body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
            return int(start["status"]), body

        @hypothesis.settings(max_examples=80, deadline=None, derandomize=True, database=None,
                             suppress_health_check=list(HealthCheck))
        @hypothesis.given(
            path=st.sampled_from(posts),
            media=st.sampled_from(["application/json", "multipart/form-data", "text/plain", None]),
            total=st.one_of(st.integers(0, 5000), st.integers(5000, 300_000)),
            sizes=st.lists(st.integers(1, 70_000), min_size=1, max_size=6),
            length=st.sampled_from(["none", "exact", "garbage"]),
            keyed=st.booleans(),
        )
        def check(path: str, media: str | None, total: int, sizes: list[int], length: str, keyed: bool) -> None:
            headers = []
            if media == "multipart/form-data":
                headers.append((b"content-type", b"multipart/form-data; boundary=fuzzboundary"))
            elif media is not None:
                headers.append((b"content-type", media.encode()))
            if length == "exact":
                headers.append((b"content-length", str(total).encode()))
            elif length == "garbage":
                headers.append((b"content-length", b"12abc"))
            if keyed:
                headers.append((b"x-api-key", API_KEY.encode()))
            scope = {
                "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
                "headers": headers, "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 80),
                "state": state.copy(),
            }
            assert client.portal is not None
            status, body = client.portal.call(call, scope, list(_chunks(total, sizes)))
            calls.append(1)
            assert status < 500, (path, media, total, length, keyed, body[:300])
            doc = strict_json(body) if status >= 400 else None
            limit = limits.get(media or "", settings.max_json_bytes)
            if length == "garbage":
                assert status == 400, doc
            elif total > limit and length == "exact":  # refused from the header, before any byte
                assert status == 413, (path, total, doc)
            elif total > limit and keyed and media == "application/json" and path in json_paths:
                assert status == 413, (path, total, doc)  # counted as it streamed

        check()
    assert len(calls) >= 80
