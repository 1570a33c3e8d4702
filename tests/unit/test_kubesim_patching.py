"""The emulator's patch semantics as pure functions: merge, strategic merge, JSON patch, apply."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from soctalk_kubesim.patching import (
    ApplyConflict,
    PatchError,
    apply,
    json_patch,
    merge_patch,
    strategic_merge_patch,
)

pytestmark = pytest.mark.unit

scalars = st.one_of(st.integers(), st.text(max_size=5), st.booleans())
keys = st.text(min_size=1, max_size=4)
docs = st.recursive(scalars, lambda inner: st.dictionaries(keys, inner, max_size=4), max_leaves=12)
maps = st.dictionaries(st.text(min_size=1, max_size=4), docs, max_size=4)


def pod(*containers: dict) -> dict:
    return {"spec": {"template": {"spec": {"containers": list(containers)}}}}


def test_merge_patch_rfc7386() -> None:
    target = {"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]}
    patch = {"a": "z", "c": {"f": None}, "l": [3]}
    assert merge_patch(target, patch) == {"a": "z", "c": {"d": "e"}, "l": [3]}
    assert target == {"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]}  # inputs untouched


@given(maps, maps)
def test_merge_patch_is_idempotent(target: dict, patch: dict) -> None:
    once = merge_patch(target, patch)
    assert merge_patch(once, patch) == once


def test_strategic_merge_merges_containers_by_name() -> None:
    live = pod({"name": "main", "image": "app:1", "env": [{"name": "A", "value": "1"}]})
    patched = strategic_merge_patch(live, pod({"name": "main", "env": [{"name": "B", "value": "2"}]},
                                              {"name": "proxy", "image": "envoy"}))
    containers = patched["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["main", "proxy"]
    assert containers[0]["image"] == "app:1"
    assert containers[0]["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]


def test_strategic_merge_directives() -> None:
    live = pod({"name": "main", "image": "a"}, {"name": "old", "image": "b"})
    removed = strategic_merge_patch(live, pod({"name": "old", "$patch": "delete"}))
    assert [c["name"] for c in removed["spec"]["template"]["spec"]["containers"]] == ["main"]
    replaced = strategic_merge_patch({"spec": {"a": 1, "b": 2}}, {"spec": {"$patch": "replace", "c": 3}})
    assert replaced == {"spec": {"c": 3}}
    assert strategic_merge_patch({"args": ["x"]}, {"args": ["y"]}) == {"args": ["y"]}  # no merge key


def test_json_patch_operations() -> None:
    doc = {"a": {"b": [1, 2]}, "c": "x"}
    ops = [{"op": "add", "path": "/a/b/-", "value": 3},
           {"op": "replace", "path": "/c", "value": "y"},
           {"op": "copy", "from": "/c", "path": "/d"},
           {"op": "move", "from": "/d", "path": "/e"},
           {"op": "remove", "path": "/a/b/0"},
           {"op": "test", "path": "/e", "value": "y"},
           {"op": "add", "path": "/k~1v", "value": 1}]
    assert json_patch(doc, ops) == {"a": {"b": [2, 3]}, "c": "y", "e": "y", "k/v": 1}
    assert doc == {"a": {"b": [1, 2]}, "c": "x"}


@pytest.mark.parametrize("ops", [
    [{"op": "remove", "path": "/missing"}],
    [{"op": "replace", "path": "/missing", "value": 1}],
    [{"op": "test", "path": "/a", "value": 2}],
    [{"op": "jump", "path": "/a"}],
    [{"path": "/a"}],
    {"op": "add"},
    [{"op": "add", "path": "no-slash", "value": 1}],
])
def test_json_patch_rejects_bad_operations(ops: object) -> None:
    with pytest.raises(PatchError):
        json_patch({"a": 1}, ops)


def test_apply_creates_prunes_and_tracks_owners() -> None:
    cfg = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": {"a": "1"}},
           "data": {"x": "1", "y": "2"}}
    obj, owners = apply(None, cfg, "helm", {}, force=False)
    assert obj["data"] == {"x": "1", "y": "2"} and owners == {"helm": cfg}

    obj["data"]["manual"] = "kept"  # set by someone who does not apply
    smaller = {**cfg, "metadata": {"name": "c"}, "data": {"x": "1"}}
    obj, owners = apply(obj, smaller, "helm", owners, force=False)
    assert obj["data"] == {"x": "1", "manual": "kept"}
    assert "labels" not in obj["metadata"]  # emptied maps go too

    other = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"x": "2"}}
    with pytest.raises(ApplyConflict, match='conflict with "helm": data.x'):
        apply(obj, other, "soctalk", owners, force=False)
    obj, owners = apply(obj, other, "soctalk", owners, force=True)
    assert obj["data"]["x"] == "2"
    assert "x" not in owners["helm"].get("data", {})  # ownership moved

    same_value = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"x": "2"}}
    apply(obj, same_value, "third", owners, force=False)  # agreeing on a value is no conflict


@given(maps)
def test_apply_twice_is_stable(config: dict) -> None:
    obj, owners = apply(None, config, "m", {}, force=False)
    again, owners_again = apply(obj, config, "m", owners, force=False)
    assert again == obj and owners_again == owners


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                                  max_size=4), max_leaves=30)


@given(_JSON)
def test_clone_is_a_deep_copy_of_json_values(value: object) -> None:
    import copy

    from soctalk_kubesim.clone import clone

    copied = clone(value)
    assert copied == copy.deepcopy(value)
    if isinstance(value, dict | list) and value:
        assert copied is not value
        # mutating every container of the copy leaves the original alone
        def scramble(v: object) -> None:
            if isinstance(v, dict):
                for child in v.values():
                    scramble(child)
                v["__x"] = 1
            elif isinstance(v, list):
                for child in v:
                    scramble(child)
                v.append("__x")
        before = copy.deepcopy(value)
        scramble(copied)
        assert value == before
