"""Schemathesis against the server's own OpenAPI document: no generated request may cause a 5xx.

The schema is read from the running server (``/openapi.json``), so the documented request bodies
(``$ref`` to the pydantic models) are what the generator follows: positive cases (valid per the schema)
and negative ones (schema violations). Admin calls carry the token so that load/unload/index get past the
401 and see random input too. Driven by hypothesis directly (one ``@given`` per operation and mode).
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from serving_fixtures import ADMIN_TOKEN, ThreadedServer, build_deployment

from adapterdeploy.serving.settings import Settings

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
EXAMPLES = 20


@pytest.fixture(scope="module")
def fuzz_server(tiny_base_dir, tmp_path_factory):
    deploy_dir = build_deployment(tiny_base_dir, tmp_path_factory.mktemp("serving"))
    settings = Settings(deploy_dir=str(deploy_dir), admin_token=ADMIN_TOKEN, max_wait_ms=0.0)
    with ThreadedServer(settings) as srv:
        yield srv


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["positive", "negative"])
def test_no_generated_request_gets_a_server_error(fuzz_server, mode):
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 16  # 8 GET + 2 infer (plain, versioned), predict, fan-out, embed + 3 admin
    if mode is GenerationMode.NEGATIVE:  # only a body can violate the schema (a plain string path cannot)
        operations = [op for op in operations if len(op.body)]
    seen = {operation.label: fuzz(operation, mode) for operation in operations}
    assert all(seen.values()), seen
    print(mode, {label: sorted(s) for label, s in seen.items()})


def fuzz(operation, mode) -> set[int]:
    """Run EXAMPLES generated cases of one operation; return the statuses seen."""
    statuses: set[int] = set()

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def run(case):
        response = case.call(headers=AUTH, timeout=30)
        statuses.add(response.status_code)
        assert response.status_code < 500, (case.as_curl_command(), response.status_code, response.text[:300])
        if response.status_code >= 400:
            assert "Traceback" not in response.text

    run()
    return statuses
