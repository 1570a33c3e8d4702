"""The heartbeat service's per-message path, made cheaper without changing what it decides.

* ``token_decision`` (prepared HMAC state, precomputed record facts) says exactly what the plain
  construction says — ``hash_token`` / ``verify_token`` / ``_tenant_uuid`` per message — for arbitrary
  records and presented strings (property test against a reference copy of the original rule).
* The pending buffer of the heartbeat subscription is bounded in messages and bytes; what does not fit
  is dropped and counted, and room comes back as batches are taken.
* Views and the last-seen buffer keep their rules with their compact representations.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.msg import Msg
from soctalk_common import events as ev
from soctalk_common.errors import PermanentError, ValidationFailed
from soctalk_heartbeat import domain
from soctalk_heartbeat.consumer import _Batcher
from soctalk_heartbeat.memory import TenantTouches, View, Views
from soctalk_secrets import domain as d

KEY = b"hot-path-test-signing-key-0123456789"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TENANT = "7f3c2a9e-1b4d-4c8e-9f6a-2d5b8e1c4a70"


# ------------------------------------------------------------------------------------------------
# token_decision ≡ the original per-message construction
# ------------------------------------------------------------------------------------------------


def reference_decision(record: d.AdapterTokenRecord | None, subject: str, now: datetime, *, presented: str,
                       key: bytes, tenant_state: str | None) -> d.Accept | d.Refuse:
    """``token_decision`` as it was before the record precomputed anything (the specification)."""
    try:
        prefix = d.parse_token(presented)
    except ValidationFailed:
        return d.Refuse("malformed")
    if record is None or not hmac.compare_digest(record.prefix, prefix):
        return d.Refuse("unknown_prefix")
    if not d.verify_token(key, presented, record.token_hash):
        return d.Refuse("bad_secret")
    try:
        subj, owner = d._tenant_uuid(subject), d._tenant_uuid(record.tenant_id)
    except ValidationFailed:
        return d.Refuse("wrong_tenant")
    if owner != subj:
        return d.Refuse("wrong_tenant")
    if record.revoked_at is not None and record.revoked_at <= now:
        return d.Refuse("revoked")
    if record.expires_at is not None and now >= record.expires_at:
        return d.Refuse("expired")
    if tenant_state not in d.TOKEN_ACCEPTING_TENANT_STATES:
        return d.Refuse("tenant_inactive")
    return d.Accept(tenant_id=subj, prefix=prefix)


_token, _record = d.new_token_record(TENANT, KEY, NOW - timedelta(days=1))
_other_token, _other = d.new_token_record(uuid.uuid4(), KEY, NOW - timedelta(days=1))
_offsets = st.one_of(st.none(), st.integers(-3600, 3600).map(lambda s: NOW + timedelta(seconds=s)))


@st.composite
def presented_tokens(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["own", "other", "flipped", "same-prefix", "minted", "text"]))
    if kind == "own":
        return _token
    if kind == "other":
        return _other_token
    if kind == "flipped":
        i = draw(st.integers(0, len(_token) - 1))
        return _token[:i] + draw(st.characters(codec="utf-8")) + _token[i + 1:]
    if kind == "same-prefix":
        return f"sta_{_record.prefix}_" + draw(st.text("abcXYZ019_-", min_size=60, max_size=68))
    if kind == "minted":
        return d.mint_adapter_token()[0]
    return draw(st.text(max_size=120))


@st.composite
def records(draw: st.DrawFn) -> d.AdapterTokenRecord | None:
    if draw(st.booleans()) and draw(st.booleans()):
        return None
    base = draw(st.sampled_from([_record, _other]))
    hashes = st.sampled_from([base.token_hash, base.token_hash.upper(), "not-a-hash", "", "é" * 64,
                              hashlib.sha256(b"x").hexdigest()])
    owners = st.sampled_from([base.tenant_id, TENANT, TENANT.upper(), "not-a-uuid", str(uuid.uuid4()),
                              TENANT.replace("-", "")])
    return replace(base, token_hash=draw(hashes), tenant_id=draw(owners), revoked_at=draw(_offsets),
                   expires_at=draw(_offsets))


@settings(max_examples=400, deadline=None)
@given(record=records(), presented=presented_tokens(),
       subject=st.sampled_from([TENANT, TENANT.upper(), "not-a-uuid", str(uuid.uuid4()), TENANT.replace("-", ""),
                                "{" + TENANT + "}"]),
       state=st.sampled_from([None, "active", "suspended", "failed", "degraded", "purged"]))
def test_token_decision_is_the_original_rule(record, presented, subject, state) -> None:  # type: ignore[no-untyped-def]
    assert d.token_decision(record, subject, NOW, presented=presented, key=KEY, tenant_state=state) == \
        reference_decision(record, subject, NOW, presented=presented, key=KEY, tenant_state=state)


@settings(max_examples=200, deadline=None)
@given(key=st.binary(min_size=16, max_size=200), token=st.text(max_size=100))
def test_prepared_hmac_state_gives_hash_token(key: bytes, token: str) -> None:
    assert d._keyed_hex(key, token) == d.hash_token(key, token)
    assert d._keyed_hex(key, token) == d._keyed_hex(key, token)  # the prepared state is copied, never used up


def test_a_short_signing_key_is_still_refused() -> None:
    with pytest.raises(PermanentError):
        d.token_decision(_record, TENANT, NOW, presented=_token, key=b"short", tenant_state="active")


def test_record_facts_follow_replace_and_stay_out_of_equality_and_repr() -> None:
    assert _record.hash_ok and _record.owner == TENANT
    bad = replace(_record, token_hash="nope", tenant_id="not-a-uuid")
    assert not bad.hash_ok and bad.owner is None
    assert replace(bad, token_hash=_record.token_hash, tenant_id=TENANT) == _record
    assert "hash_ok" not in repr(_record) and "owner" not in repr(_record)
    upper = replace(_record, tenant_id=TENANT.upper())
    assert upper.owner == TENANT  # canonicalised once, as _tenant_uuid did per message


# ------------------------------------------------------------------------------------------------
# bounded pending buffer
# ------------------------------------------------------------------------------------------------


def _msg(i: int, size: int = 100) -> Msg:
    return Msg(_client=None, subject=f"soctalk.adapter.{i}.heartbeat", data=b"x" * size)  # type: ignore[arg-type]


async def test_the_pending_buffer_drops_beyond_its_message_bound_and_counts() -> None:
    drops: list[int] = []
    b = _Batcher(None, "s", "q", max_msgs=3, max_bytes=10_000, on_drop=lambda: drops.append(1))
    kept = [b.offer(_msg(i)) for i in range(5)]
    assert kept == [True, True, True, False, False]
    assert len(b) == 3 and b.dropped == 2 and len(drops) == 2 and b.pending_bytes == 300
    first = await b.fetch(2, 0.01)
    assert [m.subject for m in first] == ["soctalk.adapter.0.heartbeat", "soctalk.adapter.1.heartbeat"]
    assert len(b) == 1 and b.pending_bytes == 100
    assert b.offer(_msg(5)) and b.offer(_msg(6)) and not b.offer(_msg(7))  # room came back, then full again
    assert [m.subject.split(".")[2] for m in await b.fetch(10, 0.01)] == ["2", "5", "6"]
    assert len(b) == 0 and b.pending_bytes == 0 and b.dropped == 3


async def test_the_pending_buffer_is_bounded_in_bytes_too() -> None:
    b = _Batcher(None, "s", "q", max_msgs=1_000, max_bytes=250)
    assert [b.offer(_msg(i, 100)) for i in range(3)] == [True, True, False]
    assert b.offer(_msg(9, 50))  # what still fits is kept
    assert b.pending_bytes == 250 and b.dropped == 1
    b.requeue(_msg(10, 1))  # a retry obeys the same bound
    assert b.dropped == 2 and len(b) == 3


async def test_an_empty_buffer_waits_then_returns_nothing() -> None:
    b = _Batcher(None, "s", "q", max_msgs=1, max_bytes=1)
    assert await b.fetch(10, 0.01) == []
    with pytest.raises(ValueError):
        _Batcher(None, "s", "q", max_msgs=0)


# ------------------------------------------------------------------------------------------------
# compact views and buffered bodies
# ------------------------------------------------------------------------------------------------


def test_priming_never_overwrites_a_view_set_by_a_decision() -> None:
    views, a, b = Views(), uuid.uuid4(), uuid.uuid4()
    views.set(a, View(activated=True, degraded=False, components={"wazuh": "down"}))
    views.prime([(a, View(True, False, {"wazuh": "ok"})), (b, View(True, True, {}))])
    assert views.get(a) == View(True, False, {"wazuh": "down"})  # the transaction's view wins
    assert views.get(b) == View(True, True, {}) and len(views) == 2
    views.update(b, degraded=False)
    assert views.fast_path(b, {})


def test_a_buffered_body_gives_the_health_the_verified_heartbeat_had() -> None:
    hb = ev.AdapterHeartbeat(tenant_id=uuid.UUID(TENANT), adapter_version="2.0", status="degraded",
                             components={"wazuh": ev.ComponentHealth(status="down", message="disk")})
    body = hb.model_dump_json().encode()
    assert domain.health_of(ev.AdapterHeartbeat.model_validate_json(body)) == domain.health_of(hb)


_names = st.text(min_size=1, max_size=64)
_statuses = st.sampled_from(["ok", "degraded", "down", "unknown"])
_components = st.dictionaries(_names, st.builds(ev.ComponentHealth, status=_statuses, message=st.text(max_size=300)),
                              max_size=6)


@settings(max_examples=300, deadline=None)
@given(version=st.text(max_size=64), status=st.sampled_from(["ok", "degraded", "down"]), components=_components,
       omit_messages=st.booleans(), omit_components=st.booleans())
def test_the_flush_reads_the_same_health_from_a_verified_body(version, status, components, omit_messages,
                                                              omit_components) -> None:  # type: ignore[no-untyped-def]
    """``health_of_body`` (stdlib JSON, at flush time) ≡ ``health_of`` of the validated model, also for
    bodies an adapter wrote by hand: keys left out where the model has defaults, odd whitespace."""
    import json

    hb = ev.AdapterHeartbeat(tenant_id=uuid.UUID(TENANT), adapter_version=version, status=status,
                             components=components)
    doc = json.loads(hb.model_dump_json())
    if omit_messages:
        for c in doc["components"].values():
            if c["message"] == "":
                del c["message"]
    if omit_components and not doc["components"]:
        del doc["components"]
    body = json.dumps(doc, indent=1).encode()
    validated = ev.AdapterHeartbeat.model_validate_json(body)
    assert domain.health_of_body(body) == domain.health_of(validated)


@settings(max_examples=300, deadline=None)
@given(token=st.one_of(presented_tokens(), st.text(alphabet="sta_ABCxyz0189-", min_size=75, max_size=85)))
def test_the_cache_key_is_the_parsed_prefix_of_every_well_formed_token(token: str) -> None:
    from soctalk_heartbeat.intake import _lookup_prefix

    try:
        prefix = d.parse_token(token)
    except ValidationFailed:
        return  # a malformed token may or may not pick a row; token_decision refuses it either way
    assert _lookup_prefix(token) == prefix


def test_the_tenant_row_is_due_once_per_interval_from_the_value_last_written() -> None:
    touches = TenantTouches(30.0)
    t = uuid.uuid4()
    assert touches.due(t, NOW)  # never written by this process
    touches.wrote(t, NOW)
    assert not touches.due(t, NOW + timedelta(seconds=29.999))
    assert touches.due(t, NOW + timedelta(seconds=30))
    touches.wrote(t, NOW - timedelta(seconds=5))  # an older write does not move it back
    assert not touches.due(t, NOW + timedelta(seconds=29))
    touches.forget(t)
    assert touches.due(t, NOW + timedelta(seconds=1)) and len(touches) == 0


# ------------------------------------------------------------------------------------------------
# the token cache's freshness rule on the hot path ≡ the rule per entry
# ------------------------------------------------------------------------------------------------

_ago = st.sampled_from([0.0, 1.0, 2.9, 3.0, 3.1, 5.0, 10.0, 100.0])  # seconds before now, edges included


@settings(max_examples=500, deadline=None)
@given(entries=st.lists(st.tuples(_ago, st.booleans(), st.booleans()), max_size=8),
       unknown=st.lists(_ago, max_size=4),
       coverage=st.one_of(st.none(), st.tuples(_ago, _ago)))
def test_ensure_loads_exactly_what_is_not_known_current(entries, unknown, coverage) -> None:  # type: ignore[no-untyped-def]
    """``ensure`` decides per batch with two cut-offs; the reference is ``now - fresh_as_of(coverage,
    loaded) > max_age_s`` per entry (and plain age for what has no row)."""
    import asyncio

    from soctalk_common.notify import fresh_as_of
    from soctalk_heartbeat import tokens as tk

    now = 1000.0
    entries = [(now - ago, has_row, token) for ago, has_row, token in entries]
    unknown = [now - ago for ago in unknown]
    coverage = None if coverage is None else (now - coverage[0], now - coverage[1])

    cache = tk.TokenCache(None, max_age_s=3.0, coverage=lambda: coverage, clock=lambda: now)  # type: ignore[arg-type]
    want_p, want_t = set(), set()
    for i, (loaded, has_row, token) in enumerate(entries):
        key = f"k{i:02d}"
        if token:
            rec = replace(_record, tenant_id=f"t{i:02d}") if has_row else None
            if rec is None:
                cache._unknown[key] = loaded
                stale = now - loaded > 3.0
            else:
                cache._tokens[key] = tk._Entry(rec, loaded, 0.0)
                cache._tenants[rec.tenant_id] = tk._Entry("active", now, 0.0)  # its owner: fresh
                stale = now - fresh_as_of(coverage, loaded) > 3.0
            if stale:
                want_p.add(key)
        else:
            cache._tenants[key] = tk._Entry("active" if has_row else None, loaded, 0.0)
            ref = fresh_as_of(coverage, loaded) if has_row else loaded
            if now - ref > 3.0:
                want_t.add(key)
    for j, seen in enumerate(unknown):
        cache._unknown[f"u{j}"] = seen
        if now - seen > 3.0:
            want_p.add(f"u{j}")
    asked: dict[str, set[str]] = {}

    async def load_tokens(ps: set[str]) -> None:
        asked["p"] = ps

    async def load_tenants(ts: set[str]) -> None:
        asked["t"] = ts

    cache._load_tokens = load_tokens  # type: ignore[method-assign]
    cache._load_tenants = load_tenants  # type: ignore[method-assign]
    prefixes = [k for k in cache._tokens] + list(cache._unknown)
    tenants = [k for k in cache._tenants if k.startswith("k")]
    asyncio.run(cache.ensure(prefixes, tenants))
    assert asked.get("p", set()) == want_p
    assert asked.get("t", set()) == want_t
