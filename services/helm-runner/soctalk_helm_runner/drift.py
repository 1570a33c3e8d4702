"""Drift between what SocTalk renders, what Helm recorded and what the cluster runs (pure).

The round trip of seed 001 ("render → apply → read back → compare; assert no drift"), in two legs:

* ``source="release"`` — the values rendered from the tenant record vs the release's manifest:
  a full comparison of both object sets (someone ran ``helm upgrade`` by hand, or the record
  changed without a release).
* ``source="live"`` — the release's manifest vs the live objects: every field the manifest sets
  must hold in the live object (fields the API server adds are ignored; quantities compare by
  value, ``"1"`` equals ``1`` and ``1.5Gi`` equals ``1536Mi``).

Each difference names the object (``Deployment/thehive``) and the field
(``spec.template.spec.containers[name=thehive].image``), with both values shown as short strings.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import yaml
from soctalk_common.compat import version_label

MISSING = "(missing)"
OBJECT = "(object)"
_MAX = 200
_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))"
                       r"(e[+-]?\d+|E[+-]?\d+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")
_SUFFIX: dict[str | None, Decimal | int] = {
    None: 1, "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "k": 10**3, "M": 10**6,
    "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
    "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


@dataclass(frozen=True)
class Drift:
    object: str
    field: str
    expected: str | None
    actual: str | None
    source: str  # live | release


# libyaml's safe loader when PyYAML has it (same documents, ~10x faster: a release manifest is
# large and parsing it with the pure-Python loader was a third of the helm-runner's CPU).
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_manifest(text: str) -> list[dict[str, Any]]:
    """The objects of a multi-document manifest (empty documents and lists' wrappers skipped)."""
    out: list[dict[str, Any]] = []
    for doc in yaml.load_all(text or "", Loader=_SAFE_LOADER):
        if isinstance(doc, dict) and doc.get("kind"):
            if doc["kind"].endswith("List") and isinstance(doc.get("items"), list):
                out.extend(i for i in doc["items"] if isinstance(i, dict))
            else:
                out.append(doc)
    return out


def same_inputs(release_chart_version: str, release_values: Mapping[str, Any], chart_version: str,
                values: Mapping[str, Any]) -> bool:
    """Whether a release was written from exactly these inputs: the same chart version and values that
    are equal as JSON (the release stores them as JSON). Then re-rendering cannot find release drift."""
    try:
        if version_label(release_chart_version) != version_label(chart_version):
            return False
    except ValueError:
        return False
    return bool(json.loads(json.dumps(values)) == release_values)


def object_name(obj: Mapping[str, Any]) -> str:
    return f"{obj.get('kind', '?')}/{(obj.get('metadata') or {}).get('name', '?')}"


def index(objects: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {object_name(o): o for o in objects}


WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")
_DOC_START = re.compile(r"^---(?=[ \t]|$)", re.M)


def workload_names(objects: Iterable[Mapping[str, Any]]) -> list[str]:
    """``Kind/name`` of the Deployments, StatefulSets and Jobs (what readiness waits for)."""
    return sorted(object_name(o) for o in objects if o.get("kind") in WORKLOAD_KINDS)


def manifest_workloads(text: str) -> list[str]:
    """``workload_names(parse_manifest(text))``, without building the objects.

    A tenant release is ~60 documents of which 6 are workloads, and building Python objects for all
    of them was most of the helm-runner's own CPU per install. So: documents whose text names no
    workload kind are skipped unparsed (documents start at a column-0 ``---``; inside a block scalar
    such a line would end the scalar, so the split is exact); the rest are cut to their ``kind``,
    ``metadata`` and ``items`` entries when that is exact (:func:`_head`), composed by libyaml into
    nodes, and only ``kind`` and ``metadata.name`` (and a List's items') are constructed. A document
    using merge keys is constructed whole. Tested for equality with the full parse."""
    text = text or ""
    starts = [m.start() for m in _DOC_START.finditer(text)]
    bounds = zip([0, *starts], [*starts, len(text)], strict=True)
    found: list[str] = []
    for a, b in bounds:
        doc = text[a:b]
        if not any(k in doc for k in WORKLOAD_KINDS):
            continue
        head = _head(doc)
        try:
            found += _workloads(head if head is not None else doc)
        except yaml.YAMLError:
            if head is None:
                raise
            found += _workloads(doc)  # e.g. an alias to an anchor in a cut entry: the whole document
    return sorted(found)


def _workloads(text: str) -> list[str]:
    build = yaml.constructor.SafeConstructor()
    return [f"{kind}/{name}" for node in yaml.compose_all(text, Loader=_SAFE_LOADER)
            for kind, name in _object_names(node, build, top=True) if kind in WORKLOAD_KINDS]


_TOP_KEY = re.compile(r"([A-Za-z_][A-Za-z0-9_.-]*):(?:[ \t]|\r?$)")
_HEAD_KEYS = frozenset({"kind", "metadata", "items"})
_FLOW_CHARS = re.compile(r"[\"'\[{]")


def _head(doc: str) -> str | None:
    """The document cut to its ``kind``, ``metadata`` and ``items`` entries; None: parse it whole.

    A workload's spec is most of its text, and composing it into nodes was most of the cost left. The
    cut is exact when every column-0 line is a plain top-level key, a comment or a bare ``---``:
    block scalars and multi-line plain scalars are indented, and only a flow scalar or collection
    left open at a line's end could continue on a column-0 line — so any line that may leave one
    open (:func:`_closed`, conservative) makes the whole document parsed instead."""
    out: list[str] = []
    keep = False
    for line in doc.splitlines(keepends=True):
        if _FLOW_CHARS.search(line) and not _closed(line):
            return None
        first = line[:1]
        if first in (" ", "\t", "\n", "\r", "#", ""):
            if keep:
                out.append(line)
            continue
        if line.startswith("---"):
            if line.rstrip() != "---":
                return None
            out.append(line)
            keep = False
            continue
        key = _TOP_KEY.match(line)
        if key is None:
            return None
        keep = key.group(1) in _HEAD_KEYS
        if keep:
            out.append(line)
    return "".join(out)


def _closed(line: str) -> bool:
    """True if every flow collection and quoted scalar ``line`` may open is closed on it.

    Conservative: brackets count wherever they are (a ``[`` inside a plain scalar is literal to YAML,
    but counting it only sends the document to the full parse); a quote opens a scalar only where a
    token can start (line start, after a space, ``,``, ``[`` or ``{``), as in YAML, so a literal quote
    inside a plain key can never hide a real opener behind it."""
    depth, quote, prev, i, n = 0, "", " ", 0, len(line)
    while i < n:
        ch = line[i]
        if quote:
            if quote == '"' and ch == "\\":
                i += 2
                prev = "x"
                continue
            if ch == quote:
                if quote == "'" and line[i + 1:i + 2] == "'":
                    i += 2
                    continue
                quote = ""
        elif ch == "#" and prev in " \t":
            break
        elif ch in "\"'" and prev in " \t,[{":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}" and depth:
            depth -= 1
        prev = ch
        i += 1
    return not quote and depth == 0


_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"


def _entry(node: yaml.MappingNode, key: str) -> yaml.Node | None:
    value = None
    for k, v in node.value:  # the last one wins, as when constructing
        if isinstance(k, yaml.ScalarNode) and k.tag == _STR and k.value == key:
            value = v
    return value


def _object_names(node: yaml.Node | None, build: Any, *, top: bool) -> list[tuple[Any, Any]]:
    """(kind, name) of the object(s) ``node`` holds, as ``parse_manifest`` + ``object_name`` see them."""
    if not isinstance(node, yaml.MappingNode):
        return []
    if any(isinstance(k, yaml.ScalarNode) and k.tag == _MERGE for k, _ in node.value):
        obj = build.construct_object(node, deep=True)  # merge keys: let the constructor resolve them
        objs = parse_manifest(yaml.safe_dump(obj)) if top else [obj]
        return [(o.get("kind", "?"), (o.get("metadata") or {}).get("name", "?")) for o in objs]
    kind_node = _entry(node, "kind")
    kind = build.construct_object(kind_node, deep=True) if kind_node is not None else None
    if top and not kind:
        return []
    items = _entry(node, "items")
    if top and isinstance(kind, str) and kind.endswith("List") and isinstance(items, yaml.SequenceNode):
        return [pair for item in items.value for pair in _object_names(item, build, top=False)]
    meta = _entry(node, "metadata")
    name: Any = "?"
    if isinstance(meta, yaml.MappingNode):
        name_node = _entry(meta, "name")
        name = build.construct_object(name_node, deep=True) if name_node is not None else "?"
    elif meta is not None and not (isinstance(meta, yaml.ScalarNode) and meta.tag.endswith(":null")):
        obj = build.construct_object(node, deep=True)
        name = (obj.get("metadata") or {}).get("name", "?")
    return [(kind if kind is not None else "?", name)]


def show(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))
    return text if len(text) <= _MAX else text[: _MAX - 1] + "…"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))


