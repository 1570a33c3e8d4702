"""Chart tooling shared by the CLI, the helm-runner and the tests.

Functions here work offline (no cluster). Helm calls (``render``, ``lint``, ``package``) block;
async callers run them in a thread. What a caller can rely on:

* ``validate_values`` checks values exactly as Helm will (chart defaults merged with Helm's rules,
  then the chart's ``values.schema.json``, Draft 2020-12, plus the vendored subcharts' schemas and
  the cross-field rules the templates enforce) and returns ``(json_path, message)`` pairs such as
  ``("$.tenant.slug", "does not match pattern ...")``. Messages never echo the offending value.
* ``render`` refuses invalid values with ``ValidationFailed`` before Helm runs, and maps a template
  failure to ``InvalidObject``.
* ``lock_digest_check`` compares ``Chart.lock`` with Chart.yaml (Helm's own digest) and with the
  content of every vendored subchart directory; ``package`` refuses to build from a drifted tree.
* README values tables are generated from the schemas (``python -m soctalk_common.charts readme``).

The charts directory is ``$SOCTALK_CHARTS_DIR`` when set, else ``<repo>/charts``.
"""

from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import json
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from soctalk_common.errors import InvalidObject, PermanentError, ValidationFailed

SYSTEM_CHART = "soctalk-system"
TENANT_CHART = "soctalk-tenant"
CHARTS = (SYSTEM_CHART, TENANT_CHART)
SYSTEM_NAMESPACE = "soctalk-system"

README_BEGIN = (
    "<!-- BEGIN values-table: generated from values.schema.json by "
    "`python -m soctalk_common.charts readme`; do not edit -->"
)
README_END = "<!-- END values-table -->"


class ChartLockDrift(PermanentError):
    """Chart.lock no longer describes the vendored subcharts or Chart.yaml's dependencies."""


# --- locations -------------------------------------------------------------------------------


def charts_root() -> Path:
    """``$SOCTALK_CHARTS_DIR``, else ``charts/`` at the repository root (found from this file)."""
    env = os.environ.get("SOCTALK_CHARTS_DIR")
    if env:
        return Path(env).resolve()
    return Path(__file__).resolve().parents[3] / "charts"


def chart_dir(name: str) -> Path:
    """Directory of chart ``name`` (e.g. ``soctalk-tenant``); ``FileNotFoundError`` if absent."""
    if "/" in name or name in ("", ".", ".."):
        raise FileNotFoundError(f"not a chart name: {name!r}")
    path = charts_root() / name
    if not (path / "Chart.yaml").is_file():
        raise FileNotFoundError(f"chart {name!r} not found under {charts_root()}")
    return path


def _chart_path(chart: str | Path) -> Path:
    """A chart name (``soctalk-tenant``) is looked up under charts_root(); a Path is used as is."""
    if isinstance(chart, Path) or "/" in chart:
        path = Path(chart)
        if not (path / "Chart.yaml").is_file():
            raise FileNotFoundError(f"no Chart.yaml in {path}")
        return path
    return chart_dir(chart)


def _yaml_file(path: Path) -> dict[str, Any]:
    """A YAML mapping file; parsed once per (path, mtime), a fresh copy on every call."""
    return copy.deepcopy(_cached_yaml(str(path), path.stat().st_mtime_ns))


@functools.lru_cache(maxsize=64)
def _cached_yaml(path_str: str, _mtime_ns: int) -> dict[str, Any]:
    path = Path(path_str)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data


def load_values_file(path: str | Path) -> dict[str, Any]:
    """A values file as a dict (an empty file is ``{}``)."""
    return _yaml_file(Path(path))


def chart_metadata(chart: str | Path) -> dict[str, Any]:
    return _yaml_file(_chart_path(chart) / "Chart.yaml")


def chart_defaults(chart: str | Path) -> dict[str, Any]:
    """The chart's own ``values.yaml``."""
    path = _chart_path(chart) / "values.yaml"
    return _yaml_file(path) if path.is_file() else {}


