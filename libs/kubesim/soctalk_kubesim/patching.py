"""The four ways a Kubernetes object can be changed in place, as pure functions on dicts.

* JSON merge patch (RFC 7386): maps merge, ``null`` deletes, lists are replaced.
* Strategic merge patch: like merge patch, but lists of maps with a known merge key
  (containers by ``name``, volumeMounts by ``mountPath``, ...) are merged item by item, and an item
  ``{"$patch": "delete", <key>: ...}`` removes that item. Other directives are not supported.
* JSON patch (RFC 6902): add / remove / replace / move / copy / test.
* Server-side apply (approximation): every field manager's last applied configuration is kept;
  a new apply removes the leaves that manager applied before and no longer does, then merges the
  new configuration in (lists are atomic). Applying a leaf another manager applied with a different
  value is a conflict unless ``force`` is set, which transfers ownership.

Everything here is pure and raises ``PatchError`` for malformed input; the emulator maps it to 422.
"""

from __future__ import annotations

from typing import Any

from .clone import clone

Json = Any


class PatchError(ValueError):
    pass


class ApplyConflict(Exception):
    def __init__(self, conflicts: list[tuple[str, str]]) -> None:
        self.conflicts = conflicts  # (path, other manager)
        details = "; ".join(f'conflict with "{m}": {p}' for p, m in conflicts)
        super().__init__(f"Apply failed with {len(conflicts)} conflict(s): {details}")


# --- JSON merge patch ------------------------------------------------------------------------


def merge_patch(target: Json, patch: Json) -> Json:
    if not isinstance(patch, dict):
        return clone(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# --- strategic merge patch -------------------------------------------------------------------

_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "conditions": "type",
    "hostAliases": "ip",
    "ownerReferences": "uid",
}


def _merge_key(field: str, items: list) -> str | None:
    if field == "ports":
        sample = next((i for i in items if isinstance(i, dict)), {})
        return "containerPort" if "containerPort" in sample else "port"
    return _MERGE_KEYS.get(field)


def strategic_merge_patch(target: Json, patch: Json) -> Json:
    if not isinstance(patch, dict):
        return clone(patch)
    if patch.get("$patch") == "replace":
        return {k: clone(v) for k, v in patch.items() if k != "$patch"}
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and isinstance(result.get(key), list):
            merge_key = _merge_key(key, value + result[key])
            result[key] = _merge_list(result[key], value, merge_key) if merge_key else clone(value)
        elif isinstance(value, dict):
            result[key] = strategic_merge_patch(result.get(key), value)
        else:
            result[key] = clone(value)
    return result


def _merge_list(current: list, patch: list, merge_key: str) -> list:
    if not all(isinstance(i, dict) and merge_key in i for i in current + patch):
        return clone(patch)
    merged = [clone(i) for i in current]
    for item in patch:
        index = next((n for n, c in enumerate(merged) if c[merge_key] == item[merge_key]), None)
        if item.get("$patch") == "delete":
            if index is not None:
                merged.pop(index)
        elif index is None:
            merged.append(clone(item))
        else:
            merged[index] = strategic_merge_patch(merged[index], item)
    return merged


# --- JSON patch ------------------------------------------------------------------------------


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Json, tokens: list[str]) -> Json:
    for token in tokens:
        if isinstance(doc, list):
            try:
                doc = doc[int(token)]
            except (ValueError, IndexError) as exc:
                raise PatchError(f"index {token!r} out of range") from exc
        elif isinstance(doc, dict) and token in doc:
            doc = doc[token]
        else:
            raise PatchError(f"path segment {token!r} does not exist")
    return doc


def _add(doc: Json, tokens: list[str], value: Json) -> Json:
    if not tokens:
        return value
    parent = _walk(doc, tokens[:-1])
    last = tokens[-1]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if not 0 <= index <= len(parent):
            raise PatchError(f"index {last!r} out of range")
        parent.insert(index, value)
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise PatchError(f"cannot add below a scalar at {last!r}")
    return doc


