"""Every state change of DESIGN §3 through the provisioner's real handlers on Postgres, and what an
illegal one does (an ``IllegalTransition`` lifecycle event, the tenant untouched)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from soctalk_common import events as ev
from soctalk_common.db import models as m
from soctalk_common.errors import TemporaryError
from sqlalchemy import select

from tests.integration import test_provisioner_harness as harness
from tests.integration.test_provisioner_harness import Provisioner, secret_refs

pytestmark = pytest.mark.integration

idle = harness.idle

ONBOARD = ["validate"]
SECRETS_DONE = ["validate", "secrets"]
CHART_DONE = ["validate", "secrets", "chart"]
LIVE_DONE = ["validate", "secrets", "chart", "activate"]
UPGRADING = {"chart_version": "v1.0.1", "target_chart_version": "v1.1.0"}

Make = Callable[[m.Tenant], ev.Event]


def applied(op: str, version: str = "v1.1.0") -> Make:
    return lambda t: ev.ChartApplied(tenant_id=t.id, operation=op, release="soctalk-tenant",  # type: ignore[arg-type]
                                     namespace=f"tenant-{t.slug}", revision=4, chart_version=version)


def failed(op: str, **kw: Any) -> Make:
    return lambda t: ev.ChartFailed(tenant_id=t.id, operation=op, step="helm", reason="boom",  # type: ignore[arg-type]
                                    **kw)


# (case, from state, completed steps, seeded fields, the event, expected state, an emitted event type or None)
EDGES: list[tuple[str, str, list[str], dict[str, Any], Make, str, str | None]] = [
    ("pending→provisioning", "pending", ONBOARD, {},
     lambda t: ev.SecretsReady(tenant_id=t.id, namespace=f"tenant-{t.slug}", references=secret_refs(t.slug)),
     "provisioning", None),
    ("chart installed", "provisioning", SECRETS_DONE, {}, applied("install"), "provisioning", None),
    ("provisioning→active", "provisioning", CHART_DONE, {},
     lambda t: ev.TenantActivated(tenant_id=t.id, adapter_version="1.0.0"), "active", None),
    ("active→degraded", "active", LIVE_DONE, {},
     lambda t: ev.TenantDegraded(tenant_id=t.id, reason="wazuh down", last_health={"wazuh": "down"}),
     "degraded", None),
    ("degraded→active", "degraded", LIVE_DONE, {}, lambda t: ev.TenantRecovered(tenant_id=t.id), "active",
     None),
    ("active→upgrading", "active", LIVE_DONE, {"chart_version": "v1.0.1"},
     lambda t: ev.TenantUpgradeRequested(tenant_id=t.id, target_chart_version="v1.1.0"), "upgrading",
     "UpgradeApproved"),
    ("upgrading→active", "upgrading", LIVE_DONE, UPGRADING,
     applied("upgrade"), "active", None),
    ("upgrading→degraded", "upgrading", LIVE_DONE, UPGRADING,
     failed("upgrade", rolled_back_to=3), "degraded", None),
    ("suspend approved", "active", LIVE_DONE, {}, lambda t: ev.TenantSuspendRequested(tenant_id=t.id),
     "active", "SuspendApproved"),
    ("active→suspended", "active", LIVE_DONE, {}, applied("suspend"), "suspended", None),
    ("degraded→suspended", "degraded", LIVE_DONE, {}, applied("suspend"), "suspended", None),
    ("resume approved", "suspended", LIVE_DONE, {}, lambda t: ev.TenantResumeRequested(tenant_id=t.id),
     "suspended", "ResumeApproved"),
    ("suspended→active", "suspended", LIVE_DONE, {}, applied("resume"), "active", None),
    *[(f"{s}→decommissioning", s, LIVE_DONE, {}, lambda t: ev.TenantDecommissionRequested(tenant_id=t.id),
       "decommissioning", None)
      for s in ("pending", "provisioning", "active", "degraded", "upgrading", "suspended", "failed")],
    ("pending→failed", "pending", ONBOARD, {"attempts": 2},
     lambda t: ev.SecretsFailed(tenant_id=t.id, step="namespace", reason="forbidden"), "failed", None),
    ("provisioning→failed", "provisioning", SECRETS_DONE, {"attempts": 2}, failed("install"), "failed", None),
    ("failed→pending", "failed", ONBOARD, {"attempts": 3, "failed_step": "secrets"},
     lambda t: ev.TenantRetryRequested(tenant_id=t.id), "pending", "TenantAccepted"),
    ("active, namespace deleted", "active", LIVE_DONE, {},
     lambda t: ev.NamespaceMissing(tenant_id=t.id, namespace=f"tenant-{t.slug}"), "degraded", None),
]


async def test_each_state_change_of_the_design(idle: Provisioner) -> None:
    """One tenant per edge, all in one database (a database per edge would cost more than the edges)."""
    for case, start, completed, fields, make, expected, emits in EDGES:
        tenant = await idle.seed(start, completed=completed, **fields)
        event = make(tenant)
        await idle.handle(event)
        assert await idle.state(tenant.id) == expected, case
        rows = [r for r in await idle.lifecycle(tenant.id) if r.type != "CompatibilityWarning"]
        assert (rows[-1].state_from, rows[-1].state_to) == (start, expected), case
        assert rows[-1].causation_id == event.event_id, case
        assert not [r for r in rows if r.type == "IllegalTransition"], case
        if emits:
            [out] = await idle.emitted(tenant.id, emits)
            assert out.causation_id == event.event_id, case


async def test_step_results_update_the_record(idle: Provisioner) -> None:
    t = await idle.seed("upgrading", chart_version="v1.0.1", target_chart_version="v1.1.0")
    await idle.handle(applied("upgrade")(t))
    after = await idle.tenant(t.id)
    assert after is not None
    assert (after.chart_version, after.target_chart_version, after.release_revision) == ("v1.1.0", None, 4)

    t = await idle.seed("upgrading", release_revision=3, **UPGRADING)
    await idle.handle(failed("upgrade", rolled_back_to=3)(t))
    after = await idle.tenant(t.id)
    assert after is not None and after.chart_version == "v1.0.1" and after.target_chart_version is None
    assert "rolled back to revision 3" in (after.last_error or "")

    t = await idle.seed("provisioning", completed=SECRETS_DONE, attempts=1, last_error="x")
    await idle.handle(applied("install")(t))
    after = await idle.tenant(t.id)
    assert after is not None and after.completed_steps == CHART_DONE and after.attempts == 0


async def test_an_illegal_transition_is_an_error_event_never_an_overwrite(idle: Provisioner) -> None:
    tenant = await idle.seed("suspended")
    event = ev.TenantActivated(tenant_id=tenant.id, adapter_version="1.0.0")
    await idle.handle(event)
    assert await idle.state(tenant.id) == "suspended"
    [illegal] = await idle.lifecycle(tenant.id, "IllegalTransition")
    assert illegal.state_from == "suspended" and illegal.state_to is None
    assert illegal.details["trigger"] == "activated" and illegal.details["event_type"] == "TenantActivated"
    assert illegal.causation_id == event.event_id
    async with idle.uow.sessionmaker() as s:  # acknowledged: its inbox row is there, nothing else happened
        inbox = await s.execute(select(m.Inbox).where(m.Inbox.event_id == event.event_id))
        assert inbox.first() is not None


async def test_a_command_in_the_wrong_state_is_refused_with_a_reason(idle: Provisioner) -> None:
    tenant = await idle.seed("suspended")
    await idle.handle(ev.TenantUpgradeRequested(tenant_id=tenant.id, target_chart_version="v1.1.0"))
    [rejected] = await idle.emitted(tenant.id, "UpgradeRejected")
    assert isinstance(rejected, ev.UpgradeRejected) and "suspended" in rejected.reason
    await idle.handle(ev.TenantResumeRequested(tenant_id=(active := await idle.seed("active")).id))
    assert await idle.emitted(active.id, "ResumeApproved") == []
    assert len(await idle.lifecycle(active.id, "IllegalTransition")) == 1


async def test_upgrade_gate_blocked_and_deprecated(idle: Provisioner) -> None:
    blocked = await idle.seed("active")
    await idle.handle(ev.TenantUpgradeRequested(tenant_id=blocked.id, target_chart_version="v2.0.0"))
    [rej] = await idle.emitted(blocked.id, "UpgradeRejected")
    assert isinstance(rej, ev.UpgradeRejected) and rej.verdict == "blocked"
    assert await idle.state(blocked.id) == "active"

    old = await idle.seed("active", chart_version="v1.0.1")
    # a downgrade, written without the "v": the gate normalises
    await idle.handle(ev.TenantUpgradeRequested(tenant_id=old.id, target_chart_version="1.0.0"))
    [ok] = await idle.emitted(old.id, "UpgradeApproved")
    assert isinstance(ok, ev.UpgradeApproved)
    assert (ok.from_version, ok.to_version, ok.verdict) == ("v1.0.1", "v1.0.0", "deprecated")
    [warn] = await idle.lifecycle(old.id, "CompatibilityWarning")
    assert "FQDN egress" in warn.message
    assert await idle.state(old.id) == "upgrading"


async def test_a_result_ahead_of_its_step_is_retried_not_refused(idle: Provisioner) -> None:
    tenant = await idle.seed("pending", completed=ONBOARD)
    early = applied("install")(tenant)  # the helm-runner was faster than our SecretsReady consumer
    with pytest.raises(TemporaryError):
        await idle.handle(early)
    assert await idle.lifecycle(tenant.id, "IllegalTransition") == []
    await idle.handle(ev.SecretsReady(tenant_id=tenant.id, namespace="tenant-x", references=secret_refs()))
    await idle.handle(early)  # redelivered
    after = await idle.tenant(tenant.id)
    assert after is not None and after.state == "provisioning" and after.completed_steps == CHART_DONE


async def test_an_event_for_an_unknown_tenant_is_permanent(idle: Provisioner) -> None:
    from soctalk_common.errors import PermanentError

    with pytest.raises(PermanentError):
        await idle.handle(ev.TenantRecovered(tenant_id=uuid.uuid4()))
