"""Shared helpers for benchmarks: servers, timing, percentiles, results file."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from soctalk_common import stack
from soctalk_common.db.migrate import upgrade_async

RESULTS = Path(__file__).parent / "results"
SCALE = os.environ.get("BENCH_SCALE", "default")
FULL = SCALE == "full"


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": round(pct(values, 50), 3), "p99": round(pct(values, 99), 3),
            "mean": round(statistics.fmean(values), 3) if values else float("nan")}


@asynccontextmanager
async def servers():  # type: ignore[no-untyped-def]
    """Fresh NATS and Postgres for one scenario (external ones when the env points at them)."""
    with stack.nats_endpoint() as nats_url, stack.postgres_endpoint() as db_url:
        name = f"bench_{int(time.time() * 1000)}"
        conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://"))
        await conn.execute(f'CREATE DATABASE "{name}"')
        await conn.close()
        url = db_url.rsplit("/", 1)[0] + "/" + name
        await upgrade_async(url)
        yield nats_url, url


def write_results(results: dict[str, Any], *, latest: bool = True) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    results["meta"] = {"scale": SCALE, "at": datetime.now(UTC).isoformat(), "cpus": os.cpu_count()}
    text = json.dumps(results, indent=2, sort_keys=True)
    if latest:
        (RESULTS / "latest.json").write_text(text + "\n")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"{stamp}.json"
    path.write_text(text + "\n")
    return path


PROFILE = bool(os.environ.get("BENCH_PROFILE"))


@contextlib.contextmanager
def profiler(pid: int, name: str, rate: int = 100) -> Iterator[None]:
    """With ``BENCH_PROFILE=1`` and py-spy available, sample process ``pid`` while the block runs;
    collapsed stacks go to ``bench/results/profile-<name>.txt`` (``bench/profile_top.py`` sums them)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if os.environ.get("BENCH_PROFILE") == "perf":
        yield  # one system-wide recording per window instead: see ``perf_window``
        return
    if not PROFILE or not Path(spy).exists():
        yield
        return
    where = Path(os.environ.get("BENCH_PROFILE_DIR") or RESULTS)  # parallel runs: separate dirs
    where.mkdir(parents=True, exist_ok=True)
    out = where / f"profile-{name}.txt"
    # BENCH_PROFILE=gil samples only the thread holding the GIL: where the Python CPU goes (plain
    # sampling also counts threads blocked inside native calls, e.g. Helm waiting on the API server).
    gil = ["--gil"] if os.environ.get("BENCH_PROFILE") == "gil" else []
    proc = subprocess.Popen([spy, "record", "-p", str(pid), "-r", str(rate), "-f", "raw", "-o", str(out),
                             "--nonblocking", *gil], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        proc.send_signal(2)  # SIGINT: py-spy writes what it has
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(20)


@contextlib.contextmanager
def perf_window(name: str, roles: dict[str, int] | None = None) -> Iterator[None]:
    """With ``BENCH_PROFILE=perf`` and Linux ``perf`` on the PATH, record every process on the machine
    (``cpu-clock`` samples, so it works without hardware counters) while the block runs, into
    ``bench/results/perf-<name>.data``. Unlike py-spy it sees native frames: the Go code of the Helm SDK,
    Postgres, nats-server. ``BENCH_PROFILE=syscalls`` records every socket write instead (one sample
    each). ``roles`` (name → pid) is written beside it, so ``python -m bench.perf_top`` can sum the
    samples by service."""
    perf = shutil.which("perf")
    mode = os.environ.get("BENCH_PROFILE")
    if mode not in ("perf", "syscalls") or perf is None:
        yield
        return
    # syscalls: one sample per socket write (the round trips each process pays; loopback TCP costs
    # ~40 µs of CPU per message on each side on these machines), no call graphs.
    events = (["-e", "syscalls:sys_enter_sendto", "-e", "syscalls:sys_enter_write", "-e",
               "syscalls:sys_enter_writev", "-e", "syscalls:sys_enter_sendmsg"] if mode == "syscalls"
              else ["-g", "-e", "cpu-clock", "-F", "199"])
    where = Path(os.environ.get("BENCH_PROFILE_DIR") or RESULTS)
    where.mkdir(parents=True, exist_ok=True)
    out = where / f"perf-{name}.data"
    (where / f"perf-{name}.roles.json").write_text(json.dumps(roles or {}))
    proc = subprocess.Popen([perf, "record", "-a", *events, "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        proc.send_signal(2)  # SIGINT: perf writes its file and exits
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(60)


async def timed(coro: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = await coro
    return out, time.perf_counter() - t


__all__ = ["asyncio", "pct", "summary", "servers", "write_results", "timed", "profiler", "perf_window", "FULL",
           "PROFILE"]
