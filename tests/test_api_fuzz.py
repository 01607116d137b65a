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

CASES: Counter[str] = Counter()  # cases run, per operation
MIN_CASES = 500
MAX_EXAMPLES = 100  # per operation and mode


@pytest.fixture(scope="module")
def api_schema(world):  # noqa: F811
    from starlette.testclient import TestClient

    app = ranker_app()
    with TestClient(app):  # the lifespan builds the service the cases call
        yield schemathesis.openapi.from_asgi("/docs.json", app)


def _fuzz(operation, mode: str) -> None:
    """Up to ``MAX_EXAMPLES`` cases of one operation: every built-in check must pass."""
    from hypothesis import given
    from schemathesis.generation import GenerationMode

    label = operation.label

    @given(case=operation.as_strategy(GenerationMode(mode)))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    def conforms(case) -> None:
        response = case.call_and_validate()
        assert response.status_code < 500, response.text
        CASES[label] += 1

    conforms()


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_every_operation_conforms_to_the_document(api_schema, mode):
    """Each operation of the document, with inputs its schema allows (positive) and, for
    each operation that takes input, inputs it forbids (negative): every built-in check
    passes, and no case is a 5xx."""
    for result in api_schema.get_all_operations():
        operation = result.ok()
        if mode == "negative" and not operation.body:  # nothing to get wrong
            continue
        _fuzz(operation, mode)


def test_the_fuzzing_ran_enough_cases():
    """Runs after the fuzzing above (file order): it must have run at least 500 cases,
    on every POST operation."""
    assert sum(CASES.values()) >= MIN_CASES, CASES
    assert {"POST /rank", "POST /echo", "POST /model_version"} <= set(CASES), CASES
