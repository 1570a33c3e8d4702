"""Values rendering + validation + chart render per tenant, against a raw helm-python-sdk render.

* ours: what the helm-runner does before Helm runs — the tenant's values under its profile
  (``charts.tenant_values_for_profile``), then ``charts.render`` (pre-render validation with JSON paths
  against the chart's and subcharts' schemas, then the Helm SDK render);
* raw: ``helm_python.Chart.load(path)`` + ``chart.render(values)`` of the same, already merged values
  (Helm still checks ``values.schema.json`` itself).

The two are interleaved tenant by tenant (ABAB…) so load from other processes on the machine hits
both alike; the figures are medians per tenant. Everything runs in this process, no servers.
"""

from __future__ import annotations

import copy
import statistics
import time
import uuid
from typing import Any

from soctalk_common import charts

from bench.common import FULL

PROFILE = "pilot-prod"


def tenant_config(i: int, example: dict[str, Any]) -> dict[str, Any]:
    """The example tenant (deploy/examples/tenant-acme-values.yaml) with its own id and slug."""
    t = copy.deepcopy(example)
    tid = str(uuid.uuid4())
    t["tenant"].update(id=tid, slug=f"bench-{i:05d}", displayName=f"Bench {i}")
    t["namespaceLabels"]["tenant-id"] = tid
    return t


def ours(tenant: dict[str, Any]) -> str:
    values = charts.tenant_values_for_profile(PROFILE, tenant)
    return charts.render(charts.TENANT_CHART, values, release_name=charts.TENANT_CHART)


def raw(path: str, values: dict[str, Any], namespace: str) -> str:
    import helm_python as hp

    with hp.Chart.load(path) as chart:
        manifests = chart.render(values, name=charts.TENANT_CHART, namespace=namespace, is_install=True)
    return "".join(f"---\n# Source: {k}\n{v.strip()}\n" for k, v in sorted(manifests.items())
                   if v.strip() and not k.endswith("NOTES.txt"))


def _phase_ms(tenant: dict[str, Any]) -> dict[str, float]:
    """One tenant's time split: values, validation, Helm (load + render)."""
    t0 = time.perf_counter()
    values = charts.tenant_values_for_profile(PROFILE, tenant)
    t1 = time.perf_counter()
    errors = charts.validate_values(charts.TENANT_CHART, values)
    t2 = time.perf_counter()
    assert not errors, errors
    raw(str(charts.chart_dir(charts.TENANT_CHART)), values, f"tenant-{tenant['tenant']['slug']}")
    t3 = time.perf_counter()
    return {"values": (t1 - t0) * 1e3, "validate": (t2 - t1) * 1e3, "helm": (t3 - t2) * 1e3}


async def run() -> dict[str, float]:
    n = 400 if FULL else 120
    example = charts.load_values_file(charts.example_tenant_file())
    path = str(charts.chart_dir(charts.TENANT_CHART))
    tenants = [tenant_config(i, example) for i in range(n)]
    merged = [charts.tenant_values_for_profile(PROFILE, t) for t in tenants]
    # Same output, or the comparison means nothing.
    ns = f"tenant-{tenants[0]['tenant']['slug']}"
    assert ours(tenants[0]) == raw(path, merged[0], ns)
    for _ in range(5):  # warm-up: caches, the Go runtime
        ours(tenants[0])
        raw(path, merged[0], ns)
    t_ours: list[float] = []
    t_raw: list[float] = []
    for i, (t, v) in enumerate(zip(tenants, merged, strict=True)):
        first_ours = i % 2 == 0  # alternate which goes first
        for which in ((0, 1) if first_ours else (1, 0)):
            s = time.perf_counter()
            if which == 0:
                ours(t)
                t_ours.append(time.perf_counter() - s)
            else:
                raw(path, v, f"tenant-{t['tenant']['slug']}")
                t_raw.append(time.perf_counter() - s)
    phases = [_phase_ms(t) for t in tenants[: min(40, n)]]
    o, r = statistics.median(t_ours) * 1e3, statistics.median(t_raw) * 1e3
    return {
        "render.tenants": n,
        "render.ours_ms": round(o, 2), "render.raw_ms": round(r, 2), "render.ratio": round(o / r, 3),
        "render.ours_per_s": round(1e3 / o, 1), "render.raw_per_s": round(1e3 / r, 1),
        **{f"render.phase_{k}_ms": round(statistics.median(p[k] for p in phases), 2)
           for k in ("values", "validate", "helm")},
    }
