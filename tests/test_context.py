"""Context semantics (DESIGN §2) and the canonical JSON / content hash used for trigger deduplication.

The row-by-row cloaca contract (CLOACA_API §2) is in ``test_compat_context.py``; secrets in ``test_compat_secrets.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloacina import Context, canonical_json, context_hash

# -- strategies ------------------------------------------------------------------------------------------
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=6)


def _reordered(value: object) -> object:
    """The same JSON value with every object's keys inserted in reverse order."""
    if isinstance(value, dict):
        return {k: _reordered(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reordered(v) for v in value]
    return value


# -- cloaca API ------------------------------------------------------------------------------------------
def test_get_returns_value_or_default() -> None:
    ctx = Context({"a": 1})
    assert ctx.get("a") == 1
    assert ctx.get("missing") is None
    assert ctx.get("missing", "fallback") == "fallback"


def test_get_returns_a_copy_that_does_not_alias_the_context() -> None:
    ctx = Context({"items": [1, 2], "nested": {"x": {"y": 1}}})
    ctx.get("items").append(3)
    ctx.get("nested")["x"]["y"] = 99
    ctx["items"].append(4)
    assert ctx.get("items") == [1, 2]
    assert ctx.get("nested") == {"x": {"y": 1}}


def test_set_stores_a_copy_of_the_caller_value() -> None:
    value = {"list": [1]}
    ctx = Context()
    ctx.set("k", value)
    value["list"].append(2)
    assert ctx.get("k") == {"list": [1]}


def test_constructor_copies_its_input() -> None:
    source = {"a": [1]}
    ctx = Context(source)
    source["a"].append(2)
    source["b"] = 1
    assert ctx.to_dict() == {"a": [1]}
    assert Context(ctx) == ctx
    assert Context(None).to_dict() == {}


def test_constructor_rejects_non_mapping() -> None:
    with pytest.raises(TypeError, match="dict"):
        Context([("a", 1)])  # type: ignore[arg-type]


def test_set_upserts() -> None:
    ctx = Context()
    ctx.set("a", 1)
    ctx.set("a", 2)
    assert ctx.get("a") == 2
    assert len(ctx) == 1


def test_insert_adds_new_key_and_raises_value_error_on_existing() -> None:
    ctx = Context()
    ctx.insert("a", 1)
    with pytest.raises(ValueError, match="'a'"):
        ctx.insert("a", 2)
    assert ctx.get("a") == 1


def test_update_replaces_existing_and_raises_key_error_if_missing() -> None:
    ctx = Context({"a": 1})
    ctx.update("a", 5)
    assert ctx.get("a") == 5
    with pytest.raises(KeyError, match="'b'"):
        ctx.update("b", 1)
    assert "b" not in ctx


def test_remove_returns_value_or_none() -> None:
    ctx = Context({"a": {"x": 1}})
    assert ctx.remove("a") == {"x": 1}
    assert "a" not in ctx
    assert ctx.remove("a") is None
    assert ctx.remove("never") is None


def test_to_dict_is_a_deep_copy() -> None:
    ctx = Context({"a": {"b": [1]}})
    d = ctx.to_dict()
    d["a"]["b"].append(2)
    d["new"] = 1
    assert ctx.to_dict() == {"a": {"b": [1]}}


def test_update_from_dict_upserts_every_item() -> None:
    ctx = Context({"a": 1, "b": 2})
    ctx.update_from_dict({"b": 20, "c": 30})
    assert ctx.to_dict() == {"a": 1, "b": 20, "c": 30}


@pytest.mark.parametrize("bad", [{"ok": 1, "bad": object()}, {"ok": 1, "deep": {"x": {3: "y"}}}, {"ok": 1, 2: "x"}])
def test_update_from_dict_is_all_or_nothing(bad: dict) -> None:
    ctx = Context({"a": 1})
    with pytest.raises(TypeError):
        ctx.update_from_dict(bad)
    assert ctx.to_dict() == {"a": 1}


def test_to_json_is_canonical_and_from_json_restores() -> None:
    ctx = Context({"b": 1, "a": [1, {"z": None, "y": True}]})
    assert ctx.to_json() == '{"a":[1,{"y":true,"z":null}],"b":1}'
    assert Context.from_json(ctx.to_json()) == ctx


@pytest.mark.parametrize("text", ["[1, 2]", '"s"', "3", "null"])
def test_from_json_requires_an_object(text: str) -> None:
    with pytest.raises(ValueError, match="object"):
        Context.from_json(text)


def test_from_json_rejects_invalid_json_and_stores_nan_as_null() -> None:
    with pytest.raises(ValueError):
        Context.from_json("{not json")
    assert Context.from_json('{"x": NaN, "y": [Infinity]}').to_dict() == {"x": None, "y": [None]}


def test_mapping_protocol() -> None:
    ctx = Context({"a": 1, "b": 2})
    assert len(ctx) == 2
    assert "a" in ctx and "z" not in ctx
    assert ctx["a"] == 1
    ctx["c"] = 3
    assert ctx.get("c") == 3
    del ctx["a"]
    assert "a" not in ctx
    assert list(ctx) == ["b", "c"]
    assert ctx.keys() == ["b", "c"]
    assert ctx.items() == [("b", 2), ("c", 3)]
    assert ctx.values() == [2, 3]
    with pytest.raises(KeyError):
        ctx["a"]
    with pytest.raises(KeyError):
        del ctx["a"]


def test_iteration_tolerates_mutation_during_loop() -> None:
    ctx = Context({"a": 1, "b": 2, "c": 3})
    for key in ctx:
        del ctx[key]
    assert len(ctx) == 0


def test_equality_with_context_and_dict() -> None:
    assert Context({"a": 1}) == Context({"a": 1})
    assert Context({"a": 1}) == {"a": 1}
    assert Context({"a": 1}) != {"a": 2}
    assert Context({"a": 1}) != [("a", 1)]
    with pytest.raises(TypeError):
        hash(Context())


def test_json_normalisation_on_write() -> None:
    ctx = Context(
        {"t": (1, (2, 3)), "s": {3, 1, 2}, "f": frozenset({"b", "a"}), "n": float("nan"), "i": [-float("inf")]}
    )
    assert ctx.to_dict() == {"t": [1, [2, 3]], "s": [1, 2, 3], "f": ["a", "b"], "n": None, "i": [None]}
    assert ctx.to_json() == '{"f":["a","b"],"i":[null],"n":null,"s":[1,2,3],"t":[1,[2,3]]}'
    with pytest.raises(TypeError, match=r"'d'\['x'\].*keys must be str"):
        Context({"d": {"x": {1: "y"}}})


# -- non-JSON values -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value",
    [
        object(),
        b"bytes",
        datetime(2025, 1, 1, tzinfo=UTC),
        {"nested": {"deep": {1: 2}}},
        [1, [2, object()]],
        {"k": object()},
        {(1, 2): "tuple key"},
        {1, object()},
    ],
    ids=["object", "bytes", "datetime", "nested-int-key", "nested-object", "dict-object", "tuple-key", "set-object"],
)
@pytest.mark.parametrize("how", ["set", "insert", "setitem", "constructor", "update_from_dict"])
def test_non_json_value_raises_type_error_naming_the_key(value: object, how: str) -> None:
    ctx = Context({"existing": 1})
    with pytest.raises(TypeError, match="'the_key'"):
        if how == "set":
            ctx.set("the_key", value)
        elif how == "insert":
            ctx.insert("the_key", value)
        elif how == "setitem":
            ctx["the_key"] = value
        elif how == "constructor":
            Context({"the_key": value})
        else:
            ctx.update_from_dict({"the_key": value})
    assert ctx.to_dict() == {"existing": 1}


