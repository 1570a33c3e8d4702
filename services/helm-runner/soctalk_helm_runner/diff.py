"""``soctalk tenants diff SLUG --to VERSION``: the manifest change an upgrade would make, offline.

The tenant's values are rendered exactly as the helm-runner renders them (tenant record + secret
references + profile), then both chart versions are rendered with them (``helm template``, no
cluster) and the manifests are compared: a summary of added / removed / changed objects, then a
unified diff. Optional APIs follow ``SOCTALK_HELM_RUNNER_FQDN_ENGINE`` / ``..._CERT_MANAGER``
(``auto`` renders them, as on a cluster that serves them).

Exit codes: 0 diff shown (also when there is no change), 1 the values do not fit the target chart or
the compatibility matrix blocks the upgrade (the diff is still shown when it can be rendered),
3 unknown chart version (or a chart that is not available locally).
"""

from __future__ import annotations

import asyncio
import difflib
from collections.abc import Callable
from typing import Any

from soctalk_common import charts
from soctalk_common.compat import load_compatibility, verdict
from soctalk_common.db import models as m
from soctalk_common.errors import InvalidObject, ValidationFailed
from soctalk_common.settings import Settings
from soctalk_common.uow import UnitOfWorkFactory

from soctalk_helm_runner import chartsrc, drift, records
from soctalk_helm_runner.deps import HelmRunnerSettings
from soctalk_helm_runner.domain import RELEASE, namespace_for
from soctalk_helm_runner.values import ClusterFeatures, render_values

EXIT_OK, EXIT_FAILED, EXIT_NOT_FOUND = 0, 1, 3


def _printer(print_fn: Callable[..., Any]) -> Callable[[str], None]:
    """Plain text even through a rich Console (manifests contain ``[...]`` that is not markup)."""
    owner = getattr(print_fn, "__self__", None)
    if type(owner).__name__ == "Console":
        return lambda line: print_fn(line, markup=False, highlight=False, soft_wrap=True)
    return lambda line: print_fn(line)


def _features(own: HelmRunnerSettings) -> ClusterFeatures:
    return ClusterFeatures(cilium=own.fqdn_engine != "none", cert_manager=own.cert_manager != "off")


async def diff_tenant(settings: Settings, sessionmaker: Any, tenant: m.Tenant, to_version: str,
                      print_fn: Callable[..., Any] = print) -> int:
    """Print what upgrading ``tenant`` to ``to_version`` would change; returns the exit code."""
    out = _printer(print_fn)
    try:
        current = chartsrc.locate(settings.charts_dir, tenant.chart_version)
        target = chartsrc.locate(settings.charts_dir, to_version)
    except chartsrc.UnknownChartVersion as exc:
        out(f"error: {exc}")
        return EXIT_NOT_FOUND
    view = records.TenantView.of(tenant)
    refs = await records.secret_refs(UnitOfWorkFactory(sessionmaker), tenant.id)
    values = render_values(view, refs, settings, suspended=tenant.state == "suspended",
                           features=_features(HelmRunnerSettings()))
    v = verdict(load_compatibility(settings.compatibility_file), settings.system_version, target.version)
    out(f"tenant {tenant.slug}: {RELEASE} {current.version} → {target.version} "
        f"(soctalk-system {v.system}: {v.status}{f' — {v.notes}' if v.notes else ''})")
    ns = namespace_for(tenant.slug)
    rendered: list[str] = []
    for chart in (current, target):
        try:
            rendered.append(await asyncio.to_thread(charts.render, chart.path, values, release_name=RELEASE,
                                                    namespace=ns))
        except ValidationFailed as exc:
            out(f"error: the tenant's values do not fit {RELEASE} {chart.version}:")
            for path, message in exc.errors:
                out(f"  {path}: {message}")
            return EXIT_FAILED
        except InvalidObject as exc:
            out(f"error: {RELEASE} {chart.version} does not render: {exc}")
            return EXIT_FAILED
    before, after = rendered
    _summary(out, before, after)
    for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="",
                                     fromfile=f"{RELEASE} {current.version} ({ns})",
                                     tofile=f"{RELEASE} {target.version} ({ns})"):
        out(line)
    return EXIT_OK if v.allowed else EXIT_FAILED


def _summary(out: Callable[[str], None], before: str, after: str) -> None:
    old, new = drift.index(drift.parse_manifest(before)), drift.index(drift.parse_manifest(after))
    added, gone = sorted(new.keys() - old.keys()), sorted(old.keys() - new.keys())
    changed = sorted(k for k in old.keys() & new.keys() if old[k] != new[k])
    if not (added or gone or changed):
        out("no manifest changes")
        return
    for label, names in (("added", added), ("removed", gone), ("changed", changed)):
        if names:
            out(f"{label} ({len(names)}): {', '.join(names)}")
