"""Hypothesis strategies for the fuzz suite: inputs that are invalid *by construction*, each with the
JSON path a rejection must name.

``config_cases()`` breaks a valid tenant config (``deploy/examples/tenant-acme.yaml``) in one place:
a required field removed, a value of the wrong JSON type, a string outside its pattern / enum /
length, an unknown property, a plaintext or malformed LLM key. ``request_body_cases()`` does the same
to the API's request body, ``heartbeat_cases()`` to an ``AdapterHeartbeat``, ``envelope_cases()`` to
the event envelope of a ``TenantRequested`` message. Every case is ``Case(doc, path, kind)``; paths
are relative to the document (``$.llm.apiKey``), callers re-root them (``$.config.llm.apiKey``).

``explore(strategy, check, ...)`` runs a Hypothesis search from async test code: Hypothesis runs in a
worker thread and each example's ``check`` coroutine runs on the test's own event loop (where its
clients live).
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import string
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.reliability_tenants import EXAMPLE

VALID_CONFIG: dict[str, Any] = copy.deepcopy(EXAMPLE["config"])


@dataclass(frozen=True)
class Case:
    doc: Any
    path: str  # the JSON path the rejection must name ("$" = the document as a whole)
    kind: str  # which mutation produced it (for the figures)


def names_path(reported: list[str], expected: str) -> bool:
    """True when a reported error path is the expected one or lies under it."""
    return any(p == expected or p.startswith(expected + ".") or p.startswith(expected + "[") for p in reported)


# --------------------------------------------------------------------------------------------------
# JSON values
# --------------------------------------------------------------------------------------------------

SAFE_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                         st.floats(allow_nan=False, allow_infinity=False), SAFE_TEXT)
JSON = st.recursive(JSON_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(SAFE_TEXT, inner, max_size=4)),
                    max_leaves=12)
NON_STRING = st.one_of(st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False),
                       st.lists(JSON_SCALARS, max_size=3), st.dictionaries(SAFE_TEXT, JSON_SCALARS, max_size=3))
NON_OBJECT = st.one_of(st.none(), st.booleans(), st.integers(), SAFE_TEXT, st.lists(JSON_SCALARS, max_size=3))
KEY = st.text(alphabet=string.ascii_letters + string.digits + "_", min_size=1, max_size=20)


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    out = copy.deepcopy(doc)
    cur = out
    for p in path[:-1]:
        cur = cur[p]
    cur[path[-1]] = value
    return out


def _drop(doc: Any, path: tuple[Any, ...]) -> Any:
    out = copy.deepcopy(doc)
    cur = out
    for p in path[:-1]:
        cur = cur[p]
    del cur[path[-1]]
    return out


def jpath(path: tuple[Any, ...]) -> str:
    out = "$"
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def not_matching(pattern: str, *, exclude: tuple[str, ...] = ()) -> st.SearchStrategy[str]:
    rx = re.compile(pattern)
    return SAFE_TEXT.filter(lambda s: not rx.fullmatch(s) and s not in exclude)


# --------------------------------------------------------------------------------------------------
# tenant config
# --------------------------------------------------------------------------------------------------

_DNS = r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
PATTERNS: dict[tuple[Any, ...], str] = {
    ("slug",): r"^[a-z0-9]([a-z0-9-]{0,54}[a-z0-9])?$",
    ("chartVersion",): r"^v[0-9]+\.[0-9]+\.[0-9]+$",
    ("llm", "provider"): r"^[a-z0-9][a-z0-9-]{0,62}$",
    ("llm", "baseUrl"): r"^https?://[^\s/?#]+([/?#][^\s]*)?$",
    ("wazuhIngress", "hostname"): _DNS,
    ("allowedLlmHosts", 0): _DNS,
}
ENUMS: dict[tuple[Any, ...], tuple[str, ...]] = {
    ("profile",): ("pilot-prod", "small-dev"),
    ("secretsBackend",): ("kubernetes", "vault"),
    ("wazuhIngress", "mode"): ("loadbalancer", "edge-haproxy"),
}
MAX_LENGTHS: dict[tuple[Any, ...], int] = {("displayName",): 200, ("llm", "model"): 128, ("branding", "appName"): 100}
REQUIRED: list[tuple[Any, ...]] = [("slug",), ("displayName",), ("llm",), ("allowedLlmHosts",), ("wazuhIngress",),
                                   ("llm", "provider"), ("llm", "baseUrl"), ("llm", "model"), ("llm", "apiKey"),
                                   ("wazuhIngress", "mode"), ("wazuhIngress", "hostname")]
OBJECTS: dict[tuple[Any, ...], set[str]] = {
    (): set(VALID_CONFIG) | {"profile", "chartVersion", "secretsBackend", "branding", "components", "integrations"},
    ("llm",): {"provider", "baseUrl", "model", "apiKey"},
    ("wazuhIngress",): {"mode", "hostname", "tls"},
    ("branding",): {"appName", "logoUrl", "primaryColor", "secondaryColor", "favicon"},
}
STRING_FIELDS = [*PATTERNS, *ENUMS, *MAX_LENGTHS]


def config_cases(base: dict[str, Any] | None = None) -> st.SearchStrategy[Case]:
    base = base if base is not None else VALID_CONFIG

    def missing(path: tuple[Any, ...]) -> Case:
        return Case(_drop(base, path), jpath(path), "missing required field")

    def wrong_type(path: tuple[Any, ...], value: Any) -> Case:
        return Case(_set(base, path, value), jpath(path), "wrong type")

    def unknown(parent: tuple[Any, ...], key: str) -> Case:
        container = base
        for p in parent:
            container = container[p]
        return Case(_set(base, (*parent, key), 1), jpath((*parent, key)), "unknown property")

    pattern = st.sampled_from(sorted(PATTERNS, key=str)).flatmap(
        lambda p: not_matching(PATTERNS[p]).map(lambda v, p=p: Case(_set(base, p, v), jpath(p), "pattern")))
    enum = st.sampled_from(sorted(ENUMS, key=str)).flatmap(
        lambda p: SAFE_TEXT.filter(lambda v, p=p: v not in ENUMS[p]).map(
            lambda v, p=p: Case(_set(base, p, v), jpath(p), "enum")))
    too_long = st.sampled_from(sorted(MAX_LENGTHS, key=str)).flatmap(
        lambda p: st.text(alphabet=string.ascii_letters, min_size=MAX_LENGTHS[p] + 1, max_size=MAX_LENGTHS[p] + 50)
        .map(lambda v, p=p: Case(_set(base, p, v), jpath(p), "too long")))
    empty = st.sampled_from([("displayName",), ("llm", "model")]).map(
        lambda p: Case(_set(base, p, ""), jpath(p), "empty"))
    plaintext_key = st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=1, max_size=60).map(
        lambda v: Case(_set(base, ("llm", "apiKey"), v), "$.llm.apiKey", "plaintext LLM key"))
    bad_sealed = SAFE_TEXT.filter(lambda v: not re.fullmatch(r"sealed:v1:[A-Za-z0-9_\-=]+", v)).map(
        lambda v: Case(_set(base, ("llm", "apiKey"), {"sealed": v}), "$.llm.apiKey", "malformed sealed key"))
    hosts = st.one_of(NON_OBJECT.filter(lambda v: not isinstance(v, list)), st.just([])).map(
        lambda v: Case(_set(base, ("allowedLlmHosts",), v), "$.allowedLlmHosts", "hosts not a non-empty list"))
    return st.one_of(
        st.sampled_from(REQUIRED).map(missing),
        st.tuples(st.sampled_from(STRING_FIELDS), NON_STRING).map(lambda t: wrong_type(*t)),
        st.tuples(st.sampled_from(sorted(OBJECTS, key=str)), KEY).filter(
            lambda t: t[1] not in OBJECTS[t[0]]).map(lambda t: unknown(*t)),
        pattern, enum, too_long, empty, plaintext_key, bad_sealed, hosts,
    )


def not_an_object() -> st.SearchStrategy[Case]:
    return NON_OBJECT.map(lambda v: Case(v, "$", "not an object"))


# --------------------------------------------------------------------------------------------------
# HTTP API bodies (paths as the API reports them: $.config.<...>, $.requestId, ...)
# --------------------------------------------------------------------------------------------------


def request_body_cases() -> st.SearchStrategy[Case]:
    valid = {"requestId": "fuzz-request", "config": VALID_CONFIG}
    in_config = config_cases().map(lambda c: Case({**valid, "config": c.doc}, "$.config" + c.path[1:], c.kind))
    request_id = st.one_of(st.just(""), st.text(alphabet="abc", min_size=129, max_size=140), NON_STRING).map(
        lambda v: Case({**valid, "requestId": v}, "$.requestId", "bad requestId"))
    config = NON_OBJECT.map(lambda v: Case({**valid, "config": v}, "$.config", "config not an object"))
    extra = KEY.filter(lambda k: k not in valid).map(lambda k: Case({**valid, k: 1}, f"$.{k}", "unknown property"))
    no_config = st.just(Case({"requestId": "fuzz-request"}, "$.config", "missing required field"))
    return st.one_of(in_config, request_id, config, extra, no_config)


def upgrade_body_cases() -> st.SearchStrategy[Case]:
    version = st.one_of(not_matching(r"^v?\d+\.\d+\.\d+$"), NON_STRING).map(
        lambda v: Case({"targetChartVersion": v}, "$.targetChartVersion", "bad version"))
    extra = KEY.filter(lambda k: k != "targetChartVersion").map(
        lambda k: Case({"targetChartVersion": "v1.1.0", k: 1}, f"$.{k}", "unknown property"))
    return st.one_of(version, extra, st.just(Case({}, "$.targetChartVersion", "missing required field")))


_NOT_BOOL = st.one_of(st.lists(JSON_SCALARS, max_size=2), st.dictionaries(KEY, JSON_SCALARS, max_size=2),
                      SAFE_TEXT.filter(lambda s: s.strip().lower() not in
                                       {"0", "1", "true", "false", "yes", "no", "on", "off", "t", "f", "y", "n"}))
_NOT_STR = st.one_of(st.integers(), st.booleans(), st.lists(JSON_SCALARS, max_size=2),
                     st.dictionaries(KEY, JSON_SCALARS))


def decommission_body_cases() -> st.SearchStrategy[Case]:
    grace = st.one_of(st.floats(max_value=-0.001, allow_nan=False, allow_infinity=False),
                      st.integers(max_value=-1), st.lists(JSON_SCALARS, max_size=2),
                      SAFE_TEXT.filter(lambda s: not _number(s))).map(
        lambda v: Case({"gracePeriodSeconds": v}, "$.gracePeriodSeconds", "bad grace period"))
    force = _NOT_BOOL.map(lambda v: Case({"force": v}, "$.force", "bad force"))
    reason = st.one_of(st.text(alphabet="ab", min_size=501, max_size=520), _NOT_STR).map(
        lambda v: Case({"reason": v}, "$.reason", "bad reason"))
    extra = KEY.filter(lambda k: k not in {"gracePeriodSeconds", "force", "reason"}).map(
        lambda k: Case({k: 1}, f"$.{k}", "unknown property"))
    return st.one_of(grace, force, reason, extra)


def suspend_body_cases() -> st.SearchStrategy[Case]:
    reason = st.one_of(st.text(alphabet="ab", min_size=501, max_size=520), _NOT_STR).map(
        lambda v: Case({"reason": v}, "$.reason", "bad reason"))
    extra = KEY.filter(lambda k: k != "reason").map(lambda k: Case({k: "x"}, f"$.{k}", "unknown property"))
    return st.one_of(reason, extra)


def _number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------------------------------
# messages on the bus
# --------------------------------------------------------------------------------------------------


def envelope_cases(valid: dict[str, Any]) -> st.SearchStrategy[Case]:
    """A valid event body (as a dict) broken in its envelope; paths as pydantic reports them."""
    uuid_fields = ["event_id", "tenant_id", "correlation_id"]
    bad_uuid = st.tuples(st.sampled_from(uuid_fields), st.one_of(SAFE_TEXT.filter(_not_uuid), NON_STRING)).map(
        lambda t: Case({**valid, t[0]: t[1]}, f"$.{t[0]}", "bad uuid"))
    missing = st.sampled_from(["tenant_id", *[k for k in valid if k not in
                                              {"event_id", "correlation_id", "causation_id", "occurred_at",
                                               "schema_version", "event_type", "tenant_id"}]]).map(
        lambda k: Case({k2: v for k2, v in valid.items() if k2 != k}, f"$.{k}", "missing required field"))
    version = st.one_of(st.integers().filter(lambda n: n != 1), SAFE_TEXT.filter(lambda s: s.strip() != "1")).map(
        lambda v: Case({**valid, "schema_version": v}, "$.schema_version", "bad schema version"))
    when = st.one_of(SAFE_TEXT.filter(lambda s: not _datetime(s)), st.lists(JSON_SCALARS, max_size=2),
                     st.dictionaries(KEY, JSON_SCALARS, max_size=2)).map(
        lambda v: Case({**valid, "occurred_at": v}, "$.occurred_at", "bad timestamp"))
    extra = KEY.filter(lambda k: k not in valid).map(lambda k: Case({**valid, k: 1}, f"$.{k}", "unknown property"))
    return st.one_of(bad_uuid, missing, version, when, extra)


def malformed_bodies() -> st.SearchStrategy[Case]:
    """Bodies that are not an event at all: not JSON, not an object, no / an unknown event_type."""
    return st.one_of(
        st.binary(max_size=200).filter(lambda b: not _json(b)).map(lambda b: Case(b, "$", "not JSON")),
        NON_OBJECT.map(lambda v: Case(json.dumps(v).encode(), "$", "not an object")),
        SAFE_TEXT.map(lambda t: Case(json.dumps({"event_type": t}).encode(), "$.event_type", "unknown event type")),
    )


def _not_uuid(s: str) -> bool:
    try:
        uuid.UUID(s)
    except (ValueError, AttributeError, TypeError):
        return True
    return False


def _datetime(s: str) -> bool:
    from datetime import datetime

    from pydantic import TypeAdapter, ValidationError

    try:
        TypeAdapter(datetime).validate_python(s)
    except ValidationError:
        return False
    return True


def _json(b: bytes) -> bool:
    try:
        json.loads(b)
    except ValueError:
        return False
    return True


def heartbeat_cases(valid: dict[str, Any]) -> st.SearchStrategy[Case]:
    """An adapter's heartbeat broken in its payload; paths as the heartbeat service reports them
    (dot-joined pydantic locations, no ``$``)."""
    status = st.one_of(SAFE_TEXT.filter(lambda s: s not in {"ok", "degraded", "down"}), NON_STRING).map(
        lambda v: Case({**valid, "status": v}, "status", "bad status"))
    version = st.one_of(st.text(alphabet="v1.", min_size=65, max_size=80), NON_STRING).map(
        lambda v: Case({**valid, "adapter_version": v}, "adapter_version", "bad adapter_version"))
    missing = st.sampled_from(["status", "adapter_version"]).map(
        lambda k: Case({k2: v for k2, v in valid.items() if k2 != k}, k, "missing required field"))
    comp_status = st.tuples(KEY, st.one_of(SAFE_TEXT.filter(lambda s: s not in {"ok", "degraded", "down", "unknown"}),
                                           NON_STRING)).map(
        lambda t: Case({**valid, "components": {t[0]: {"status": t[1]}}}, f"components.{t[0]}.status",
                       "bad component status"))
    comp_message = st.tuples(KEY, st.text(alphabet="x", min_size=301, max_size=320)).map(
        lambda t: Case({**valid, "components": {t[0]: {"status": "ok", "message": t[1]}}},
                       f"components.{t[0]}.message", "component message too long"))
    comp_key = st.text(alphabet=string.ascii_lowercase, min_size=65, max_size=80).map(
        lambda k: Case({**valid, "components": {k: {"status": "ok"}}}, "components", "component name too long"))
    too_many = st.integers(33, 40).map(
        lambda n: Case({**valid, "components": {f"c{i}": {"status": "ok"} for i in range(n)}}, "components",
                       "too many components"))
    components = NON_OBJECT.filter(lambda v: v is not None).map(
        lambda v: Case({**valid, "components": v}, "components", "components not an object"))
    extra = KEY.filter(lambda k: k not in valid).map(lambda k: Case({**valid, k: 1}, k, "unknown property"))
    return st.one_of(status, version, missing, comp_status, comp_message, comp_key, too_many, components, extra)


# --------------------------------------------------------------------------------------------------
# running Hypothesis from async tests
# --------------------------------------------------------------------------------------------------


async def explore(strategy: st.SearchStrategy[Any], check: Callable[[Any], Awaitable[None]], *,
                  max_examples: int, timeout_s: float = 120.0) -> None:
    """Run ``check`` on ``max_examples`` examples of ``strategy`` (with shrinking on failure)."""
    loop = asyncio.get_running_loop()

    @settings(max_examples=max_examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
    @given(strategy)
    def prop(example: Any) -> None:
        asyncio.run_coroutine_threadsafe(check(example), loop).result(timeout_s)

    await asyncio.to_thread(prop)