def test_update_with_non_json_value_keeps_old_value() -> None:
    ctx = Context({"k": 1})
    with pytest.raises(TypeError, match="'k'"):
        ctx.update("k", {"when": datetime(2025, 1, 1, tzinfo=UTC)})
    assert ctx.get("k") == 1


@pytest.mark.parametrize("key", [1, None, ("a",), b"k"])
def test_non_string_key_raises_type_error(key: object) -> None:
    with pytest.raises(TypeError, match="keys must be str"):
        Context().set(key, 1)  # type: ignore[arg-type]


# -- canonical JSON and hash -----------------------------------------------------------------------------
def test_canonical_json_sorts_keys_compactly_and_keeps_unicode() -> None:
    assert canonical_json({"b": 1, "a": {"d": [1, 2], "c": "x"}}) == '{"a":{"c":"x","d":[1,2]},"b":1}'
    assert canonical_json({"naïve": "日本語 ✓"}) == '{"naïve":"日本語 ✓"}'


def test_canonical_json_rejects_nan() -> None:
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_context_hash_is_sha256_of_utf8_canonical_json() -> None:
    data = {"b": "ü", "a": 1}
    expected = hashlib.sha256('{"a":1,"b":"ü"}'.encode()).hexdigest()
    assert context_hash(data) == expected
    assert Context(data).content_hash() == expected
    assert context_hash(Context(data)) == expected


def test_empty_and_none_hash_like_an_empty_object() -> None:
    empty = "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"  # sha256(b"{}")
    assert context_hash(None) == empty
    assert context_hash({}) == empty
    assert Context().content_hash() == empty


def test_hash_distinguishes_types_and_values() -> None:
    hashes = {context_hash(d) for d in ({"a": 1}, {"a": "1"}, {"a": True}, {"a": None}, {"a": [1]}, {"b": 1})}
    assert len(hashes) == 6


_HASH_SCRIPT = """
import json, sys
from cloacina import Context, context_hash
data = json.loads(sys.argv[1])
# Insert keys in an order derived from the (randomised) str hash, so any leak of hash order shows up.
shuffled = {k: data[k] for k in sorted(data, key=hash)}
print(context_hash(shuffled), Context(shuffled).content_hash(), Context(shuffled).to_json())
"""


def test_hash_is_identical_across_processes_with_different_hash_seeds() -> None:
    data = {f"key{i}": {"n": i, "tags": [f"t{i}", "é"], "s": {"z": 1, "a": 2}} for i in range(20)}
    outputs = set()
    for seed in ("0", "1", "12345", "random"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run(
            [sys.executable, "-c", _HASH_SCRIPT, json.dumps(data)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        outputs.add(proc.stdout.strip())
    assert len(outputs) == 1
    (line,) = outputs
    h1, h2, text = line.split(" ", 2)
    assert h1 == h2 == context_hash(data)
    assert text == canonical_json(data)


# -- properties ------------------------------------------------------------------------------------------
@given(json_objects)
def test_hash_is_stable_under_key_reordering(data: dict) -> None:
    assert context_hash(_reordered(data)) == context_hash(data)  # type: ignore[arg-type]
    assert Context(_reordered(data)).to_json() == Context(data).to_json()  # type: ignore[arg-type]


@given(json_objects)
def test_json_round_trip(data: dict) -> None:
    ctx = Context(data)
    restored = Context.from_json(ctx.to_json())
    assert restored == ctx
    assert restored.to_dict() == data
    assert restored.content_hash() == ctx.content_hash()
