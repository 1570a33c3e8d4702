"""``make bench``: every figure is a ratio against a raw baseline measured in the same run.

``python -m bench.run [scenario ...]`` runs the named scenarios (default: all, in order), prints a
table with the goals and writes ``bench/results/latest.json`` plus a timestamped copy. Each scenario
also records how long it took and the machine's load average before and after it (the machine is
shared: a load above the core count means the absolute figures are pessimistic; the ratios, measured
on the same servers within the same minutes, much less so). See bench/README.md.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
import time

from rich.console import Console
from rich.table import Table

from bench.common import SCALE, write_results

SCENARIOS = ["relay_bench", "render_bench", "heartbeat_bench", "pipeline_bench", "memory_bench"]
GOALS = {
    "relay.ratio": (">=", 0.5), "relay.commit_to_publish_p99_ms": ("<", 50),
    "heartbeat.ratio": (">=", 0.3), "heartbeat.ours_per_s": (">=", 10000),
    "pipeline.ratio": ("<=", 1.25), "pipeline.tenants_1000_s": ("<", 240), "render.ratio": ("<=", 1.2),
    "memory.rss_mb": ("<", 150),
}


def goal_for(key: str) -> tuple[str, float] | None:
    if key in GOALS:
        return GOALS[key]
    parts = key.split(".")
    if len(parts) == 3 and parts[0] == "memory" and parts[2] == "rss_mb":  # each service's peak
        return GOALS["memory.rss_mb"]
    return None


def _fmt(v: object) -> str:
    if isinstance(v, dict):
        return json.dumps(v, separators=(", ", ": "))
    return str(v)


def main(argv: list[str]) -> int:
    only = [a for a in argv if not a.startswith("-")]
    results: dict[str, object] = {}
    for name in SCENARIOS:
        if only and name not in only:
            continue
        try:
            mod = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as exc:
            results[f"{name}.error"] = f"not available: {exc.name}"
            continue
        load0, t0 = os.getloadavg()[0], time.monotonic()
        try:
            results.update(asyncio.run(mod.run()))
        except Exception as exc:  # noqa: BLE001 - one failing scenario must not hide the others
            results[f"{name}.error"] = f"{type(exc).__name__}: {exc}"[:500]
        short = name.removesuffix("_bench")
        results[f"{short}.duration_s"] = round(time.monotonic() - t0, 1)
        results[f"{short}.loadavg_1m"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    # latest.json is the last run of every scenario; a partial run only writes its timestamped copy.
    path = write_results(results, latest=not only)
    meta = results.pop("meta")
    t = Table(title=f"bench ({SCALE}) {json.dumps(meta)}")
    for c in ("key", "value", "goal", "met"):
        t.add_column(c, overflow="fold")
    for k, v in sorted(results.items()):
        goal = goal_for(k)
        met = ""
        if goal and isinstance(v, int | float):
            op, g = goal
            met = "yes" if {">=": v >= g, "<": v < g, "<=": v <= g}[op] else "NO"
        t.add_row(k, _fmt(v), f"{goal[0]} {goal[1]}" if goal else "", met)
    Console(width=160).print(t)
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
