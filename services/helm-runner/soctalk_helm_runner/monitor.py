"""Drift and vanished namespaces of live tenants (each checked every ``drift_interval_s``).

Each tenant keeps its own schedule, as Flux keeps one per HelmRelease: it is due ``drift_interval_s``
after its last drift check (``drift_checks``) or its last successful write, whichever is later, and a
round (every ``drift_tick_s``) checks only the tenants that are due. So onboarding a thousand tenants
does not re-check releases applied seconds ago, the checks of a fleet spread out as its writes did,
and the schedule survives restarts and is shared by replicas. A tenant whose namespace is gone is not
marked checked: it is looked at every round until the namespace is back or reported missing.

For each live tenant with no operation in flight (state provisioning/active/degraded/suspended and a
succeeded install):

* **Namespace gone** → a durable ``helm-ns-missing`` timer is armed (lifecycle ``NamespaceVanished``).
  When it fires after ``namespace_grace_s`` the namespace is checked again *under the tenant lease*
  (so an operation that deletes and recreates it is never mistaken for a loss); still gone →
  ``NamespaceMissing`` (the provisioner degrades the tenant). Reported once until the tenant is
  ready again; a namespace that comes back cancels the timer.
* **Round trip** (under the lease, skipped when it is taken): the values rendered from the tenant
  record vs the release manifest (``source="release"``), and the manifest vs the live objects
  (``source="live"``). Each difference not announced before becomes a ``DriftDetected`` event naming
  object and field; the lifecycle keeps the whole current list (``DriftDetected``) and notes when it
  clears (``DriftResolved``). Warn-only unless ``drift_correct``: then a ``helm upgrade`` with the
  rendered values restores the release (``DriftCorrected``).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import structlog
from soctalk_common import events as ev
from soctalk_common import timers
from soctalk_common.db import models as m
from soctalk_common.errors import NotFound
from soctalk_common.uow import UnitOfWork

from soctalk_helm_runner import chartsrc, domain, drift, leasing, records
from soctalk_helm_runner.deps import NAMESPACE_TIMER, Deps
from soctalk_helm_runner.domain import RELEASE, Applied, DriftKey
from soctalk_helm_runner.drift import Drift
from soctalk_helm_runner.records import TenantView
from soctalk_helm_runner.values import render_values

log = structlog.get_logger(__name__)


def _origin(tenant_id: uuid.UUID, kind: str) -> ev.Event:
    """A fresh envelope for records that no message caused (a periodic check)."""
    return ev.TenantLifecycleEvent(type=kind, tenant_id=tenant_id)


class Monitor:
    def __init__(self, deps: Deps) -> None:
        self.d = deps

    async def round(self) -> int:
        """Check every monitored tenant that is due; returns how many were checked."""
        checked = 0
        due_before = self.d.clock.now() - timedelta(seconds=self.d.own.drift_interval_s)
        async for tenant_id, applied in records.monitored_ids(self.d.uow, due_before=due_before):
            tenant = await records.tenant_view(self.d.uow, tenant_id)  # one at a time, not all at once
            if tenant is None or tenant.state not in records.LIVE or tenant.deleted:
                continue
            try:
                await self.check(tenant, applied)
                checked += 1
            except Exception as exc:  # noqa: BLE001 - one tenant must not stop the round
                log.warning("drift.check_failed", slug=tenant.slug, error=type(exc).__name__,
                            detail=str(exc)[:300])
        return checked

    async def check(self, tenant: TenantView, applied: Applied) -> list[Drift] | None:
        """One tenant: the namespace, then the round trip. None when skipped (lease taken, ns gone)."""
        d = self.d
        if not await d.kube.namespace_exists(tenant.namespace):
            await self._namespace_vanished(tenant)
            return None
        await self._namespace_present(tenant)
        async with leasing.trying(d.uow, tenant.id, f"{d.holder}:drift", "drift-check",
                                  ttl_s=d.settings.lease_ttl_s, clock=d.clock) as got:
            if not got:
                return None
            found = await self.drifts(tenant, applied)
            corrected = await self._correct(tenant, applied, found) if found and d.own.drift_correct else None
        await self._record(tenant, found, corrected)
        return found

    # --- the round trip -------------------------------------------------------------------------

    async def drifts(self, tenant: TenantView, applied: Applied) -> list[Drift]:
        d, ns = self.d, tenant.namespace
        stored = await d.helm.stored(RELEASE, ns)  # one read of the release record, no cluster lookups
        if stored is None:
            return [Drift(f"Release/{RELEASE}", drift.OBJECT, "deployed", drift.MISSING, "release")]
        info, stored_values = stored
        manifest = drift.parse_manifest(info.manifest)
        found: list[Drift] = []
        try:
            chart = chartsrc.locate(d.settings.charts_dir, applied.chart_version)
            refs = await records.secret_refs(d.uow, tenant.id)
            values = await asyncio.to_thread(render_values, tenant, refs, d.settings,
                                             suspended=applied.suspended, features=await d.cluster_features())
            # The same chart version with the same values renders the same manifest (the charts use
            # no lookup/random/time functions): only a release written from other inputs (a changed
            # record, a hand-run helm) is re-rendered and compared. Saves a render (~45 ms of Go) per
            # check of the usual, unchanged tenant.
            if not drift.same_inputs(info.chart_version, stored_values, chart.version, values):
                rendered = await d.helm.render(str(chart.path), values, release=RELEASE, namespace=ns)
                found += drift.compare_manifests(drift.parse_manifest(rendered), manifest)
        except chartsrc.UnknownChartVersion as exc:
            log.warning("drift.no_chart", slug=tenant.slug, detail=str(exc))
        live = await self._live(manifest, ns)
        for obj, current in zip(manifest, live, strict=True):
            found += drift.compare_live(obj, current)
        return found

    async def _live(self, manifest: list[dict], ns: str) -> list[dict | None]:
        """The live object of each manifest entry (None: gone), one list per kind and namespace rather
        than one GET per object (a tenant release has ~30 objects of ~10 kinds)."""
        groups: dict[tuple[str, str, str], dict[str, dict]] = {}
        for obj in manifest:
            key = (obj["apiVersion"], obj["kind"], (obj.get("metadata") or {}).get("namespace") or ns)
            if key not in groups:
                try:
                    items = await self.d.kube.list(*key)
                except NotFound:  # the API no longer serves the kind
                    items = []
                groups[key] = {(i.get("metadata") or {}).get("name", ""): i for i in items}
        return [groups[(o["apiVersion"], o["kind"], (o.get("metadata") or {}).get("namespace") or ns)]
                .get((o.get("metadata") or {}).get("name", "")) for o in manifest]

    async def _correct(self, tenant: TenantView, applied: Applied, found: list[Drift]) -> int | None:
        """``helm upgrade`` with the rendered values. Fields someone else took over (server-side apply,
        ``kubectl scale``) would make Helm's apply conflict and ``HelmGateway`` has no
        ``--force-conflicts``: the drifted objects' manifest is first re-applied, forced, under Helm's
        field manager, so the upgrade owns every field again."""
        d, ns = self.d, tenant.namespace
        chart = chartsrc.locate(d.settings.charts_dir, applied.chart_version)
        refs = await records.secret_refs(d.uow, tenant.id)
        values = await asyncio.to_thread(render_values, tenant, refs, d.settings, suspended=applied.suspended,
                                         features=await d.cluster_features())
        drifted = {f.object for f in found if f.source == "live"}
        for obj in drift.parse_manifest(await d.helm.manifest(RELEASE, ns)):
            if drift.object_name(obj) in drifted:
                obj.setdefault("metadata", {}).setdefault("namespace", ns)
                await d.kube.apply(obj, field_manager=d.own.helm_field_manager, force=True)
        info = await d.helm.upgrade(RELEASE, str(chart.path), ns, values, timeout=d.settings.helm_timeout_s)
        return info.revision

    async def _record(self, tenant: TenantView, found: list[Drift], corrected: int | None) -> None:
        d = self.d
        current = [DriftKey(f.object, f.field, f.source, f.actual) for f in found]
        async with d.uow() as tx:
            await tx.tenant(tenant.id)
            previous = records.drift_keys(await records.latest_lifecycle(tx, tenant.id,
                                                                          ("DriftDetected", "DriftResolved")))
            delta = domain.drift_delta(previous, current)
            origin = _origin(tenant.id, "DriftCheck")
            by_key = {DriftKey(f.object, f.field, f.source, f.actual): f for f in found}
            for key in delta.new[: d.own.drift_max_events]:
                f = by_key[key]
                tx.emit(origin.caused(ev.DriftDetected, object=f.object, field=f.field, expected=f.expected,
                                      actual=f.actual, source=f.source))
            if delta.changed and current:
                tx.lifecycle(origin, "DriftDetected", slug=tenant.slug, step="drift",
                             message=f"{len(found)} difference(s) from the rendered release"
                                     + (" (warn only)" if corrected is None else ""),
                             details={"drift": [f.__dict__ for f in found[:200]], "total": len(found)})
            elif delta.resolved:
                tx.lifecycle(origin, "DriftResolved", slug=tenant.slug, step="drift",
                             message="the release and the live objects match the rendered values again")
            if corrected is not None:
                tx.lifecycle(origin, "DriftCorrected", slug=tenant.slug, step="drift",
                             message=f"helm upgrade restored the rendered release (revision {corrected})",
                             details={"revision": corrected})
            await records.mark_drift_checked(tx, tenant.id, d.clock.now())
            await tx.commit()

    # --- vanished namespaces ----------------------------------------------------------------------

    async def _namespace_vanished(self, tenant: TenantView) -> None:
        d = self.d
        async with d.uow() as tx:
            await tx.tenant(tenant.id)
            await records.mark_drift_checked(tx, tenant.id, d.clock.now())
            if await _reported(tx, tenant.id) or await timers.pending(tx, tenant.id, NAMESPACE_TIMER):
                await tx.commit()
                return
            due = timers.after(d.clock, d.own.namespace_grace_s)
            await timers.schedule(tx, tenant.id, NAMESPACE_TIMER, due, {"namespace": tenant.namespace})
            tx.lifecycle(_origin(tenant.id, "NamespaceCheck"), "NamespaceVanished", slug=tenant.slug,
                         step="namespace", message=f"namespace {tenant.namespace} not found; reported as "
                         f"missing if still gone at {due.isoformat()}", details={"due_at": due.isoformat()})
            await tx.commit()

    async def _namespace_present(self, tenant: TenantView) -> None:
        async with self.d.uow() as tx:
            if await timers.cancel(tx, tenant.id, NAMESPACE_TIMER, at=self.d.clock.now()):
                tx.lifecycle(_origin(tenant.id, "NamespaceCheck"), "NamespaceReturned", slug=tenant.slug,
                             step="namespace", message=f"namespace {tenant.namespace} exists again")
                await tx.commit()

    async def fire_timers(self) -> int:
        return await timers.fire_due(self.d.uow, self.d.clock, {NAMESPACE_TIMER: self._namespace_due})

    async def _namespace_due(self, tx: UnitOfWork, timer: m.Timer) -> None:
        """Grace period over: re-check under the lease; still gone → ``NamespaceMissing``."""
        d = self.d
        row = await tx.tenant(timer.tenant_id)
        if row is None or row.deleted_at is not None or row.state not in records.LIVE:
            return
        tenant = TenantView.of(row)
        async with leasing.trying(d.uow, tenant.id, f"{d.holder}:ns-check", "namespace-check",
                                  ttl_s=d.settings.lease_ttl_s, clock=d.clock) as got:
            if not got:  # an operation is running: look again shortly
                await timers.schedule(tx, tenant.id, NAMESPACE_TIMER, timers.after(d.clock, 5.0),
                                      timer.payload)
                return
            exists = await d.kube.namespace_exists(tenant.namespace)
        if exists or await records.waiting_op(d.uow, tenant.id) is not None:
            return
        out = _origin(tenant.id, "NamespaceCheck").caused(ev.NamespaceMissing, namespace=tenant.namespace)
        tx.emit(out)
        tx.lifecycle(out, "NamespaceMissing", slug=tenant.slug, step="namespace",
                     message=f"namespace {tenant.namespace} is still gone after {d.own.namespace_grace_s:g}s")


async def _reported(tx: UnitOfWork, tenant_id: uuid.UUID) -> bool:
    """Already reported missing since the release was last ready."""
    last = await records.latest_lifecycle(tx, tenant_id, ("NamespaceMissing", "ReleaseReady"))
    return last is not None and last.type == "NamespaceMissing"
