"""Drift (rendered vs release vs live) after out-of-band edits, optional correction, and a vanished
namespace reported only after the grace period, re-checked under the lease."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from soctalk_common import lease
from soctalk_common.db import models as m
from soctalk_helm_runner import chartsrc
from soctalk_helm_runner.deps import NAMESPACE_TIMER
from soctalk_helm_runner.domain import Applied
from soctalk_helm_runner.records import TenantView
from soctalk_kubesim import SimulatedKubelet
from sqlalchemy import select

from tests.integration import test_helm_runner_harness as h

pytestmark = pytest.mark.integration

kube, kubelet, runner, helm_gateway = h.kube, h.kubelet, h.runner, h.helm_gateway
charts_dir, compat_file = h.charts_dir, h.compat_file

APPLIED = Applied("v1.1.0", False)


async def installed(runner: h.Runner) -> TenantView:
    t = await runner.add_tenant()
    await runner.handle(h.secrets_ready(t))
    (op,) = await runner.settle(t.id)
    assert op.status == "succeeded"
    await runner.set_tenant(t.id, state="active")
    return t


async def due_round(runner: h.Runner) -> int:
    """A drift round once every tenant's interval is up (each is due after its last check or write)."""
    runner.clock.advance(runner.deps.own.drift_interval_s + 1)
    return await runner.monitor.round()


async def edit(runner: h.Runner, t: TenantView, manager: str = "someone-else", **spec: Any) -> None:
    """An out-of-band edit, as `kubectl scale` / `kubectl set image` would make it."""
    await runner.kube.apply({"apiVersion": "apps/v1", "kind": "Deployment",
                             "metadata": {"name": "thehive", "namespace": t.namespace}, "spec": spec},
                            field_manager=manager)


async def edit_image(runner: h.Runner, t: TenantView, image: str, manager: str = "someone-with-images") -> None:
    """`kubectl set image`: the whole container is re-applied with another image (the emulator's
    server-side apply drops sibling fields of a partially applied list item; see the report)."""
    live = await runner.kube.get("apps/v1", "Deployment", "thehive", t.namespace)
    container = next(c for c in live["spec"]["template"]["spec"]["containers"] if c["name"] == "thehive")
    await edit(runner, t, manager, template={"spec": {"containers": [{**container, "image": image}]}})


async def test_a_fresh_release_has_no_drift(runner: h.Runner, kubelet: SimulatedKubelet) -> None:
    t = await installed(runner)
    assert await runner.monitor.check(t, APPLIED) == []
    assert await h.emitted(runner.uow, "DriftDetected", t.id) == []


async def test_out_of_band_edits_are_detected_once_and_resolved(runner: h.Runner,
                                                                kubelet: SimulatedKubelet) -> None:
    t = await installed(runner)
    await edit(runner, t, replicas=3)
    await edit_image(runner, t, "evil.example/thehive:latest")
    assert await due_round(runner) >= 1

    found = {(d.object, d.field): d for d in await h.emitted(runner.uow, "DriftDetected", t.id)}
    replicas = found[("Deployment/thehive", "spec.replicas")]
    assert (replicas.expected, replicas.actual, replicas.source) == ("1", "3", "live")
    image = found[("Deployment/thehive", "spec.template.spec.containers[name=thehive].image")]
    assert image.actual == "evil.example/thehive:latest" and "strangebee/thehive" in image.expected
    assert all(d.source == "live" for d in found.values())  # the release itself still matches the record
    (record,) = [r for r in await h.lifecycle(runner.uow, t.id) if r.type == "DriftDetected"]
    assert record.details["total"] == len(found) and "warn only" in record.message

    await due_round(runner)  # the same drift again: nothing new is announced
    assert len(await h.emitted(runner.uow, "DriftDetected", t.id)) == len(found)
    assert (await runner.kube.get("apps/v1", "Deployment", "thehive", t.namespace))["spec"]["replicas"] == 3

    await edit(runner, t, "someone-tidy", replicas=1)  # someone puts it back
    await edit_image(runner, t, image.expected, "someone-tidy-images")
    await due_round(runner)
    types = [r.type for r in await h.lifecycle(runner.uow, t.id)]
    assert types[-2:] == ["DriftDetected", "DriftResolved"]


async def test_drift_correction_restores_the_release(runner: h.Runner, kubelet: SimulatedKubelet) -> None:
    runner.deps.own = h.own_settings(drift_correct=True)
    t = await installed(runner)
    await edit(runner, t, replicas=4)
    assert [d.field for d in await runner.monitor.check(t, APPLIED)] == ["spec.replicas"]
    assert (await runner.kube.get("apps/v1", "Deployment", "thehive", t.namespace))["spec"]["replicas"] == 1
    assert await runner.monitor.check(t, APPLIED) == []
    types = [r.type for r in await h.lifecycle(runner.uow, t.id)]
    assert types[-3:] == ["DriftDetected", "DriftCorrected", "DriftResolved"]
    assert [r.revision for r in await h.history(runner.deps.helm, t.namespace)] == [1, 2]


