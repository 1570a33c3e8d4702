"""Heartbeat service rules, table-tested without I/O."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from soctalk_common import events as ev
from soctalk_heartbeat import domain
from soctalk_heartbeat.domain import Snapshot
from soctalk_heartbeat.memory import LastSeenBuffer, Pending, View, Views
from soctalk_secrets.domain import Accept, new_token_record

pytestmark = pytest.mark.unit

KEY = b"k" * 32
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
TENANT = str(uuid.uuid4())
OTHER = str(uuid.uuid4())


def _token(tenant: str = TENANT, **changes):  # type: ignore[no-untyped-def]
    token, record = new_token_record(tenant, KEY, NOW - timedelta(days=1))
    return token, replace(record, **changes)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("valid", "accept"),
        ("missing", "missing_token"),
        ("malformed", "malformed"),
        ("unknown_prefix", "unknown_prefix"),
        ("forged_secret", "bad_secret"),
        ("cross_tenant", "wrong_tenant"),
        ("revoked", "revoked"),
        ("revoked_later", "accept"),
        ("expired", "expired"),
        ("in_overlap_window", "accept"),
        ("decommissioned", "tenant_inactive"),
        ("purged", "tenant_inactive"),
        ("suspended", "tenant_inactive"),
        ("unknown_tenant", "unknown_tenant"),
    ],
)
def test_judge(case: str, expected: str) -> None:
    token, record = _token()
    presented: str | None = token
    subject, known, state = TENANT, True, "active"
    rec = record
    if case == "missing":
        presented = None
    elif case == "malformed":
        presented = "Bearer nonsense"
    elif case == "unknown_prefix":
        rec = None
    elif case == "forged_secret":
        presented = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    elif case == "cross_tenant":
        subject = OTHER
    elif case == "revoked":
        rec = replace(record, revoked_at=NOW - timedelta(seconds=1))
    elif case == "revoked_later":
        rec = replace(record, revoked_at=NOW + timedelta(seconds=1))
    elif case == "expired":
        rec = replace(record, expires_at=NOW)
    elif case == "in_overlap_window":
        rec = replace(record, expires_at=NOW + timedelta(minutes=5))
    elif case in ("decommissioned", "purged", "suspended"):
        state = case
    elif case == "unknown_tenant":
        known, state = False, None
    got = domain.judge(rec, subject, NOW, presented=presented, key=KEY, tenant_known=known, tenant_state=state)
    if expected == "accept":
        assert isinstance(got, Accept) and got.tenant_id == TENANT
    else:
        assert got == expected
        assert token not in str(got)


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer sta_abc", "sta_abc"),
        ("bearer   sta_abc  ", "sta_abc"),
        ("Basic dXNlcjpwdw==", None),
        ("Bearer", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert domain.bearer_token(header) == token


@pytest.mark.parametrize(
    ("reason", "status"),
    [("missing_token", 401), ("malformed", 401), ("unknown_prefix", 401), ("bad_secret", 401), ("revoked", 401),
     ("expired", 401), ("wrong_tenant", 403), ("tenant_inactive", 403), ("unknown_tenant", 403),
     ("invalid_payload", 400), ("too_large", 413)],
)
def test_http_status(reason: str, status: int) -> None:
    assert reason in domain.REFUSAL_REASONS
    assert domain.http_status(reason) == status


@pytest.mark.parametrize(
    ("subject", "tenant"),
    [(f"soctalk.adapter.{TENANT}.heartbeat", TENANT), ("soctalk.adapter.x.y.heartbeat", None),
     (f"soctalk.tenant.{TENANT}.heartbeat", None), ("soctalk.adapter..heartbeat", "")],
)
def test_subject_tenant(subject: str, tenant: str | None) -> None:
    assert domain.subject_tenant(subject) == tenant


def _health(**statuses: str) -> dict:
    return {"adapter_version": "1", "status": "ok",
            "components": {k: {"status": v, "message": f"{k} is {v}"} for k, v in statuses.items()}}


@pytest.mark.parametrize(
    ("before", "after", "events"),
    [
        ({"wazuh": "ok"}, {"wazuh": "ok"}, []),
        ({"wazuh": "ok"}, {"wazuh": "degraded"}, [("wazuh", "ok", "degraded", "ComponentDegraded")]),
        ({"wazuh": "degraded"}, {"wazuh": "degraded"}, []),  # a steady problem is reported once
        ({"wazuh": "degraded"}, {"wazuh": "down"}, [("wazuh", "degraded", "down", "ComponentDegraded")]),
        ({"wazuh": "down"}, {"wazuh": "ok"}, [("wazuh", "down", "ok", "ComponentRecovered")]),
        ({"wazuh": "unknown"}, {"wazuh": "ok"}, []),
        ({"wazuh": "ok"}, {"wazuh": "unknown"}, []),
        (None, {"cortex": "down", "wazuh": "ok"}, [("cortex", None, "down", "ComponentDegraded")]),
        ({"wazuh": "ok", "thehive": "ok"}, {"thehive": "down", "wazuh": "degraded"},
         [("thehive", "ok", "down", "ComponentDegraded"), ("wazuh", "ok", "degraded", "ComponentDegraded")]),
        ({"wazuh": "down"}, {}, []),  # no longer reported: not an event
    ],
)
def test_component_changes(before: dict | None, after: dict, events: list) -> None:
    got = domain.component_changes(before, _health(**after))
    assert [(c.component, c.before, c.after, c.lifecycle_type) for c in got] == events
    for c in got:
        assert c.message == f"{c.component} is {c.after}"


@pytest.mark.parametrize(
    ("snap", "activate", "recover", "changes"),
    [
        (Snapshot(), False, False, 0),  # heartbeat before ChartApplied: remembered, no activation
        (Snapshot(chart_applied=True), True, False, 0),
        (Snapshot(chart_applied=True, activated=True), False, False, 1),
        (Snapshot(chart_applied=True, activated=True, degraded=True), False, True, 1),
        (Snapshot(chart_applied=True, activated=True, components={"wazuh": "down"}), False, False, 0),
    ],
)
def test_on_heartbeat(snap: Snapshot, activate: bool, recover: bool, changes: int) -> None:
    out = domain.on_heartbeat(snap, _health(wazuh="down"))
    assert (out.activate, out.recover, len(out.changes)) == (activate, recover, changes)


@pytest.mark.parametrize(
    ("snap", "expected"),
    [
        (Snapshot(chart_applied=True), False),  # no heartbeat yet: the first one activates
        (Snapshot(chart_applied=True, last_seen=NOW - timedelta(seconds=10)), True),
        (Snapshot(chart_applied=True, last_seen=NOW - timedelta(seconds=90)), True),
        (Snapshot(chart_applied=True, last_seen=NOW - timedelta(seconds=91)), False),  # adapter went quiet
        (Snapshot(chart_applied=True, activated=True, last_seen=NOW), False),
    ],
)
def test_on_chart_applied(snap: Snapshot, expected: bool) -> None:
    assert domain.on_chart_applied(snap, NOW, domain.liveness_window(30, 3)) is expected


def test_silence_rule() -> None:
    assert domain.silence_cutoff(NOW, 30, 3) == NOW - timedelta(seconds=90)
    assert domain.is_stale(90.5, 30, 3) and not domain.is_stale(89, 30, 3)
    reason = domain.silence_reason(NOW - timedelta(seconds=95), NOW, 30, 3)
    assert "95s" in reason and "3 intervals of 30s" in reason
    assert "3 intervals" in domain.silence_reason(None, NOW, 30, 3)


def test_health_of_keeps_version_status_and_components() -> None:
    hb = ev.AdapterHeartbeat(tenant_id=uuid.UUID(TENANT), adapter_version="2.1.0", status="degraded",
                             components={"wazuh": ev.ComponentHealth(status="degraded", message="disk 91%")})
    assert domain.health_of(hb) == {"adapter_version": "2.1.0", "status": "degraded",
                                    "components": {"wazuh": {"status": "degraded", "message": "disk 91%"}}}
    assert domain.component_statuses(domain.health_of(hb)) == {"wazuh": "degraded"}


def test_views_take_the_fast_path_only_when_nothing_can_change() -> None:
    views, t = Views(), uuid.uuid4()
    assert not views.fast_path(t, {"wazuh": "ok"})
    views.set(t, View(activated=True, degraded=False, components={"wazuh": "ok"}))
    assert views.fast_path(t, {"wazuh": "ok"})
    assert not views.fast_path(t, {"wazuh": "down"})
    views.update(t, degraded=True)
    assert not views.fast_path(t, {"wazuh": "ok"})
    views.set(t, View(activated=False, degraded=False, components={"wazuh": "ok"}))
    assert not views.fast_path(t, {"wazuh": "ok"})


def test_buffer_keeps_the_newest_per_tenant_and_restores_without_overwriting() -> None:
    buf, t = LastSeenBuffer(), uuid.uuid4()
    body = ev.AdapterHeartbeat(tenant_id=t, adapter_version="1", status="ok").model_dump_json().encode()
    old, new = Pending(NOW, body), Pending(NOW + timedelta(seconds=30), body)
    buf.put(t, new)
    buf.put(t, old)
    taken = buf.take()
    assert taken[t] is new and len(buf) == 0
    newer = Pending(NOW + timedelta(seconds=60), body)
    buf.put(t, newer)
    buf.restore(taken)
    assert buf.take()[t] is newer
