"""``make bench``: every figure is a ratio against a raw baseline measured in the same run."""

from __future__ import annotations

import asyncio
import importlib
import sys

from rich.console import Console
from rich.table import Table

from bench.common import SCALE, write_results

SCENARIOS = ["relay_bench", "render_bench", "heartbeat_bench", "pipeline_bench", "memory_bench"]
GOALS = {
    "relay.ratio": (">=", 0.5), "relay.commit_to_publish_p99_ms": ("<", 50),
    "heartbeat.ratio": (">=", 0.3), "heartbeat.ours_per_s": (">=", 10000),
    "pipeline.ratio": ("<=", 1.25), "pipeline.tenants_1000_s": ("<", 240), "render.ratio": ("<=", 1.2),
}


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
        try:
            results.update(asyncio.run(mod.run()))
        except Exception as exc:  # noqa: BLE001 - one failing scenario must not hide the others
            results[f"{name}.error"] = f"{type(exc).__name__}: {exc}"[:500]
    path = write_results(results)
    t = Table(title=f"bench ({SCALE})")
    for c in ("key", "value", "goal", "met"):
        t.add_column(c)
    for k, v in sorted(results.items()):
        goal = GOALS.get(k)
        met = ""
        if goal and isinstance(v, int | float):
            op, g = goal
            met = "yes" if {">=": v >= g, "<": v < g, "<=": v <= g}[op] else "NO"
        t.add_row(k, str(v), f"{goal[0]} {goal[1]}" if goal else "", met)
    Console().print(t)
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