def show_pair(expected: Any, actual: Any) -> tuple[str | None, str | None]:
    """Both values as short strings; long ones that differ are cut around the first difference."""
    if expected is None or actual is None:
        return show(expected), show(actual)
    a, b = _text(expected), _text(actual)
    if len(a) <= _MAX and len(b) <= _MAX:
        return a, b
    at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    start = max(0, at - 40)

    def cut(text: str) -> str:
        piece = text[start:start + _MAX - 2]
        return ("…" if start else "") + piece + ("…" if start + len(piece) < len(text) else "")
    return cut(a), cut(b)


def _key(path: str, key: str) -> str:
    if _PLAIN.match(key):
        return f"{path}.{key}" if path else key
    return f"{path}['{key}']"


def quantity(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return Decimal(str(value))
    if not isinstance(value, str):
        return None
    m = _QUANTITY.match(value.strip())
    if not m:
        return None
    try:
        number, suffix = Decimal(m.group(1)), m.group(2)
        if suffix and suffix[0] in "eE" and len(suffix) > 1:
            return number * (Decimal(10) ** int(suffix[1:]))
        return number * Decimal(_SUFFIX[suffix])
    except (InvalidOperation, KeyError, ValueError):
        return None


def scalars_equal(expected: Any, actual: Any) -> bool:
    if expected == actual:
        return True
    if isinstance(expected, bool) or isinstance(actual, bool):
        return False
    if str(expected) == str(actual):
        return True
    a, b = quantity(expected), quantity(actual)
    return a is not None and b is not None and a == b


def _named(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(i, dict) and isinstance(i.get("name"), str) for i in items)


def _subset(expected: Any, actual: Any, path: str, obj: str, out: list[Drift], *, full: bool) -> None:
    """Record where ``actual`` differs from ``expected``. ``full`` also reports what ``actual`` has
    and ``expected`` lacks (release vs rendered); otherwise extra live fields are ignored."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            if expected or actual is not None:
                out.append(Drift(obj, path or OBJECT, show(expected), show(actual) or MISSING, ""))
            return
        for key, value in expected.items():
            if value is None and key not in actual:
                continue
            _subset(value, actual.get(key), _key(path, str(key)), obj, out, full=full)
        if full:
            for key in actual.keys() - expected.keys():
                if actual[key] is not None:
                    out.append(Drift(obj, _key(path, str(key)), MISSING, show(actual[key]), ""))
        return
    if isinstance(expected, list):
        if not isinstance(actual, list):
            if expected or actual is not None:
                out.append(Drift(obj, path, show(expected), show(actual) or MISSING, ""))
            return
        if _named(expected) and _named(actual):
            have = {i["name"]: i for i in actual}
            for item in expected:
                sub = f"{path}[name={item['name']}]"
                if item["name"] not in have:
                    out.append(Drift(obj, sub, show(item), MISSING, ""))
                else:
                    _subset(item, have[item["name"]], sub, obj, out, full=full)
            if full:
                names = {i["name"] for i in expected}
                for item in actual:
                    if item["name"] not in names:
                        out.append(Drift(obj, f"{path}[name={item['name']}]", MISSING, show(item), ""))
            return
        if len(expected) != len(actual):
            out.append(Drift(obj, path, show(expected), show(actual), ""))
            return
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            _subset(e, a, f"{path}[{i}]", obj, out, full=full)
        return
    if actual is None and expected is not None:
        out.append(Drift(obj, path, show(expected), MISSING, ""))
    elif not scalars_equal(expected, actual):
        out.append(Drift(obj, path, *show_pair(expected, actual), ""))


def _with_source(items: list[Drift], source: str) -> list[Drift]:
    return [Drift(d.object, d.field, d.expected, d.actual, source) for d in items]


def compare_live(manifest_obj: Mapping[str, Any], live_obj: Mapping[str, Any] | None) -> list[Drift]:
    """Fields the manifest sets that the live object does not hold (``source="live"``)."""
    name = object_name(manifest_obj)
    if live_obj is None:
        return [Drift(name, OBJECT, "present", MISSING, "live")]
    out: list[Drift] = []
    for section, value in manifest_obj.items():
        if section in ("apiVersion", "kind", "status"):
            continue
        if section == "metadata" and isinstance(value, dict):
            value = {k: v for k, v in value.items() if k in ("labels", "annotations")}
        _subset(value, live_obj.get(section), section, name, out, full=False)
    return _with_source(out, "live")


def compare_manifests(rendered: Iterable[Mapping[str, Any]], release: Iterable[Mapping[str, Any]]
                      ) -> list[Drift]:
    """Every difference between the rendered objects and the release's (``source="release"``)."""
    want, have = index(rendered), index(release)
    out: list[Drift] = []
    for name in sorted(want.keys() - have.keys()):
        out.append(Drift(name, OBJECT, "present", MISSING, ""))
    for name in sorted(have.keys() - want.keys()):
        out.append(Drift(name, OBJECT, MISSING, "present", ""))
    for name in sorted(want.keys() & have.keys()):
        _subset(dict(want[name]), dict(have[name]), "", name, out, full=True)
    return _with_source(out, "release")
