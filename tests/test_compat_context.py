"""CLOACA_API §2, ``Context``, row by row (secrets are in ``test_compat_secrets.py``), plus the §17 extensions.

Written from the contract: every call here is valid on the real ``cloaca`` and must behave as it does there.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

import cloacina as cloaca
from cloacina import Context


# -- Context(data=None) -----------------------------------------------------------------------------------------
def test_constructor_takes_a_dict_or_none_positionally_or_by_keyword() -> None:
    assert len(Context()) == 0
    assert len(Context(None)) == 0
    assert Context(data={"a": 1}).to_dict() == {"a": 1}
    assert Context({"a": {"b": [1, None]}}).to_dict() == {"a": {"b": [1, None]}}


@pytest.mark.parametrize("key", [1, 2.5, None, ("a",), b"a", True])
def test_constructor_rejects_non_str_keys_with_type_error(key: object) -> None:
    with pytest.raises(TypeError):
        Context({key: 1})  # type: ignore[dict-item]


@pytest.mark.parametrize("data", [[("a", 1)], "a", 3, ("a", 1)])
def test_constructor_rejects_non_dict_data_with_type_error(data: object) -> None:
    with pytest.raises(TypeError):
        Context(data)  # type: ignore[arg-type]


# -- get(key, default=None) -----------------------------------------------------------------------------------
def test_get_returns_a_fresh_copy() -> None:
    ctx = Context({"items": [1, {"x": 1}]})
    first = ctx.get("items")
    first.append(2)
    first[1]["x"] = 99
    assert ctx.get("items") == [1, {"x": 1}]
    assert ctx.get("items") is not ctx.get("items")


def test_get_default_only_if_absent_and_null_is_none() -> None:
    ctx = Context({"null": None, "zero": 0})
    assert ctx.get("missing") is None
    assert ctx.get("missing", "fallback") == "fallback"
    assert ctx.get(key="missing", default=5) == 5
    assert ctx.get("null", "fallback") is None
    assert ctx.get("zero", "fallback") == 0


def test_get_with_non_str_key_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        Context({"1": 1}).get(1)  # type: ignore[arg-type]


# -- set / insert / update ------------------------------------------------------------------------------------
def test_set_upserts_and_returns_none() -> None:
    ctx = Context()
    assert ctx.set("a", 1) is None  # type: ignore[func-returns-value]
    assert ctx.set(key="a", value=2) is None  # type: ignore[func-returns-value]
    assert ctx.to_dict() == {"a": 2}


def test_insert_raises_value_error_if_present_even_when_null() -> None:
    ctx = Context({"null": None})
    assert ctx.insert("new", 1) is None  # type: ignore[func-returns-value]
    assert ctx.get("new") == 1
    with pytest.raises(ValueError):
        ctx.insert("new", 2)
    with pytest.raises(ValueError):
        ctx.insert(key="null", value=1)
    assert ctx.to_dict() == {"null": None, "new": 1}


def test_update_raises_key_error_if_absent_and_accepts_a_null_entry() -> None:
    ctx = Context({"null": None})
    assert ctx.update("null", 1) is None  # type: ignore[func-returns-value]
    assert ctx.get("null") == 1
    with pytest.raises(KeyError):
        ctx.update(key="missing", value=1)
    assert "missing" not in ctx


# -- remove ---------------------------------------------------------------------------------------------------
def test_remove_returns_the_value_or_none() -> None:
    ctx = Context({"a": [1], "null": None})
    assert ctx.remove("a") == [1]
    assert ctx.remove(key="null") is None
    assert ctx.remove("a") is None
    assert len(ctx) == 0


# -- to_dict / update_from_dict -------------------------------------------------------------------------------
def test_to_dict_returns_a_new_dict() -> None:
    ctx = Context({"a": {"b": 1}})
    d = ctx.to_dict()
    assert type(d) is dict
    d["a"]["b"] = 2
    d["c"] = 3
    assert ctx.to_dict() == {"a": {"b": 1}}
    assert ctx.to_dict() is not ctx.to_dict()


def test_update_from_dict_upserts_every_key() -> None:
    ctx = Context({"a": 1, "b": 2})
    assert ctx.update_from_dict({"b": 3, "c": None}) is None  # type: ignore[func-returns-value]
    ctx.update_from_dict(data={"d": (1, 2)})
    assert ctx.to_dict() == {"a": 1, "b": 3, "c": None, "d": [1, 2]}


@pytest.mark.parametrize("data", [[("a", 1)], "ab", None])
def test_update_from_dict_needs_a_dict(data: object) -> None:
    with pytest.raises(TypeError):
        Context().update_from_dict(data)  # type: ignore[arg-type]


# -- to_json / from_json --------------------------------------------------------------------------------------
def test_to_json_is_json_object_text() -> None:
    ctx = Context({"a": 1, "b": [True, None, "x"], "c": {"d": 1.5}})
    assert json.loads(ctx.to_json()) == {"a": 1, "b": [True, None, "x"], "c": {"d": 1.5}}
    assert Context().to_json() == "{}"


def test_from_json_is_static_and_round_trips() -> None:
    ctx = Context.from_json('{"a": [1, 2], "b": {"c": null}}')
    assert isinstance(ctx, Context)
    assert ctx.to_dict() == {"a": [1, 2], "b": {"c": None}}
    assert Context.from_json(json_str=ctx.to_json()) == ctx


@pytest.mark.parametrize("text", ["[]", "[1]", '"text"', "1", "1.5", "true", "null", "", "{", "{'a': 1}"])
def test_from_json_rejects_non_objects_with_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        Context.from_json(text)


def test_from_json_needs_a_str() -> None:
    with pytest.raises(TypeError):
        Context.from_json({"a": 1})  # type: ignore[arg-type]


# -- len, in --------------------------------------------------------------------------------------------------
def test_len_and_in_count_null_values_as_present() -> None:
    ctx = Context({"a": 1, "null": None})
    assert len(ctx) == 2
    assert "null" in ctx
    assert "a" in ctx
    assert "missing" not in ctx
    with pytest.raises(TypeError):
        _ = 1 in ctx


# -- ctx[key], ctx[key] = v, del ctx[key] ----------------------------------------------------------------------
def test_getitem_raises_key_error_for_missing_or_null() -> None:
    ctx = Context({"a": [1], "null": None, "zero": 0, "false": False, "empty": ""})
    assert ctx["a"] == [1]
    assert ctx["zero"] == 0 and ctx["false"] is False and ctx["empty"] == ""
    with pytest.raises(KeyError):
        ctx["missing"]
    with pytest.raises(KeyError):
        ctx["null"]
    ctx["a"].append(2)
    assert ctx["a"] == [1]  # a copy, like get()


def test_setitem_is_set() -> None:
    ctx = Context()
    ctx["a"] = 1
    ctx["a"] = (2, float("nan"))
    assert ctx.to_dict() == {"a": [2, None]}
    with pytest.raises(TypeError):
        ctx["b"] = object()
    with pytest.raises(TypeError):
        ctx[1] = "x"  # type: ignore[index]


def test_delitem_raises_key_error_if_missing() -> None:
    ctx = Context({"a": 1, "null": None})
    del ctx["a"]
    del ctx["null"]
    assert len(ctx) == 0
    with pytest.raises(KeyError):
        del ctx["a"]


# -- repr -----------------------------------------------------------------------------------------------------
def test_repr_is_context_of_json() -> None:
    ctx = Context({"b": [1, None], "a": "x"})
    text = repr(ctx)
    assert text.startswith("Context(") and text.endswith(")")
    assert json.loads(text[len("Context(") : -1]) == {"a": "x", "b": [1, None]}
    assert repr(Context()) == "Context({})"


# -- JSON on write --------------------------------------------------------------------------------------------
_WRITES = ["set", "insert", "update", "setitem", "constructor", "update_from_dict"]


def _write(how: str, key: str, value: object) -> Context:
    ctx = Context({"other": 1} if how != "update" else {"other": 1, key: 0})
    if how in ("set", "update", "insert"):
        getattr(ctx, how)(key, value)
    elif how == "setitem":
        ctx[key] = value
    elif how == "constructor":
        ctx = Context({"other": 1, key: value})
    else:
        ctx.update_from_dict({key: value})
    return ctx


@pytest.mark.parametrize("how", _WRITES)
@pytest.mark.parametrize(
    ("value", "stored"),
    [
        (float("nan"), None),
        (float("inf"), None),
        (-float("inf"), None),
        ([1.0, float("nan"), {"x": float("-inf")}], [1.0, None, {"x": None}]),
        ((1, (2, "a")), [1, [2, "a"]]),
        ({3, 1, 2}, [1, 2, 3]),
        (frozenset({"b"}), ["b"]),
        ({"t": (1,), "s": {None}}, {"t": [1], "s": [None]}),
    ],
    ids=["nan", "inf", "-inf", "nested-non-finite", "tuples", "set", "frozenset", "nested"],
)
def test_json_on_write_normalises_silently(how: str, value: object, stored: object) -> None:
    ctx = _write(how, "k", value)
    assert ctx.get("k") == stored
    assert json.loads(ctx.to_json())["k"] == stored  # storable: the JSON text has no NaN/Infinity


@pytest.mark.parametrize("how", _WRITES)
@pytest.mark.parametrize(
    "value",
    [
        datetime(2025, 3, 1, tzinfo=UTC),
        date(2025, 3, 1),
        Decimal("1.5"),
        b"bytes",
        object(),
        {1: "int key"},
        {"nested": {None: 1}},
        [{"deep": {("t",): 1}}],
        {"k": [datetime(2025, 3, 1, tzinfo=UTC)]},
    ],
    ids=["datetime", "date", "decimal", "bytes", "object", "int-key", "none-key", "tuple-key", "nested-datetime"],
)
def test_json_on_write_rejects_non_json_with_type_error(how: str, value: object) -> None:
    with pytest.raises(TypeError, match="'k'"):
        _write(how, "k", value)


def test_failed_write_changes_nothing() -> None:
    ctx = Context({"a": 1})
    with pytest.raises(TypeError):
        ctx.set("a", {"x": object()})
    with pytest.raises(TypeError):
        ctx.update_from_dict({"b": 2, "c": object()})
    assert ctx.to_dict() == {"a": 1}


def test_stored_value_does_not_alias_the_caller_value() -> None:
    value = {"list": [1]}
    ctx = Context({"v": value})
    ctx.set("w", value)
    value["list"].append(2)
    assert ctx.get("v") == ctx.get("w") == {"list": [1]}


# -- §17 extensions: iteration, keys/items/values, == by value (then unhashable) ------------------------------
def test_iteration_and_views() -> None:
    ctx = Context({"a": 1, "b": [2]})
    assert sorted(ctx) == ["a", "b"]
    assert sorted(ctx.keys()) == ["a", "b"]
    assert sorted(ctx.items()) == [("a", 1), ("b", [2])]
    assert sorted(map(str, ctx.values())) == ["1", "[2]"]
    ctx.values()[1].append(3)
    assert ctx.get("b") == [2]


def test_equality_by_value_and_unhashable() -> None:
    assert Context({"a": 1}) == Context({"a": 1})
    assert Context({"a": (1,)}) == {"a": [1]}
    assert Context({"a": 1}) != Context({"a": 2})
    assert Context() != []
    with pytest.raises(TypeError):
        hash(Context())


def test_public_name() -> None:
    assert cloaca.Context is Context
