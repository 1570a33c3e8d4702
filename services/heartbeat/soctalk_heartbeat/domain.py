"""Pure rules of the heartbeat service: who may heartbeat, when a tenant activates, when it is silent.

No I/O here; every function is table-tested in ``tests/unit/test_heartbeat_domain.py``.

* :func:`judge` says accept or refuse for one presented token. It is the secrets service's
  :func:`~soctalk_secrets.domain.token_decision` (prefix → keyed hash → constant-time compare →
  tenant binding → revoked → expired → tenant state) plus two reasons it cannot see: no token at all
  (``missing_token``) and a tenant row that does not exist (``unknown_tenant``).
* :func:`on_heartbeat` / :func:`on_chart_applied` decide activation, recovery and component changes
  from a snapshot of the tenant's durable heartbeat state. The caller claims each decision with a
  conditional UPDATE, so a decision taken on two replicas still has one effect.
* :func:`silence_cutoff` is the liveness rule: no valid heartbeat for N intervals → degraded.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from soctalk_common import events as ev
from soctalk_secrets.domain import Accept, AdapterTokenRecord, Refuse, token_decision

#: Why a heartbeat was not taken. Token reasons come from ``token_decision``; the rest are ours.
RefusalReason = Literal[
    "missing_token", "malformed", "unknown_prefix", "bad_secret", "wrong_tenant", "revoked", "expired",
    "tenant_inactive", "unknown_tenant", "invalid_payload", "too_large",
]
REFUSAL_REASONS: tuple[str, ...] = RefusalReason.__args__  # type: ignore[attr-defined]

#: Refusals that mean "no valid credential" (HTTP 401); the others mean "valid credential, not allowed
#: for this tenant or not now" (403), or a bad body from an authenticated adapter (400/413).
_UNAUTHENTICATED = frozenset(
    {"missing_token", "malformed", "unknown_prefix", "bad_secret", "revoked", "expired"}
)
_FORBIDDEN = frozenset({"wrong_tenant", "tenant_inactive", "unknown_tenant"})

#: Component statuses that are carried into the lifecycle stream when a component enters them.
BAD_STATUSES = frozenset({"degraded", "down"})

#: Tenant states in which silence makes a tenant degraded. Suspended / upgrading / decommissioning
#: tenants are expected to be quiet or restarting; their liveness is someone else's step.
LIVENESS_STATES = frozenset({"active"})

MAX_BODY_BYTES = 64 * 1024  # a heartbeat is a few hundred bytes; 32 components × 300 chars fits


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, or None."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def judge(
    record: AdapterTokenRecord | None,
    subject_tenant_id: str,
    now: datetime,
    *,
    presented: str | None,
    key: bytes,
    tenant_known: bool,
    tenant_state: str | None,
) -> Accept | Refuse | RefusalReason:
    """Accept, or the refusal reason, for a token presented on a message about ``subject_tenant_id``.

    Returns the secrets domain's ``Accept`` on success, otherwise a reason string (never the token).
    """
    if presented is None:
        return "missing_token"
    decision = token_decision(record, subject_tenant_id, now, presented=presented, key=key,
                              tenant_state=tenant_state)
    if isinstance(decision, Accept):
        return decision
    if decision.reason == "tenant_inactive" and not tenant_known:
        return "unknown_tenant"
    return decision.reason


def http_status(reason: str) -> int:
    if reason in _UNAUTHENTICATED:
        return 401
    if reason in _FORBIDDEN:
        return 403
    if reason == "too_large":
        return 413
    return 400


def subject_tenant(subject: str) -> str | None:
    """``soctalk.adapter.<tenant_id>.heartbeat`` → ``<tenant_id>`` (None when the shape is wrong)."""
    parts = subject.split(".")
    if len(parts) != 4 or parts[0] != "soctalk" or parts[1] != "adapter" or parts[3] != "heartbeat":
        return None
    return parts[2]


def canonical_tenant(value: str) -> str | None:
    try:
        return str(uuid.UUID(value))
    except (ValueError, TypeError, AttributeError):
        return None


# ------------------------------------------------------------------------------------------------
# Health
# ------------------------------------------------------------------------------------------------


def health_of(hb: ev.AdapterHeartbeat) -> dict[str, Any]:
    """What we keep of a heartbeat: version, overall status, per-component status (JSON-ready)."""
    return {
        "adapter_version": hb.adapter_version,
        "status": hb.status,
        "components": {name: {"status": c.status, "message": c.message} for name, c in hb.components.items()},
    }


def health_of_body(body: bytes) -> dict[str, Any]:
    """``health_of`` of a body that already passed ``AdapterHeartbeat`` validation, read with the
    stdlib JSON parser: the flush needs these three fields of every buffered heartbeat, and a second
    full model validation cost about three times as much. Equal to ``health_of(parse(body))`` for
    every valid body (the model coerces none of these fields; a property test holds it to that)."""
    doc = json.loads(body)
    comps = doc.get("components") or {}
    return {
        "adapter_version": doc["adapter_version"],
        "status": doc["status"],
        "components": {name: {"status": c["status"], "message": c.get("message", "")} for name, c in comps.items()},
    }


def component_statuses(health: Mapping[str, Any] | None) -> dict[str, str]:
    comps = (health or {}).get("components") or {}
    return {str(k): str((v or {}).get("status", "unknown")) for k, v in comps.items()}


@dataclass(frozen=True)
class ComponentChange:
    """A component entered degraded/down (``ComponentDegraded``) or is ok again (``ComponentRecovered``)."""

    component: str
    before: str | None
    after: str
    message: str

    @property
    def lifecycle_type(self) -> str:
        return "ComponentDegraded" if self.after in BAD_STATUSES else "ComponentRecovered"


def component_changes(before: Mapping[str, str] | None, after: Mapping[str, Any]) -> list[ComponentChange]:
    """Transitions worth a lifecycle event, in component-name order.

    ``before`` is ``{component: status}`` as last recorded; ``after`` a health dict (:func:`health_of`).
    Reported: a component whose status changes *to* degraded/down (including degraded → down), and one
    that goes from degraded/down back to ok. Unchanged statuses, new healthy components and components
    that stop being reported are not events — so a steady degraded component is reported once.
    """
    old = dict(before or {})
    comps = after.get("components") or {}
    out: list[ComponentChange] = []
    for name in sorted(comps):
        status = str(comps[name].get("status"))
        prev = old.get(name)
        if status == prev:
            continue
        if status in BAD_STATUSES or (prev in BAD_STATUSES and status == "ok"):
            out.append(ComponentChange(name, prev, status, str(comps[name].get("message", ""))))
    return out


# ------------------------------------------------------------------------------------------------
# Activation, recovery, liveness
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """The durable heartbeat facts of one tenant (a ``heartbeat_state`` row; all empty when absent)."""

    chart_applied: bool = False
    activated: bool = False
    degraded: bool = False
    last_seen: datetime | None = None
    components: Mapping[str, str] | None = None  # {component: status}, the baseline for changes


@dataclass(frozen=True)
class HeartbeatOutcome:
    activate: bool
    recover: bool
    changes: tuple[ComponentChange, ...]


def on_heartbeat(snap: Snapshot, health: Mapping[str, Any]) -> HeartbeatOutcome:
    """What one valid heartbeat changes.

    * activate: the chart is applied and the tenant was never activated (the heartbeat may come first;
      then :func:`on_chart_applied` activates instead).
    * recover: the tenant was marked degraded for silence.
    * component changes: only once activated — components flapping while the stack boots are not news.
    """
    activate = snap.chart_applied and not snap.activated
    recover = snap.activated and snap.degraded
    changes = tuple(component_changes(snap.components, health)) if snap.activated else ()
    return HeartbeatOutcome(activate=activate, recover=recover, changes=changes)


def on_chart_applied(snap: Snapshot, now: datetime, window: timedelta) -> bool:
    """Activate on ChartApplied when a valid heartbeat already arrived and the adapter is not silent.

    A heartbeat seen longer ago than the liveness window does not count: the next one activates.
    """
    if snap.activated or snap.last_seen is None:
        return False
    return snap.last_seen >= now - window


def liveness_window(interval_s: float, missed_intervals: int) -> timedelta:
    return timedelta(seconds=interval_s * missed_intervals)


def silence_cutoff(now: datetime, interval_s: float, missed_intervals: int) -> datetime:
    """Tenants whose last valid heartbeat is older than this are silent."""
    return now - liveness_window(interval_s, missed_intervals)


def silence_reason(last_seen: datetime | None, now: datetime, interval_s: float, missed: int) -> str:
    if last_seen is None:
        return f"no adapter heartbeat for {missed} intervals of {interval_s:g}s"
    silent = (now - last_seen).total_seconds()
    return f"no adapter heartbeat for {silent:.0f}s ({missed} intervals of {interval_s:g}s missed)"


def is_stale(age_s: float, interval_s: float, missed_intervals: int) -> bool:
    """A heartbeat that waited in the stream longer than the liveness window proves nothing about now."""
    return age_s > interval_s * missed_intervals