async def test_a_changed_record_shows_as_release_drift(runner: h.Runner, kubelet: SimulatedKubelet) -> None:
    t = await installed(runner)
    await runner.set_tenant(t.id, display_name="Renamed Corp")  # the record moved on without a release
    found = await runner.monitor.check(await h_view(runner, t), APPLIED)
    assert found and all(d.source == "release" for d in found)
    (config,) = [d for d in found if d.object == "ConfigMap/soctalk-tenant-config"]
    assert config.field == "data['tenant.json']"
    assert "Renamed Corp" in config.expected and f"{t.slug} Corp" in config.actual  # cut around the change


async def test_drift_is_not_checked_while_an_operation_holds_the_lease(runner: h.Runner,
                                                                       kubelet: SimulatedKubelet) -> None:
    t = await installed(runner)
    await edit(runner, t, replicas=2)
    assert await lease.acquire(runner.uow, t.id, "someone", "upgrade", ttl_s=60, clock=runner.clock)
    assert await runner.monitor.check(t, APPLIED) is None
    await lease.release(runner.uow, t.id, "someone")
    assert [d.field for d in await runner.monitor.check(t, APPLIED)] == ["spec.replicas"]


async def test_vanished_namespace_is_reported_only_after_the_grace_period(runner: h.Runner,
                                                                          kubelet: SimulatedKubelet) -> None:
    t = await installed(runner)
    await runner.kube.delete_namespace(t.namespace, wait=True)
    await due_round(runner)
    assert await h.emitted(runner.uow, "NamespaceMissing", t.id) == []
    assert [r.type for r in await h.lifecycle(runner.uow, t.id)][-1] == "NamespaceVanished"

    runner.clock.advance(runner.deps.own.namespace_grace_s - 1)
    assert await runner.monitor.fire_timers() == 0
    runner.clock.advance(2)
    assert await lease.acquire(runner.uow, t.id, "someone", "install", ttl_s=60, clock=runner.clock)
    assert await runner.monitor.fire_timers() == 1  # due, but an operation runs: looked at again shortly
    assert await h.emitted(runner.uow, "NamespaceMissing", t.id) == []
    await lease.release(runner.uow, t.id, "someone")
    runner.clock.advance(5)
    assert await runner.monitor.fire_timers() == 1
    (missing,) = await h.emitted(runner.uow, "NamespaceMissing", t.id)
    assert missing.namespace == t.namespace

    await due_round(runner)  # reported once: no new timer, no second event
    runner.clock.advance(runner.deps.own.namespace_grace_s + 1)
    await runner.monitor.fire_timers()
    assert len(await h.emitted(runner.uow, "NamespaceMissing", t.id)) == 1


async def test_namespace_back_within_the_grace_period_is_not_reported(runner: h.Runner,
                                                                      kubelet: SimulatedKubelet) -> None:
    t = await installed(runner)
    await runner.kube.delete_namespace(t.namespace, wait=True)
    await due_round(runner)
    await runner.kube.ensure_namespace(t.namespace, {"tenant": "true"})
    await due_round(runner)
    runner.clock.advance(runner.deps.own.namespace_grace_s + 1)
    assert await runner.monitor.fire_timers() == 0
    assert await h.emitted(runner.uow, "NamespaceMissing", t.id) == []
    types = [r.type for r in await h.lifecycle(runner.uow, t.id)]
    assert types[-3:] == ["NamespaceVanished", "NamespaceReturned", "DriftDetected"]  # it came back empty
    async with runner.uow.sessionmaker() as s:
        timers = (await s.execute(select(m.Timer).where(m.Timer.tenant_id == t.id,
                                                        m.Timer.kind == NAMESPACE_TIMER))).scalars().all()
    assert [x.cancelled_at is not None for x in timers] == [True]


async def test_only_live_tenants_with_a_settled_release_are_monitored(runner: h.Runner,
                                                                      kubelet: SimulatedKubelet) -> None:
    t = await installed(runner)
    gone = await installed(runner)
    await runner.set_tenant(gone.id, state="decommissioning")
    never = await runner.add_tenant()  # never installed
    busy = await runner.add_tenant()
    await runner.handle(h.secrets_ready(busy))  # its wait is still open
    from soctalk_helm_runner import records
    ids = {view.id for view, _ in await records.monitored(runner.uow)}
    assert t.id in ids and not {gone.id, never.id, busy.id} & ids


