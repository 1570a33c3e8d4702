"""Each service's peak RSS with 10,000 tenant rows, while its periodic loops run.

The whole stack runs as separate processes (``DevStack``: relay, provisioner, secrets, helm-runner,
heartbeat, api). Once it is up, 10,000 active tenants are loaded into its database (tenant rows with
config, adapter tokens, 7 secret references each, heartbeat state, lifecycle history and a succeeded
install record, so the helm-runner's drift round covers every one of them). For ``window`` seconds
every tenant's adapter heartbeats (the heartbeat service's token cache and views hold all 10,000) and
the loops run: heartbeat flush/liveness/token refresh, provisioner timers, secrets retirement sweep,
helm-runner watch/drift (each tenant's drift check every 10 s here instead of 300 s, so a round
over all tenants falls in the window)/timers, the relay publishing whatever those loops emit.

The figure per service is the kernel's peak resident set (VmHWM) of its process at the end of the
window. How the resident set splits at the end of the window is reported beside it: ``rss_anon_mb``
(the process's own heap, stacks and written pages) and ``rss_file_mb`` (pages of mapped files, mostly
shared libraries: clean, shared with every process mapping the same file, reclaimable by the kernel;
the helm-runner's ~45 MB of ``libhelm_c.so`` are there). Baseline (published, not measured here): Flux
helm-controller, 400 Mi at 1,000 releases.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import psutil
from soctalk_common.bus import Bus

from bench.common import FULL
from bench.heartbeat_bench import heartbeat, publish_all
from bench.seed import dsn, seed_tenants
from bench.stackrun import KEY, dead, devstack, peak_rss_mb


async def seed_release_records(database_url: str, tenant_ids: list[uuid.UUID]) -> None:
    """A succeeded ``install`` per tenant, as the helm-runner records one, an hour ago (so every tenant
    is due for its drift check at once)."""
    now = datetime.now(UTC) - timedelta(hours=1)
    rows = [(t, "install", "soctalk-tenant", f"tenant-bench-{i:05d}", "v1.1.0", 1, "succeeded",
             now + timedelta(minutes=15), uuid.uuid4(), now, now) for i, t in enumerate(tenant_ids)]
    conn = await asyncpg.connect(dsn(database_url))
    try:
        await conn.copy_records_to_table(
            "release_operations", records=rows,
            columns=["tenant_id", "operation", "release", "namespace", "chart_version", "revision", "status",
                     "deadline", "correlation_id", "created_at", "finished_at"])
    finally:
        await conn.close()


async def settled(pids: dict[str, int], timeout: float = 120.0) -> None:
    """Until every process has gone quiet (< 50 ms of CPU in a second): imports done, connected,
    waiting for work. Under load from other processes, start-up takes longer than any fixed delay."""
    procs = {n: psutil.Process(pid) for n, pid in pids.items()}
    deadline = time.monotonic() + timeout
    last = {n: sum(p.cpu_times()[:2]) for n, p in procs.items()}
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        now = {n: sum(p.cpu_times()[:2]) for n, p in procs.items()}
        if all(now[n] - last[n] < 0.05 for n in procs):
            return
        last = now


def rss_split_mb(pid: int) -> dict[str, float]:
    """Resident set now, split: ``anon`` (RssAnon + RssShmem) and ``file`` (RssFile), in MiB."""
    fields = {}
    with contextlib.suppress(OSError):
        for line in open(f"/proc/{pid}/status", encoding="ascii"):  # noqa: SIM115 - read to the end
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "RssShmem"):
                fields[key] = int(value.split()[0]) / 1024
    return {"anon": fields.get("RssAnon", 0.0) + fields.get("RssShmem", 0.0), "file": fields.get("RssFile", 0.0)}


async def run() -> dict[str, float]:
    tenants = 10_000
    window = 120.0 if FULL else 45.0
    extra = {"SOCTALK_HELM_RUNNER_DRIFT_INTERVAL_S": "10"}
    async with devstack(extra_env=extra) as ds:
        await settled({n: p.pid for n, p in ds.procs.items()})  # every service started and idle
        idle = {n: psutil.Process(p.pid).memory_info().rss / 2**20 for n, p in ds.procs.items()}
        seeded = await seed_tenants(ds.database_url, tenants, KEY.encode())
        await seed_release_records(ds.database_url, [s.tenant_id for s in seeded])
        bus = await Bus.connect(ds.nats_url, name="bench-adapters")
        procs = {n: psutil.Process(p.pid) for n, p in ds.procs.items()}
        window_peak = dict.fromkeys(procs, 0.0)
        stop = asyncio.Event()

        async def sample() -> None:  # RSS during the window (VmHWM below also covers start-up)
            while not stop.is_set():
                for n, p in procs.items():
                    with contextlib.suppress(psutil.Error):
                        window_peak[n] = max(window_peak[n], p.memory_info().rss / 2**20)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)

        sampler = asyncio.create_task(sample())
        rounds = 0
        deadline = time.monotonic() + window
        try:
            while time.monotonic() < deadline:
                await publish_all(bus, (heartbeat(s) for s in seeded))
                rounds += 1
                await asyncio.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
        finally:
            stop.set()
            await sampler
            await bus.close()
        down = dead(ds)
        assert not down, f"services died: {down}"
        peaks = {n: peak_rss_mb(p.pid) for n, p in ds.procs.items()}
        split = {n: rss_split_mb(p.pid) for n, p in ds.procs.items()}
    out: dict[str, float] = {f"memory.{n}.rss_mb": round(v, 1) for n, v in sorted(peaks.items())}
    out.update({f"memory.{n}.idle_rss_mb": round(v, 1) for n, v in sorted(idle.items())})
    out.update({f"memory.{n}.window_rss_mb": round(v, 1) for n, v in sorted(window_peak.items())})
    for n, parts in sorted(split.items()):
        out.update({f"memory.{n}.rss_{kind}_mb": round(v, 1) for kind, v in parts.items()})
    out["memory.rss_mb"] = round(max(peaks.values()), 1)
    out["memory.tenants"] = tenants
    out["memory.window_s"] = window
    out["memory.heartbeat_rounds"] = rounds
    return out
