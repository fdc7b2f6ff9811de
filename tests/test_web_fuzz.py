"""Property-based fuzzing of the HTTP API with schemathesis, against our own OpenAPI document
(``/api/v1/openapi.json``) served by a real ``cloacina web`` process on PostgreSQL (the stricter store: NUL
characters, id types) with a broker and seeded data.

Every operation gets a bounded number of generated requests, valid and invalid ones (positive and negative
modes), and every response must pass schemathesis's checks: never a 5xx, a status code and body the document
declares, valid data accepted and invalid data rejected with a 4xx. The whole run stays under two minutes.
At the end the server's log must show that no request reached the 500 handler.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from conftest import PG_URL, require_postgres, require_redis_server
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig

from tests.distributed_harness import RedisServer, Services, fresh_schema, migrated_schema, service_db_url
from tests.test_web_api import Web, seed, start_web

pytestmark = pytest.mark.timeout(300)
TOKEN = "fuzz-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLES_PER_OPERATION = 80


@pytest.fixture(scope="module")
def fuzzed_web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    require_postgres()
    require_redis_server()
    tmp = tmp_path_factory.mktemp("web-fuzz")
    with contextlib.ExitStack() as stack:
        schema = stack.enter_context(fresh_schema(PG_URL))
        migrated_schema(PG_URL, schema)
        redis = stack.enter_context(RedisServer(tmp))
        seed(PG_URL, schema, tmp)
        services = Services(tmp)
        stack.callback(services.dump_logs)
        stack.callback(services.stop_all)
        env: dict[str, str | None] = {"CLOACINA_BROKER_URL": redis.url, "CLOACINA_WEB_TOKEN": TOKEN}
        web = start_web(services, service_db_url(PG_URL, schema), env=env, headers=AUTH)
        yield web
        log = web.service.log_text()
        assert "unhandled error" not in log, "a fuzzed request reached the 500 handler"
        assert "Traceback" not in log


@pytest.fixture(scope="module")
def api_schema(fuzzed_web: Web) -> Any:
    config = SchemathesisConfig()
    project = config.projects.default
    project.update(base_url=fuzzed_web.base, headers=AUTH, request_timeout=30)
    project.generation.update(
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=EXAMPLES_PER_OPERATION
    )
    return schemathesis.openapi.from_url(fuzzed_web.base + "/api/v1/openapi.json", config=config, headers=AUTH)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)
def test_api_conforms_to_its_openapi_document(case: Any) -> None:
    response = case.call_and_validate()
    assert response.status_code < 500, response.text