def _remove(doc: Json, tokens: list[str]) -> Json:
    if not tokens:
        raise PatchError("cannot remove the whole document")
    parent = _walk(doc, tokens[:-1])
    last = tokens[-1]
    try:
        if isinstance(parent, list):
            return parent.pop(int(last))
        return parent.pop(last)
    except (KeyError, ValueError, IndexError, AttributeError) as exc:
        raise PatchError(f"path segment {last!r} does not exist") from exc


def json_patch(target: Json, operations: Json) -> Json:
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be a list of operations")
    doc = clone(target)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"malformed JSON patch operation {op!r}")
        tokens = _pointer(op["path"])
        kind = op["op"]
        if kind == "add":
            doc = _add(doc, tokens, clone(op.get("value")))
        elif kind == "remove":
            _remove(doc, tokens)
        elif kind == "replace":
            _walk(doc, tokens)  # must exist
            if tokens:
                _remove(doc, tokens)
            doc = _add(doc, tokens, clone(op.get("value")))
        elif kind in ("move", "copy"):
            source = _pointer(op.get("from", ""))
            value = clone(_walk(doc, source))
            if kind == "move":
                _remove(doc, source)
            doc = _add(doc, tokens, value)
        elif kind == "test":
            if _walk(doc, tokens) != op.get("value"):
                raise PatchError(f"test failed at {op['path']}")
        else:
            raise PatchError(f"unknown JSON patch op {kind!r}")
    return doc


# --- server-side apply (approximation) -------------------------------------------------------

_IDENTITY = {("apiVersion",), ("kind",), ("metadata", "name"), ("metadata", "namespace")}


def leaves(doc: Json, prefix: tuple = ()) -> dict[tuple, Json]:
    """Flatten maps to ``{path: value}``; lists and scalars are leaves (atomic)."""
    if isinstance(doc, dict) and doc:
        out: dict[tuple, Json] = {}
        for key, value in doc.items():
            out.update(leaves(value, (*prefix, key)))
        return out
    return {prefix: doc}


def _delete_path(doc: dict, path: tuple) -> None:
    parents = [doc]
    for key in path[:-1]:
        nxt = parents[-1].get(key)
        if not isinstance(nxt, dict):
            return
        parents.append(nxt)
    parents[-1].pop(path[-1], None)
    for depth in range(len(path) - 1, 0, -1):  # drop maps the removal emptied
        if parents[depth] == {}:
            parents[depth - 1].pop(path[depth - 1], None)


def apply(
    live: dict | None,
    config: dict,
    manager: str,
    applied: dict[str, dict],
    *,
    force: bool,
) -> tuple[dict, dict[str, dict]]:
    """Return the new object and the new per-manager applied configurations."""
    new_leaves = {p: v for p, v in leaves(config).items() if p not in _IDENTITY}
    conflicts = []
    others = {m: leaves(c) for m, c in applied.items() if m != manager}
    for path, value in new_leaves.items():
        for other, other_leaves in others.items():
            if path in other_leaves and other_leaves[path] != value:
                conflicts.append((".".join(map(str, path)), other))
    if conflicts and not force:
        raise ApplyConflict(conflicts)
    result = clone(live) if live else {}
    owned_elsewhere = {p for m, ls in others.items() for p in ls}
    for path in leaves(applied.get(manager, {})):
        if path and path not in new_leaves and path not in owned_elsewhere and path not in _IDENTITY:
            _delete_path(result, path)
    result = merge_patch(result, _without_nulls(config))
    new_applied = {m: clone(c) for m, c in applied.items()}
    for dotted, other in conflicts:  # forced: the conflicting leaves change owner
        by_name = {".".join(map(str, p)): p for p in leaves(new_applied[other])}
        _delete_path(new_applied[other], by_name[dotted])
    new_applied[manager] = clone(config)
    return result, new_applied


def _without_nulls(doc: Json) -> Json:
    if isinstance(doc, dict):
        return {k: _without_nulls(v) for k, v in doc.items() if v is not None}
    return doc
