"""Property-based fuzzing of the OpenAPI schema with schemathesis against the real app: no 500s.

Every operation gets up to ``MAX_EXAMPLES`` generated requests, valid and invalid ones,
sent with a valid API key through ASGI (one lifespan: the real collection, FAISS, SQLite).
Beyond "not a server error", the responses are checked against the documented statuses,
content types, schemas and security. One check is left out for image uploads: no schema
can say "a decodable image", so a schema-valid random file is rightly refused (415/422).
"""

from __future__ import annotations

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

from api.app import create_app
from tests.api.conftest import API_KEY, Layout, build_collection, make_settings

MAX_EXAMPLES = 25
AUTH = {"X-API-Key": API_KEY}


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


def test_openapi_fuzz_no_server_errors(
    layout: Layout, small_model: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    data_dir: Path = tmp_path_factory.mktemp("api-fuzz")
    build_collection(data_dir, None, small_model, layout.library_photos()[:4])
    app = create_app(make_settings(data_dir, None, layout, max_upload_bytes=64 * 1024))
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
