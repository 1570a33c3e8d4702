"""Decommission end to end: grace timer (surviving restarts), cancel, uninstall, soft delete, retention,
purge (lifecycle history kept), and the decommissions-per-hour guard. Real NATS + Postgres, fake clock."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from soctalk_common import events as ev
from soctalk_common import timers
from soctalk_common.db import models as m
from soctalk_provisioner.deps import GRACE_TIMER
from sqlalchemy import select

from tests.integration import test_provisioner_harness as harness
from tests.integration.test_provisioner_harness import Provisioner, tenant_config

pytestmark = pytest.mark.integration

prov, idle = harness.prov, harness.idle

HOUR, DAY = 3600, 86400  # small-dev: grace 1 h, retention 7 d


async def _tenant_rows(p: Provisioner, tenant: m.Tenant) -> None:
    async with p.uow() as tx:
        tx.session.add(m.TenantSecret(tenant_id=tenant.id, purpose="wazuh-bootstrap", backend="kubernetes",
                                      namespace=f"tenant-{tenant.slug}", name="wazuh-bootstrap",
                                      key="admin_password", version_label="v1"))
        tx.session.add(m.AdapterToken(prefix=f"p{uuid.uuid4().hex[:8]}", tenant_id=tenant.id,
                                      token_hash="h" * 64, version_label="v1"))
        tx.session.add(m.TenantLease(tenant_id=tenant.id, holder="helm-runner-0", operation="install",
                                     expires_at=p.clock.now()))
        tx.session.add(m.ReleaseOperation(tenant_id=tenant.id, operation="install", release="soctalk-tenant",
                                          namespace=f"tenant-{tenant.slug}", chart_version="v1.1.0",
                                          deadline=p.clock.now(), correlation_id=uuid.uuid4()))
        await tx.commit()


async def test_grace_survives_restarts_then_uninstall_soft_delete_and_purge(prov: Provisioner) -> None:
    tenant = await prov.seed("active", slug="acme")
    await _tenant_rows(prov, tenant)
    request = await prov.publish(ev.TenantDecommissionRequested(tenant_id=tenant.id, reason="contract ended"))
    await prov.wait_state(tenant.id, "decommissioning")
    [started] = await prov.lifecycle(tenant.id, "DecommissionStarted")
    assert (started.state_from, started.details["grace_s"]) == ("active", HOUR)

    await prov.restart()
    await prov.advance(HOUR - 1)
    assert await prov.fire() == 0  # not yet
    await prov.restart()
    await prov.advance(1)
    [due] = await prov.wait_emitted(tenant.id, "DecommissionDue")
    assert isinstance(due, ev.DecommissionDue) and due.slug == "acme"
    assert due.correlation_id == request.correlation_id and due.causation_id == request.event_id

    await prov.publish(ev.ChartRemoved(tenant_id=tenant.id, release="soctalk-tenant",
                                       namespace="tenant-acme"))
    await prov.wait_lifecycle(tenant.id, "ChartRemoved")
    assert await prov.state(tenant.id) == "decommissioning"  # the secrets are not gone yet
    await prov.publish(ev.SecretsRemoved(tenant_id=tenant.id))
    gone = await prov.wait_state(tenant.id, "decommissioned")
    assert gone is not None and gone.deleted_at == prov.clock.now()
    [soft] = await prov.lifecycle(tenant.id, "TenantDecommissioned")
    assert soft.state_from == "decommissioning"

    await prov.restart()
    await prov.advance(7 * DAY)
    await prov.wait_state(tenant.id, None)  # hard deleted
    for model in (m.TenantSecret, m.AdapterToken, m.Timer, m.TenantLease, m.ReleaseOperation):
        assert await prov.count(model, tenant.id) == 0, model.__name__
    history = [r.type for r in await prov.lifecycle(tenant.id)]  # kept for audit
    assert "DecommissionStarted" in history and history[-1] == "TenantPurged"
    [purge] = await prov.emitted(tenant.id, "PurgeDue")
    assert isinstance(purge, ev.PurgeDue) and purge.slug == "acme"

    again = await prov.request(tenant_config("acme"))  # the slug is free again once purged
    await prov.wait_state(again.tenant_id, "pending")


async def test_cancel_during_grace_returns_to_the_state_before(prov: Provisioner) -> None:
    tenant = await prov.seed("suspended")
    await prov.publish(ev.TenantDecommissionRequested(tenant_id=tenant.id, grace_period_s=60))
    await prov.wait_state(tenant.id, "decommissioning")
    async with prov.uow() as tx:
        timer = await timers.pending(tx, tenant.id, GRACE_TIMER)
        assert timer is not None and timer.due_at == prov.clock.now() + timedelta(seconds=60)  # the override
    await prov.publish(ev.TenantDecommissionCancelRequested(tenant_id=tenant.id))
    await prov.wait_state(tenant.id, "suspended")
    [cancelled] = await prov.lifecycle(tenant.id, "DecommissionCancelled")
    assert (cancelled.state_from, cancelled.state_to) == ("decommissioning", "suspended")
    await prov.advance(61)
    assert await prov.fire() == 0
    assert await prov.emitted(tenant.id, "DecommissionDue") == []


async def test_cancel_after_the_grace_period_is_too_late(idle: Provisioner) -> None:
    tenant = await idle.seed("active")
    await idle.handle(ev.TenantDecommissionRequested(tenant_id=tenant.id, grace_period_s=0))
    assert await idle.fire() == 1
    await idle.handle(ev.TenantDecommissionCancelRequested(tenant_id=tenant.id))
    assert await idle.state(tenant.id) == "decommissioning"
    [late] = await idle.lifecycle(tenant.id, "IllegalTransition")
    assert "grace period" in late.message


async def test_a_failed_uninstall_is_retried_by_resending_decommission_due(idle: Provisioner) -> None:
    tenant = await idle.seed("decommissioning", completed=["validate", "secrets", "chart", "activate",
                                                            "decommission_due"])
    await idle.handle(ev.ChartFailed(tenant_id=tenant.id, operation="uninstall", step="uninstall",
                                     reason="another operation is in progress"))
    [failed] = await idle.lifecycle(tenant.id, "StepFailed")
    assert failed.step == "uninstall" and failed.state_to == "decommissioning"
    await idle.advance(10)
    assert await idle.fire() == 1
    [due] = await idle.emitted(tenant.id, "DecommissionDue")
    assert isinstance(due, ev.DecommissionDue)


async def test_the_guard_refuses_more_than_the_hourly_limit_unless_forced(idle: Provisioner) -> None:
    idle.settings = idle.settings.model_copy(update={"decommission_rate_limit_per_hour": 2})
    a, b, c, d = [await idle.seed("active") for _ in range(4)]
    for t in (a, b):
        await idle.handle(ev.TenantDecommissionRequested(tenant_id=t.id))
        assert await idle.state(t.id) == "decommissioning"

    await idle.handle(ev.TenantDecommissionRequested(tenant_id=c.id, reason="bulk cleanup"))
    assert await idle.state(c.id) == "active"
    [refused] = await idle.lifecycle(c.id, "DecommissionRefused")
    assert refused.details["limit_per_hour"] == 2 and "force" in refused.message

    await idle.handle(ev.TenantDecommissionRequested(tenant_id=c.id, force=True))
    assert await idle.state(c.id) == "decommissioning"
    [forced] = await idle.lifecycle(c.id, "DecommissionStarted")
    assert forced.details["forced"] is True

    await idle.advance(HOUR + 1)  # the window moved on
    await idle.handle(ev.TenantDecommissionRequested(tenant_id=d.id))
    assert await idle.state(d.id) == "decommissioning"
    async with idle.uow.sessionmaker() as s:
        refusals = (await s.execute(select(m.TenantLifecycleEvent).where(
            m.TenantLifecycleEvent.type == "DecommissionRefused"))).scalars().all()
    assert len(refusals) == 1
