"""Fuzzing the service from its own OpenAPI document (schemathesis): every operation of
``docs.json``, every built-in check, with valid and invalid inputs. No case may fail a
check, and none may get a 5xx.

The service runs in-process (``Ranker.to_asgi()``, its lifespan started) on the serving
tests' world: real Feast, a real model.
"""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from test_serving import ranker_app, world  # noqa: F401  (world: the fixture)

pytestmark = pytest.mark.integration

MIN_CASES = 500
MAX_EXAMPLES = 100  # per operation and mode


@pytest.fixture(scope="module")
def api_schema(world):  # noqa: F811
    from starlette.testclient import TestClient

    app = ranker_app()
    with TestClient(app):  # the lifespan builds the service the cases call
        yield schemathesis.openapi.from_asgi("/docs.json", app)


def _fuzz(operation, mode: str, cases: Counter[str]) -> None:
    """Up to ``MAX_EXAMPLES`` cases of one operation: every built-in check must pass."""
    from hypothesis import given
    from schemathesis.generation import GenerationMode

    label = operation.label

    @given(case=operation.as_strategy(GenerationMode(mode)))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    def conforms(case) -> None:
        response = case.call_and_validate()
        assert response.status_code < 500, response.text
        cases[label] += 1

    conforms()


def test_every_operation_conforms_to_the_document(api_schema):
    """Each operation of the document, with inputs its schema allows (positive) and, for
    each operation that takes input, inputs it forbids (negative): every built-in check
    passes, and no case is a 5xx; at least 500 cases in all, on every POST route."""
    cases: Counter[str] = Counter()
    for mode in ("positive", "negative"):
        for result in api_schema.get_all_operations():
            operation = result.ok()
            if mode == "negative" and not operation.body:  # nothing to get wrong
                continue
            _fuzz(operation, mode, cases)
    assert sum(cases.values()) >= MIN_CASES, cases
    assert {"POST /rank", "POST /echo", "POST /model_version"} <= set(cases), cases