async def test_monitored_ids_pages_through_every_tenant_once(runner: h.Runner) -> None:
    """A drift round reads its tenants a page at a time (keyset on the id): the same tenants, each
    once, in id order, whatever the page size."""
    import uuid
    from datetime import UTC, datetime, timedelta

    from soctalk_helm_runner import records
    tenants = [await runner.add_tenant(state="active") for _ in range(5)]
    now = datetime.now(UTC)
    async with runner.uow.sessionmaker() as s, s.begin():
        s.add_all([m.ReleaseOperation(
            tenant_id=t.id, operation="install", release="soctalk-tenant", namespace=t.namespace,
            chart_version="v1.1.0", revision=1, status="succeeded", deadline=now + timedelta(minutes=15),
            correlation_id=uuid.uuid4(), created_at=now, finished_at=now) for t in tenants])
    whole = [(i, a) async for i, a in records.monitored_ids(runner.uow, page=10_000)]
    for page in (1, 2, 5):
        assert [(i, a) async for i, a in records.monitored_ids(runner.uow, page=page)] == whole
    ids = [i for i, _ in whole]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert {(t.id, APPLIED) for t in tenants} <= set(whole)


async def h_view(runner: h.Runner, t: TenantView) -> TenantView:
    from soctalk_helm_runner import records
    view = await records.tenant_view(runner.uow, t.id)
    assert view is not None
    return view


async def test_each_tenant_is_checked_once_per_interval_after_its_last_write_or_check(
        runner: h.Runner, kubelet: SimulatedKubelet) -> None:
    """The round checks only due tenants: not a release written moments ago, not one checked within the
    interval; a check is recorded durably (drift_checks), so a restarted replica keeps the schedule."""
    t = await installed(runner)
    interval = runner.deps.own.drift_interval_s

    async def checked_at() -> Any:
        async with runner.uow.sessionmaker() as s:
            return (await s.execute(select(m.DriftCheck.checked_at).where(m.DriftCheck.tenant_id == t.id))
                    ).scalar_one_or_none()

    async def due() -> bool:
        from soctalk_helm_runner import records
        before = runner.clock.now() - timedelta(seconds=interval)
        return t.id in {i async for i, _ in records.monitored_ids(runner.uow, due_before=before)}

    assert not await due()  # just written
    await runner.monitor.round()
    assert await checked_at() is None
    runner.clock.advance(interval - 5)
    assert not await due()
    runner.clock.advance(6)
    assert await due()
    await runner.monitor.round()
    first = await checked_at()
    assert first == runner.clock.now()
    assert not await due()  # checked now: not due again until the interval is up
    runner.clock.advance(interval - 1)
    assert not await due()
    runner.clock.advance(2)
    assert await due()

    await edit(runner, t, replicas=2)
    await runner.monitor.round()
    assert [d.field for d in await h.emitted(runner.uow, "DriftDetected", t.id)] == ["spec.replicas"]
    assert await checked_at() == runner.clock.now() > first


async def test_the_drift_tick_defaults_to_a_tenth_of_the_interval() -> None:
    assert h.own_settings(drift_interval_s=300.0).drift_tick() == 30.0
    assert h.own_settings(drift_interval_s=3600.0).drift_tick() == 30.0
    assert h.own_settings(drift_interval_s=10.0).drift_tick() == 1.0
    assert h.own_settings(drift_interval_s=10.0, drift_tick_s=4.0).drift_tick() == 4.0


class CountingRenders(h.Wrapper):
    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.renders = 0

    async def render(self, *args: Any, **kwargs: Any) -> str:
        self.renders += 1
        return await self.inner.render(*args, **kwargs)


async def test_a_release_written_from_the_records_inputs_is_not_re_rendered(runner: h.Runner,
                                                                            kubelet: SimulatedKubelet) -> None:
    """Same chart version, same values as the record renders now: no Helm render; the live objects are
    still compared. A hand-run ``helm upgrade`` with other values is re-rendered and reported."""
    t = await installed(runner)
    counting = CountingRenders(runner.deps.helm)
    runner.deps.helm = counting
    assert await runner.monitor.check(t, APPLIED) == []
    assert counting.renders == 0
    await edit(runner, t, replicas=2)
    assert [d.field for d in await runner.monitor.check(t, APPLIED)] == ["spec.replicas"]
    assert counting.renders == 0

    await edit(runner, t, "someone-tidy", replicas=1)
    values = await runner.deps.helm.values(h.RELEASE, t.namespace)
    values["tenant"]["displayName"] = "Edited by hand"
    chart = chartsrc.locate(runner.deps.settings.charts_dir, "v1.1.0")
    await runner.deps.helm.upgrade(h.RELEASE, str(chart.path), t.namespace, values)  # someone ran helm
    found = await runner.monitor.check(t, APPLIED)
    assert counting.renders == 1
    assert found and {d.source for d in found} >= {"release"}
    assert any("Edited by hand" in (d.actual or "") for d in found if d.source == "release")
