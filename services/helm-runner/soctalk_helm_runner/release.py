"""Running the reconciler against Helm: observe, decide (:func:`domain.next_action`), do one write,
observe again — until the release needs no write (``Watch``/``Wait``/``Defer``/``Done``).

What a caller can rely on:

* The caller holds the tenant's lease for the whole call (no two Helm writes on one release).
* Before any write the chart and its values are checked: the chart version must exist locally and
  pass the compatibility gate (settings.system_version × chart version), the values rendered from the
  tenant record must pass ``values.schema.json``. A failed check raises :class:`StepFailed` with
  ``wrote=False`` (nothing was changed).
* A Helm write that fails for good (or for the last time the message may be retried) raises
  :class:`StepFailed` with ``wrote=True``: the caller records the failure and the watcher undoes or
  rolls back. Other temporary errors propagate (the runtime redelivers the message and the next
  attempt observes what this one left behind).
* Every Helm write is listed in ``Converged.steps`` for the lifecycle stream.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from soctalk_common import charts
from soctalk_common.compat import verdict
from soctalk_common.errors import PermanentError, TemporaryError

from soctalk_helm_runner import chartsrc, domain, drift, records
from soctalk_helm_runner.deps import Deps
from soctalk_helm_runner.domain import (
    RELEASE,
    Action,
    Deployed,
    Desired,
    Failed,
    Failure,
    Install,
    Observed,
    Present,
    RecoverPending,
    Revision,
    Rollback,
    Supersede,
    Uninstall,
    Upgrade,
)
from soctalk_helm_runner.records import TenantView
from soctalk_helm_runner.values import render_values

if TYPE_CHECKING:
    from soctalk_common.gateways.helm import ReleaseInfo

log = structlog.get_logger(__name__)

MAX_STEPS = 6


class StepFailed(Exception):
    """A step failed for good: report it (``wrote``: the release may have changed, undo/roll back)."""

    def __init__(self, failure: Failure, *, wrote: bool, previous: int | None = None,
                 steps: list[Step] | None = None) -> None:
        super().__init__(failure.encode())
        self.failure = failure
        self.wrote = wrote
        self.previous = previous
        self.steps = steps or []


class NamespaceGone(PermanentError):
    """The tenant namespace does not exist: nothing can be installed into it."""


@dataclass(frozen=True)
class Step:
    """One Helm write, for the lifecycle stream."""

    type: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Converged:
    action: Action  # Watch | Wait | Defer | Done
    observed: Observed
    steps: list[Step] = field(default_factory=list)
    # ``Kind/name`` of the workloads the last install/upgrade applied (from its own manifest), for the
    # readiness wait; None when this call wrote no release (the watcher then reads the release).
    expected: list[str] | None = None


@dataclass(frozen=True)
class Prepared:
    tenant: TenantView  # with its edge ports once assigned
    chart: chartsrc.ChartSource
    values: dict[str, Any]
    warning: str | None = None


async def observe(d: Deps, tenant: TenantView, waiting: domain.Waiting | None = None) -> Observed:
    """The release as one of the closed set of states (our own recorded wait takes precedence)."""
    if waiting is not None:
        return waiting
    history = await d.helm.history(RELEASE, tenant.namespace)
    revisions = [Revision(h.revision, h.status, h.chart_version) for h in history]
    suspended = False
    if revisions and max(revisions, key=lambda r: r.revision).status == "deployed":
        suspended = bool((await d.helm.values(RELEASE, tenant.namespace)).get("suspended", False))
    return domain.classify(revisions, suspended=suspended)


def rollback_target(observed: Observed) -> int | None:
    if isinstance(observed, Deployed):
        return observed.revision
    if isinstance(observed, Failed):
        return observed.previous
    return None


async def prepare(d: Deps, tenant: TenantView, desired: Present, cause: Any) -> Prepared:
    """Chart, compatibility and values for ``desired``; ``StepFailed(wrote=False)`` if any is wrong."""
    try:
        chart = chartsrc.locate(d.settings.charts_dir, desired.chart_version)
    except chartsrc.UnknownChartVersion as exc:
        raise StepFailed(Failure(domain.STEP_CHART, str(exc)), wrote=False) from None
    v = verdict(d.compatibility, d.settings.system_version, chart.version)
    if not v.allowed:
        raise StepFailed(Failure(domain.STEP_COMPATIBILITY, f"soctalk-system {v.system} × {domain.CHART} "
                                 f"{v.tenant} is blocked: {v.notes or 'not allowed'}"), wrote=False)
    mode = ((tenant.config.get("wazuhIngress") or {}).get("mode"))
    if mode == "edge-haproxy" and not tenant.edge_ports:
        ports = await records.assign_edge_ports(d.uow, tenant.id, cause, base=d.own.edge_port_base,
                                                limit=d.own.edge_port_limit)
        tenant = records.with_edge_ports(tenant, ports)
    refs = await records.secret_refs(d.uow, tenant.id)
    features = await d.cluster_features()
    values = await asyncio.to_thread(render_values, tenant, refs, d.settings, suspended=desired.suspended,
                                     features=features)
    errors = await asyncio.to_thread(charts.validate_values, chart.path, values)
    if errors:
        raise StepFailed(Failure(domain.STEP_VALUES, "; ".join(f"{p}: {msg}" for p, msg in errors)[:2000]),
                         wrote=False)
    warning = f"{v.tenant} is deprecated on {v.system}: {v.notes or ''}".strip() if v.warn else None
    return Prepared(tenant, chart, values, warning)


async def converge(d: Deps, tenant: TenantView, desired: Desired, cause: Any, *,
                   waiting: domain.Waiting | None = None, attempt: int = 1) -> Converged:
    """Run writes until ``next_action`` needs none (the caller holds the lease)."""
    steps: list[Step] = []
    observed: Observed | None = None
    known: Observed | None = None  # the observation a write's own result gave
    expected: list[str] | None = None
    for _ in range(MAX_STEPS):
        observed = known or await observe(d, tenant, waiting)
        known = None
        action = domain.next_action(observed, desired)
        if isinstance(action, domain.TERMINAL):
            return Converged(action, observed, steps, expected)
        if isinstance(action, Supersede):
            closed = await records.supersede(d.uow, tenant.id, cause, d.clock.now())
            steps.append(Step("ReleaseWaitSuperseded", f"{closed} waiting operation(s) closed"))
            waiting = None
            continue
        try:  # checks before the write: a failure here changed nothing
            prep = await _before(d, tenant, desired, action, cause)
        except StepFailed as exc:
            exc.steps, exc.previous = steps + exc.steps, rollback_target(observed)
            raise
        except NamespaceGone:
            raise
        except Exception as exc:
            if domain.gives_up(permanent=isinstance(exc, PermanentError), attempt=attempt,
                               max_deliver=d.max_deliver):
                raise StepFailed(Failure("prepare", f"{type(exc).__name__}: {exc}"[:2000]), wrote=False,
                                 previous=rollback_target(observed), steps=steps) from exc
            raise
        tenant = prep.tenant if prep is not None else tenant
        try:
            step, info = await _write(d, tenant, action, prep)
        except Exception as exc:
            if domain.gives_up(permanent=isinstance(exc, PermanentError), attempt=attempt,
                               max_deliver=d.max_deliver):
                raise StepFailed(Failure(_step_name(action), f"{type(exc).__name__}: {exc}"[:2000]),
                                 wrote=True, previous=rollback_target(observed), steps=steps) from exc
            raise
        steps.append(step)
        expected = None
        if info is not None:
            known = domain.after_write(observed, action, desired, revision=info.revision, status=info.status,
                                       chart_version=info.chart_version)
            if info.manifest:
                expected = await asyncio.to_thread(drift.manifest_workloads, info.manifest)
    raise TemporaryError(f"release {tenant.namespace}/{RELEASE} did not settle after {MAX_STEPS} steps "
                         f"(last seen {observed!r})", delay=5.0)


def _step_name(action: Action) -> str:
    return {Install: "install", Upgrade: "upgrade", Rollback: "rollback", Uninstall: "uninstall",
            RecoverPending: "recover-pending"}.get(type(action), type(action).__name__.lower())


async def _before(d: Deps, tenant: TenantView, desired: Desired, action: Action, cause: Any) -> Prepared | None:
    """Chart, compatibility and values for an install/upgrade; an install needs its namespace."""
    if not isinstance(action, Install | Upgrade):
        return None
    assert isinstance(desired, Present)
    if isinstance(action, Install) and not await d.kube.namespace_exists(tenant.namespace):
        raise NamespaceGone(f"namespace {tenant.namespace} does not exist")
    return await prepare(d, tenant, desired, cause)


async def _write(d: Deps, tenant: TenantView, action: Action, prep: Prepared | None,
                 ) -> tuple[Step, ReleaseInfo | None]:
    """Run one write; the release it produced when it was an install or upgrade."""
    ns, timeout = tenant.namespace, d.settings.helm_timeout_s
    if isinstance(action, Install | Upgrade):
        assert prep is not None
        details: dict[str, Any] = {"chart_version": prep.chart.version, "suspended": prep.values["suspended"]}
        if prep.warning:
            details["warning"] = prep.warning
        if isinstance(action, Install):
            info = await d.helm.install(RELEASE, str(prep.chart.path), ns, prep.values, timeout=timeout)
            return Step("HelmInstalled", f"installed {RELEASE} revision {info.revision} "
                        f"(chart {prep.chart.version})", {**details, "revision": info.revision}), info
        info = await d.helm.upgrade(RELEASE, str(prep.chart.path), ns, prep.values, timeout=timeout)
        return Step("HelmUpgraded", f"upgraded {RELEASE} to revision {info.revision} "
                    f"(chart {prep.chart.version})", {**details, "revision": info.revision}), info
    if isinstance(action, Rollback):
        info = await d.helm.rollback(RELEASE, ns, action.revision)
        return Step("HelmRolledBack", f"rolled back to revision {action.revision} (now revision {info.revision})",
                    {"to": action.revision, "revision": info.revision}), None
    if isinstance(action, Uninstall):
        await d.helm.uninstall(RELEASE, ns, timeout=timeout)
        return Step("HelmUninstalled", f"uninstalled {RELEASE} from {ns}"), None
    if isinstance(action, RecoverPending):
        done = await d.helm.recover_pending(RELEASE, ns, min_age=d.pending_min_age_s)
        if done is None:
            raise TemporaryError(f"{ns}/{RELEASE} is pending-* but younger than {d.pending_min_age_s:g}s: "
                                 "another operation may still own it", delay=10.0)
        return Step("PendingReleaseRecovered", done), None
    raise AssertionError(f"not a write: {action!r}")
