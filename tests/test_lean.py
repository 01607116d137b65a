"""``serving.lean``: valid ``/rank`` bodies answered by the service's handler, every other
body handed whole to BentoML's route; and the msgspec model of the body holds to the
pydantic one (a body the lean route takes is one the route's model takes, with the same
values), so the lean route never answers a body BentoML's route would refuse."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from starlette.responses import JSONResponse
from test_guard import App, _run, _scope

from serving.contract import MAX_ITEMS, LeanRankRequest, RankRequest
from serving.lean import LeanRoute

VALID = b'{"user_id": "u1", "item_ids": ["i1", "i2"], "k": 1}'


def _lean(app: App, calls: list) -> LeanRoute:
    async def handler(request):
        calls.append(request)
        return 200, json.dumps({"n": len(request.item_ids)}).encode()

    return LeanRoute(app, route="/rank", body=LeanRankRequest, handler=handler)


def test_a_valid_body_in_chunks_is_answered_by_the_handler_not_the_app():
    app, calls = App(), []
    status, headers, body = _run(_lean(app, calls), _scope(), [VALID[:9], VALID[9:]])
    assert (status, json.loads(body)) == (200, {"n": 2})
    assert headers[b"content-type"] == b"application/json"
    assert int(headers[b"content-length"]) == len(body)
    assert calls == [LeanRankRequest(user_id="u1", item_ids=["i1", "i2"], k=1)]
    assert app.calls == []


@pytest.mark.parametrize(
    "body",
    [b"{not json", b'{"item_ids": ["i1"]}', b'{"user_id": "u1", "item_ids": []}',
     b'{"user_id": "u1", "item_ids": ["i1"], "k": 0}', b'{"user_id": "u1", "item_ids": ["i1"], "x": 1}',
     b'{"user_id": "u1", "item_ids": ["i1"], "k": NaN}', b"",
     b'{"user_id": "\xff", "item_ids": ["i1"]}'],
    ids=["invalid", "no-user", "empty", "k0", "extra", "nan", "no-body", "not-utf8"],
)  # fmt: skip
def test_a_body_msgspec_refuses_reaches_the_app_whole(body):
    app, calls = App(status=400, reply=b'{"error": "from the app"}'), []
    status, _, reply = _run(_lean(app, calls), _scope(), [body])
    assert (status, reply) == (400, b'{"error": "from the app"}')
    assert app.calls == [("POST", body)] and calls == []


@pytest.mark.parametrize(("method", "path"), [("GET", "/rank"), ("POST", "/echo")])
def test_other_methods_and_routes_pass_untouched(method, path):
    app, calls = App(), []
    status, _, _ = _run(_lean(app, calls), _scope(method, path), [VALID])
    assert status == 200 and app.calls == [(method, VALID)] and calls == []


def test_no_handler_yet_lets_the_app_answer():
    app = App()

    async def handler(request):
        return None

    lean = LeanRoute(app, route="/rank", body=LeanRankRequest, handler=handler)
    assert _run(lean, _scope(), [VALID])[0] == 200
    assert app.calls == [("POST", VALID)]


def test_an_exception_in_the_handler_is_logged_and_answered_as_bentoml_answers_it(caplog):
    app = App()

    async def handler(request):
        raise RuntimeError("the model broke")

    lean = LeanRoute(app, route="/rank", body=LeanRankRequest, handler=handler, server="S/1")
    with caplog.at_level("ERROR", logger="serving.lean"):
        status, headers, body = _run(lean, _scope(), [VALID])
    assert status == 500 and headers[b"content-type"] == b"application/json"
    # byte for byte what BentoML's route sends (a Starlette JSONResponse)
    bentoml = JSONResponse(
        {"error": "An unexpected error has occurred, please check the server log."}, 500
    )
    assert body == bentoml.body
    assert headers[b"server"] == b"S/1"
    assert "the model broke" in caplog.text  # the traceback is in the log, not the body
    assert app.calls == []


def test_a_client_that_leaves_mid_body_gets_nothing():
    app, calls = App(), []
    assert _run(_lean(app, calls), _scope(), [VALID[:9]], disconnect=True) is None
    assert app.calls == [] and calls == []


# --- the two models of the body -------------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3),
)
_values = st.one_of(
    _scalars,
    st.lists(_scalars, max_size=3),
    st.lists(st.text(max_size=3), min_size=0, max_size=3),
    st.just([f"i{i}" for i in range(MAX_ITEMS + 1)]),
    st.dictionaries(st.text(max_size=2), _scalars, max_size=2),
)
_user = st.one_of(st.text(max_size=4), _scalars)
_items = st.one_of(st.lists(st.text(max_size=3), max_size=4), _values)
_k = st.one_of(st.integers(min_value=-2, max_value=2**70), _scalars)
_bodies = st.one_of(
    # near the contract: wrong only in a value's size, sign or type (k), or not at all
    st.fixed_dictionaries(
        {
            "user_id": st.text(max_size=4),
            "item_ids": st.lists(st.text(max_size=3), max_size=4),
        },
        optional={"k": _k},
    ),
    # any subset of the keys, with any values
    st.fixed_dictionaries(
        {}, optional={"user_id": _user, "item_ids": _items, "k": _k, "extra": _scalars}
    ),
    _values,
)


def test_every_body_the_lean_model_takes_the_pydantic_model_takes_alike():
    taken = []

    @settings(max_examples=500, deadline=None, database=None)
    @given(_bodies)
    def alike(body):
        raw = json.dumps(body).encode()  # NaN and Infinity too, as Python writes them
        try:
            lean = msgspec.json.decode(raw, type=LeanRankRequest)
        except msgspec.DecodeError:
            return  # BentoML's route answers it, as before
        try:
            full = RankRequest.model_validate_json(raw)
        except ValidationError as exc:
            pytest.fail(f"the lean route takes {raw!r}, which RankRequest refuses: {exc}")
        assert (lean.user_id, lean.item_ids, lean.k) == (full.user_id, full.item_ids, full.k)
        taken.append(raw)

    alike()
    assert len(taken) >= 10  # the property was tried on bodies the lean route takes


@pytest.mark.parametrize(
    "raw",
    [VALID, b'{"user_id": "u", "item_ids": ["a"], "k": null}', b'{"user_id": "u", "item_ids": ["a"]}',
     b'{"user_id": "\\u00e9", "item_ids": ["a", "a"], "k": 99999999999999999999}'],
)  # fmt: skip
def test_valid_bodies_decode_alike(raw):
    lean = msgspec.json.decode(raw, type=LeanRankRequest)
    full = RankRequest.model_validate_json(raw)
    assert (lean.user_id, lean.item_ids, lean.k) == (full.user_id, full.item_ids, full.k)


def test_the_two_models_state_the_same_limits():
    """The limits of each field, as each model's JSON schema states them."""
    lean = msgspec.json.schema(LeanRankRequest)["$defs"]["LeanRankRequest"]
    full = RankRequest.model_json_schema()
    assert set(lean["properties"]) == set(full["properties"])
    assert set(lean["required"]) == set(full["required"])
    assert lean["properties"]["user_id"]["minLength"] == full["properties"]["user_id"]["minLength"]
    for bound in ("minItems", "maxItems"):
        assert lean["properties"]["item_ids"][bound] == full["properties"]["item_ids"][bound]
    lean_k = next(t for t in lean["properties"]["k"]["anyOf"] if t["type"] == "integer")
    full_k = next(t for t in full["properties"]["k"]["anyOf"] if t["type"] == "integer")
    assert lean_k["minimum"] == full_k["minimum"] == 1
    assert lean.get("additionalProperties") is False
    assert full.get("additionalProperties") is False