def _defaults_shared(path: Path) -> dict[str, Any]:
    """``values.yaml`` from the parse cache, not copied: only for callers that copy (merge_values)."""
    file = path / "values.yaml"
    return _cached_yaml(str(file), file.stat().st_mtime_ns) if file.is_file() else {}


def load_schema(chart: str | Path) -> dict[str, Any]:
    path = _chart_path(chart) / "values.schema.json"
    return copy.deepcopy(_schema_json(str(path), path.stat().st_mtime_ns))


@functools.lru_cache(maxsize=16)
def _schema_json(path_str: str, _mtime_ns: int) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(Path(path_str).read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return schema


@functools.lru_cache(maxsize=16)
def _validator(path_str: str, _mtime_ns: int) -> Draft202012Validator:
    """Compiled once per (schema file, mtime): validation runs on every pre-render check.

    Local ``#/$defs/<name>`` references are inlined first (same verdicts and messages; resolving a
    ``$ref`` through the registry on every visit was half the validation time)."""
    return Draft202012Validator(_inline_local_refs(_schema_json(path_str, _mtime_ns)))


_DATA_KEYWORDS = frozenset({"default", "examples", "enum", "const"})  # values, not subschemas


def _inline_local_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """``{"$ref": "#/$defs/x", ...}`` → the definition itself (or ``allOf`` with its siblings, which is
    what ``$ref`` means in Draft 2020-12). Recursive definitions are left as references."""
    defs = schema.get("$defs") or {}
    prefix = "#/$defs/"

    def walk(node: Any, seen: frozenset[str]) -> Any:
        if isinstance(node, list):
            return [walk(v, seen) for v in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        name = ref[len(prefix):] if isinstance(ref, str) and ref.startswith(prefix) else None
        rest = {k: v if k in _DATA_KEYWORDS else walk(v, seen) for k, v in node.items() if k != "$ref"}
        if name is None or "/" in name or "~" in name or name not in defs or name in seen:
            return {**rest, "$ref": ref} if "$ref" in node else rest
        target = walk(defs[name], seen | {name})
        return {**rest, "allOf": [*rest.get("allOf", []), target]} if rest else target

    return walk(schema, frozenset())


# --- values ----------------------------------------------------------------------------------


def merge_values(base: Mapping[str, Any], *overlays: Mapping[str, Any] | None) -> dict[str, Any]:
    """Merge values the way Helm coalesces them: maps merge recursively, later layers win,
    lists and scalars are replaced, and ``None`` deletes the key. Inputs are not modified."""
    result: dict[str, Any] = copy.deepcopy(dict(base))
    for overlay in overlays:
        if overlay:
            _merge_into(result, overlay)
    return _drop_nulls(result)


def _merge_into(target: dict[str, Any], overlay: Mapping[str, Any]) -> None:
    for key, value in overlay.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge_into(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    return value


def tenant_values(profile: Mapping[str, Any], tenant: Mapping[str, Any]) -> dict[str, Any]:
    """Values for the tenant chart: the profile's tenant defaults under the tenant's own config.

    ``profile`` is soctalk-system values (a ``deploy/values/<profile>.yaml``): its
    ``defaults.tenant`` (component sizing, quota) and ``defaults.llm`` (provider, base URL,
    model) apply unless the tenant sets them.
    """
    defaults = profile.get("defaults") or {}
    base: dict[str, Any] = dict(defaults.get("tenant") or {})  # merge_values deep-copies it
    if defaults.get("llm"):
        base["llm"] = dict(defaults["llm"])
    return merge_values(base, tenant)


def json_path(parts: Iterable[Any]) -> str:
    """``["namespaceLabels", "mssp-id"]`` → ``$.namespaceLabels['mssp-id']``; ints become ``[i]``."""
    out = "$"
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(part)):
            out += f".{part}"
        else:
            out += f"['{part}']"
    return out


def _describe(error: ValidationError) -> list[tuple[list[Any], str]]:
    """(path parts, message) for one schema error, never echoing the instance value."""
    path = list(error.absolute_path)
    kind, expected = error.validator, error.validator_value
    if kind == "required":
        missing = re.match(r"'([^']+)' is a required property", error.message)
        return [(path + [missing.group(1) if missing else "?"], "is required")]
    if kind == "additionalProperties" and isinstance(error.instance, dict):
        known = set(error.schema.get("properties", {}))
        extras = [k for k in error.instance if k not in known] or ["?"]
        return [(path + [k], "is not allowed (unknown key)") for k in extras]
    messages = {
        "type": lambda: (
            f"must be of type {' or '.join(expected) if isinstance(expected, list) else expected}"
        ),
        "pattern": lambda: f"does not match pattern {expected}",
        "enum": lambda: "must be one of " + ", ".join(json.dumps(v) for v in expected),
        "const": lambda: f"must be {json.dumps(expected)}",
        "minLength": lambda: f"must be at least {expected} characters long",
        "maxLength": lambda: f"must be at most {expected} characters long",
        "minimum": lambda: f"must be >= {expected}",
        "maximum": lambda: f"must be <= {expected}",
        "minItems": lambda: f"must have at least {expected} items",
        "maxItems": lambda: f"must have at most {expected} items",
        "uniqueItems": lambda: "must not contain duplicates",
        "propertyNames": lambda: "has a key that is not a valid label name",
        "anyOf": lambda: "does not match any allowed form",
    }
    make = messages.get(str(kind))
    return [(path, make() if make else error.message)]


def _schema_errors(schema_file: Path, values: Any, prefix: Sequence[Any] = ()) -> list[tuple[str, str]]:
    validator = _validator(str(schema_file), schema_file.stat().st_mtime_ns)
    found: list[tuple[str, str]] = []
    for error in validator.iter_errors(values):
        for parts, message in _describe(error):
            found.append((json_path([*prefix, *parts]), message))
    return found


def _cross_field_errors(chart_name: str, merged: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Rules the templates enforce with `fail` that JSON Schema cannot express."""
    if chart_name != TENANT_CHART:
        return []
    tenant, labels = merged.get("tenant"), merged.get("namespaceLabels")
    if not isinstance(tenant, dict) or not isinstance(labels, dict):
        return []
    found = []
    for label, key in (("tenant-id", "id"), ("mssp-id", "msspId"), ("install-id", "installId")):
        if label in labels and key in tenant and labels[label] != tenant[key]:
            found.append((json_path(["namespaceLabels", label]), f"must equal tenant.{key}"))
    return found


def validate_values(chart: str | Path, values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Every reason Helm would refuse ``values`` for ``chart``, as ``(json_path, message)``.

    Empty when the values are valid. The chart's defaults are merged first (as Helm does), so a
    required key with a default counts as present unless ``values`` sets it to ``None``.
    """
    path = _chart_path(chart)
    merged = merge_values(_defaults_shared(path), values)
    errors = _schema_errors(path / "values.schema.json", merged)
    for sub in sorted((path / "charts").glob("*/values.schema.json")):
        name = sub.parent.name
        sub_values = merge_values(_defaults_shared(sub.parent), merged.get(name) or {})
        errors += _schema_errors(sub, sub_values, prefix=[name])
    errors += _cross_field_errors(path.name, merged)
    return sorted(set(errors))


# --- rendering -------------------------------------------------------------------------------


def default_namespace(chart: str | Path, values: Mapping[str, Any]) -> str:
    """``tenant-<slug>`` for the tenant chart, ``soctalk-system`` otherwise."""
    if _chart_path(chart).name == TENANT_CHART:
        slug = (values.get("tenant") or {}).get("slug")
        if slug:
            return f"tenant-{slug}"
    return SYSTEM_NAMESPACE


_HELM_SCHEMA_LINE = re.compile(r"^- at '([^']*)': (.*)$")


def parse_helm_schema_errors(message: str) -> list[tuple[str, str]]:
    """Parse Helm's "values don't meet the specifications" message into (json_path, message)."""
    found = []
    for line in message.splitlines():
        m = _HELM_SCHEMA_LINE.match(line.strip())
        if m:
            parts = [p for p in m.group(1).split("/") if p]
            found.append((json_path(int(p) if p.isdigit() else p for p in parts), m.group(2)))
    return found or [("$", message.strip())]


def render_manifests(
    chart: str | Path,
    values: Mapping[str, Any],
    *,
    release_name: str | None = None,
    namespace: str | None = None,
) -> dict[str, str]:
    """Template path → rendered manifest (NOTES.txt and empty templates left out)."""
    import helm_python as helm

    path = _chart_path(chart)
    errors = validate_values(path, values)
    if errors:
        raise ValidationFailed(errors)
    ns = namespace or default_namespace(path, values)
    with helm.Chart.load(path) as loaded:
        try:
            manifests = loaded.render(
                dict(values), name=release_name or path.name, namespace=ns, is_install=True
            )
        except helm.HelmValuesError as exc:
            raise ValidationFailed(parse_helm_schema_errors(str(exc))) from None
        except helm.HelmRenderError as exc:
            raise InvalidObject(f"{path.name}: {exc}") from None
    return {
        name: body
        for name, body in sorted(manifests.items())
        if not name.endswith("NOTES.txt") and body.strip()
    }


def render(
    chart: str | Path,
    values: Mapping[str, Any],
    *,
    release_name: str | None = None,
    namespace: str | None = None,
) -> str:
    """The chart rendered offline as one multi-document YAML stream (like ``helm template``).

    Raises ``ValidationFailed`` (with JSON paths) for invalid values, ``InvalidObject`` when a
    template fails.
    """
    manifests = render_manifests(chart, values, release_name=release_name, namespace=namespace)
    return "".join(f"---\n# Source: {name}\n{body.strip()}\n" for name, body in manifests.items())


def render_objects(chart: str | Path, values: Mapping[str, Any], **kwargs: Any) -> list[dict[str, Any]]:
    """The rendered Kubernetes objects, parsed."""
    return [doc for doc in yaml.safe_load_all(render(chart, values, **kwargs)) if doc]


# --- lint / package ----------------------------------------------------------------------------


PROFILES = ("pilot-prod", "small-dev")


def deploy_dir() -> Path:
    """``deploy/`` next to the charts directory (value profiles and examples)."""
    return charts_root().parent / "deploy"


def example_tenant_file() -> Path:
    return deploy_dir() / "examples" / "tenant-acme-values.yaml"


def profile_values_files(chart: str, profiles: Sequence[str] = PROFILES) -> list[Path]:
    """The value profile files to lint ``chart`` with: ``deploy/values/<profile>.yaml``.

    The same files serve both charts: for the tenant chart :func:`lint` applies a profile the way
    the helm-runner does (its ``defaults.tenant`` under the example tenant).
    """
    _chart_path(chart)
    files = []
    for name in profiles:
        path = deploy_dir() / "values" / f"{name}.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"value profile {name!r} not found at {path}")
        files.append(path)
    return files


def tenant_values_for_profile(profile: str, tenant: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`tenant_values` with the named profile's file (``deploy/values/<profile>.yaml``)."""
    (path,) = profile_values_files(TENANT_CHART, [profile])
    return tenant_values(_cached_yaml(str(path), path.stat().st_mtime_ns), tenant)  # copies what it keeps


def _is_profile(values: Mapping[str, Any]) -> bool:
    return "install" in values and isinstance((values.get("defaults") or {}).get("tenant"), dict)


@dataclass(frozen=True)
class LintReport:
    chart: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    infos: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def lint_report(
    chart: str | Path,
    values_files: Sequence[str | Path] = (),
    *,
    values: Mapping[str, Any] | None = None,
    namespace: str | None = None,
    strict: bool = False,
) -> LintReport:
    """``helm lint`` with ``-f`` files applied in order (then ``values``); findings by severity.

    A soctalk-system value profile passed for the tenant chart is applied as the helm-runner
    applies it: ``tenant_values(profile, <example tenant>)``.
    """
    import helm_python as helm

    path = _chart_path(chart)
    layers = [load_values_file(f) for f in values_files]
    if path.name == TENANT_CHART and any(_is_profile(layer) for layer in layers):
        example = load_values_file(example_tenant_file())
        layers = [tenant_values(layer, example) if _is_profile(layer) else layer for layer in layers]
    merged = merge_values({}, *layers, values or {})
    report = helm.lint(path, merged, namespace=namespace or default_namespace(path, merged), strict=strict)
    by_severity: dict[int, list[str]] = {1: [], 2: [], 3: []}
    for msg in report.get("messages", []):
        text = f"{msg.get('path', '')}: {msg.get('error', '')}".strip()
        by_severity.setdefault(int(msg.get("severity", 0)), []).append(text)
    errors = by_severity[3] + [
        e for e in report.get("errors", []) if not any(e.strip() in x for x in by_severity[3])
    ]
    return LintReport(chart=path.name, errors=errors, warnings=by_severity[2], infos=by_severity[1])


def lint(
    chart: str | Path,
    values_files: Sequence[str | Path] = (),
    *,
    values: Mapping[str, Any] | None = None,
    namespace: str | None = None,
    strict: bool = False,
) -> list[str]:
    """``helm lint`` problems (errors; with ``strict`` also warnings). Empty = clean."""
    report = lint_report(chart, values_files, values=values, namespace=namespace, strict=strict)
    return report.errors + (report.warnings if strict else [])


def package(chart: str | Path, dest: str | Path) -> Path:
    """Build ``<dest>/<name>-<version>.tgz``; refuses (``ChartLockDrift``) if Chart.lock drifted."""
    import helm_python as helm

    path = _chart_path(chart)
    problems = lock_digest_check(path)
    if problems:
        raise ChartLockDrift("; ".join(problems))
    Path(dest).mkdir(parents=True, exist_ok=True)
    return Path(helm.package(path, destination=os.fspath(dest)))


def package_all(dest: str | Path) -> list[Path]:
    """Both charts, for ``soctalk charts package``."""
    return [package(name, dest) for name in CHARTS]


# --- Chart.lock --------------------------------------------------------------------------------

# Helm's chart.Dependency JSON field order (pkg/chart/v2); HashReq marshals these.
_DEP_FIELDS = ("name", "version", "repository", "condition", "tags", "enabled", "import-values", "alias")


def _go_dep(dep: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(dep) - set(_DEP_FIELDS) - {"digest"}
    if unknown:
        raise ValueError(f"dependency {dep.get('name')!r}: unsupported field(s) {sorted(unknown)}")
    out: dict[str, Any] = {"name": dep.get("name", "")}
    if dep.get("version"):
        out["version"] = dep["version"]
    out["repository"] = dep.get("repository", "")
    for key in _DEP_FIELDS[3:]:
        if dep.get(key):
            out[key] = dep[key]
    return out


def requirements_digest(requested: Sequence[Mapping[str, Any]], locked: Sequence[Mapping[str, Any]]) -> str:
    """Helm's Chart.lock ``digest``: sha256 of the JSON of [Chart.yaml deps, locked deps]."""
    locked_plain = [
        {k: v for k, v in _go_dep(d).items() if k in ("name", "version", "repository")} for d in locked
    ]
    payload = json.dumps([[_go_dep(d) for d in requested], locked_plain], separators=(",", ":"))
    return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()


def subchart_digest(directory: str | Path) -> str:
    """Content digest of a vendored subchart directory: every file's relative path and sha256."""
    root = Path(directory)
    lines = []
    for file in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        rel = file.relative_to(root).as_posix()
        lines.append(f"{rel}\0{hashlib.sha256(file.read_bytes()).hexdigest()}\n")
    return "sha256:" + hashlib.sha256("".join(lines).encode()).hexdigest()


def _local_dep_dir(chart_path: Path, dep: Mapping[str, Any]) -> Path | None:
    repo = str(dep.get("repository", ""))
    return (chart_path / repo[len("file://") :]).resolve() if repo.startswith("file://") else None


def expected_lock(chart: str | Path) -> dict[str, Any]:
    """The Chart.lock content the tree implies (without ``generated``)."""
    path = _chart_path(chart)
    requested = chart_metadata(path).get("dependencies") or []
    locked = []
    for dep in requested:
        entry = {
            "name": dep["name"],
            "repository": dep.get("repository", ""),
            "version": dep.get("version", ""),
        }
        local = _local_dep_dir(path, dep)
        if local is not None and local.is_dir():
            entry["digest"] = subchart_digest(local)
        locked.append(entry)
    return {"dependencies": locked, "digest": requirements_digest(requested, locked)}


def lock_digest_check(chart: str | Path = TENANT_CHART) -> list[str]:
    """Why ``Chart.lock`` does not match the tree; empty when it does (or the chart has no deps)."""
    path = _chart_path(chart)
    requested = chart_metadata(path).get("dependencies") or []
    lock_file = path / "Chart.lock"
    if not requested:
        return []
    if not lock_file.is_file():
        return [f"{path.name}: Chart.lock is missing"]
    lock = _yaml_file(lock_file)
    fix = "run `python -m soctalk_common.charts lock`"
    problems = []
    want = expected_lock(path)
    if lock.get("digest") != want["digest"]:
        problems.append(f"{path.name}: Chart.lock is out of sync with Chart.yaml dependencies ({fix})")
    have = {d.get("name"): d for d in lock.get("dependencies") or []}
    for dep in requested:
        name, local = dep["name"], _local_dep_dir(path, dep)
        if local is None or not (local / "Chart.yaml").is_file():
            problems.append(f"{path.name}: dependency {name} is not vendored at {dep.get('repository')}")
            continue
        meta = _yaml_file(local / "Chart.yaml")
        if meta.get("name") != name or str(meta.get("version")) != str(dep.get("version")):
            problems.append(
                f"{path.name}: charts/{local.name} is {meta.get('name')} {meta.get('version')}, "
                f"Chart.yaml wants {name} {dep.get('version')}"
            )
        locked = have.get(name)
        digest = subchart_digest(local)
        if locked is None:
            problems.append(f"{path.name}: dependency {name} is not in Chart.lock ({fix})")
        elif locked.get("digest") != digest:
            problems.append(
                f"{path.name}: subchart {name} changed since Chart.lock was written "
                f"(tree {digest}, lock {locked.get('digest')}) ({fix})"
            )
    return problems


def write_lock(chart: str | Path = TENANT_CHART) -> Path:
    """(Re)write Chart.lock from the tree; keeps ``generated`` when nothing changed."""
    path = _chart_path(chart)
    lock_file = path / "Chart.lock"
    want = expected_lock(path)
    old = _yaml_file(lock_file) if lock_file.is_file() else {}
    unchanged = old.get("digest") == want["digest"] and old.get("dependencies") == want["dependencies"]
    generated = old.get("generated") if unchanged and old.get("generated") else datetime.now(UTC).isoformat()
    want["generated"] = str(generated)
    header = (
        "# Helm's Chart.lock, plus a per-dependency `digest` of the vendored subchart directory\n"
        "# (SocTalk extension; Helm ignores it). Regenerate: python -m soctalk_common.charts lock\n"
    )
    lock_file.write_text(header + yaml.safe_dump(want, sort_keys=False), encoding="utf-8")
    return lock_file


# --- README values tables ------------------------------------------------------------------------


def _resolve(schema: Mapping[str, Any], node: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Follow a local $ref; returns (merged node, ref name)."""
    ref = node.get("$ref")
    if not ref:
        return dict(node), None
    name = ref.rsplit("/", 1)[-1]
    target = dict(schema.get("$defs", {}).get(name, {}))
    target.update({k: v for k, v in node.items() if k != "$ref"})
    return target, name


# Shapes shown as one row (type = the $defs name, default as compact JSON) to keep tables short.
_LEAF_REFS = ("resources", "persistence", "computeResources")


def _type_of(node: Mapping[str, Any], ref: str | None) -> str:
    if "enum" in node:
        return " | ".join(json.dumps(v) for v in node["enum"])
    if "const" in node:
        return f"const {json.dumps(node['const'])}"
    base = node.get("type")
    text = " or ".join(base) if isinstance(base, list) else (base or ("any of" if "anyOf" in node else "any"))
    if base == "array":
        item = node.get("items", {})
        text = f"array of {item['$ref'].rsplit('/', 1)[-1] if '$ref' in item else item.get('type', 'any')}"
    if ref in _LEAF_REFS:
        return ref
    if ref and ref not in ("components", "resourceQuota"):
        text = f"{text} ({ref})"
    return text


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(defaults: Any, parts: Sequence[str]) -> str:
    node = defaults
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return ""
        node = node[part]
    text = json.dumps(node, separators=(", ", ": "))
    return f"`{_cell(text)}`" if len(text) <= 120 else f"`{_cell(text[:117])}…`"


def _rows(
    schema: Mapping[str, Any], node: Mapping[str, Any], defaults: Any, parts: list[str], required: bool
) -> list[str]:
    node, ref = _resolve(schema, node)
    props = node.get("properties")
    # Expand objects with named properties; maps and leaves become one row.
    if (
        node.get("type") == "object"
        and props
        and node.get("additionalProperties") is False
        and ref not in _LEAF_REFS
    ):
        rows = []
        for name, child in props.items():
            rows += _rows(schema, child, defaults, [*parts, name], name in node.get("required", []))
        return rows
    key = ".".join(parts)
    desc = node.get("description", "")
    if node.get("type") == "object" and props:
        desc = f"{desc} Required keys: {', '.join(node.get('required', []))}.".strip()
    return [
        f"| `{_cell(key)}` | {_cell(_type_of(node, ref))} | {'yes' if required else ''} | "
        f"{_default(defaults, parts)} | {_cell(desc)} |"
    ]


def generate_readme_values_table(chart: str | Path) -> str:
    """The Markdown values table of ``chart``, generated from its values.schema.json."""
    path = _chart_path(chart)
    schema = load_schema(path)
    defaults = chart_defaults(path)
    lines = ["| Key | Type | Required | Default | Description |", "|---|---|---|---|---|"]
    for name, child in schema.get("properties", {}).items():
        lines += _rows(schema, child, defaults, [name], name in schema.get("required", []))
    return "\n".join(lines) + "\n"


def _readme_with_table(text: str, table: str) -> str:
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"README has no values-table markers ({README_BEGIN!r} … {README_END!r})")
    return text[: start + len(README_BEGIN)] + "\n" + table + text[end:]


def readme_is_current(chart: str | Path) -> bool:
    readme = _chart_path(chart) / "README.md"
    text = readme.read_text(encoding="utf-8")
    return _readme_with_table(text, generate_readme_values_table(chart)) == text


def update_readme(chart: str | Path) -> bool:
    """Rewrite the table between the markers; True when the file changed."""
    readme = _chart_path(chart) / "README.md"
    text = readme.read_text(encoding="utf-8")
    new = _readme_with_table(text, generate_readme_values_table(chart))
    if new != text:
        readme.write_text(new, encoding="utf-8")
    return new != text


# --- command line ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m soctalk_common.charts", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_readme = sub.add_parser("readme", help="regenerate the README values tables from the schemas")
    p_readme.add_argument("--check", action="store_true", help="fail if a README is stale instead of writing")
    p_lock = sub.add_parser("lock", help="rewrite Chart.lock from the vendored subcharts")
    p_lock.add_argument("--check", action="store_true", help="fail on drift instead of writing")
    p_pkg = sub.add_parser("package", help="package both charts")
    p_pkg.add_argument("--dest", default="dist/charts")
    args = parser.parse_args(argv)

    if args.command == "readme":
        stale = [c for c in CHARTS if not readme_is_current(c)]
        if args.check:
            for c in stale:
                print(f"{c}/README.md is stale: run python -m soctalk_common.charts readme", file=sys.stderr)
            return 1 if stale else 0
        for c in CHARTS:
            if update_readme(c):
                print(f"updated {c}/README.md")
        return 0
    if args.command == "lock":
        problems = lock_digest_check(TENANT_CHART)
        if args.check:
            for p in problems:
                print(p, file=sys.stderr)
            return 1 if problems else 0
        print(write_lock(TENANT_CHART))
        return 0
    for archive in package_all(args.dest):
        print(archive)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
