"""Verified heartbeats per second (token check + durable ``last_seen``) vs raw nats-py core pub→sub.

* ours: the real service process (``python -m soctalk_heartbeat``, default settings) over ``tenants``
  active tenants seeded with real adapter tokens. Warm-up: one heartbeat per tenant (token cache and
  per-tenant views loaded, as in steady state). Then ``n`` heartbeats, round-robin over the tenants:
  - heartbeats on core NATS (current layout: a stream would store the bearer tokens they carry): the
    adapters publish the ``n`` heartbeats (made beforehand, as the baseline's are) as fast as they can,
    never more than ``MAX_BACKLOG`` + ``CHUNK`` ahead of the service, while it consumes; the figure is
    ``n`` / (first publish → the last heartbeat of every tenant verified and its ``last_seen``
    committed);
  - heartbeats in a JetStream stream (older layout): the service is paused (SIGSTOP) while the ``n``
    are published, then resumed; ``n`` / (resume → the same end).
  The last round carries ``adapter_version = bench-final``, so "done" is one exact query on
  ``heartbeat_state``; it includes the last flush (``heartbeat_flush_s``, 1 s by default). The
  service's CPU time per message is reported too (robust to other load on the machine).
* raw: the same payload and Authorization header published with nats-py core ``publish`` on one
  connection and received by a callback subscriber on another, no JetStream, no checks:
  ``n`` / (first publish → last message received).

``BENCH_PROFILE=1`` samples the service with py-spy during the timed phase (if installed) and writes
the collapsed stacks to ``bench/results/profile-heartbeat.txt``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator

import asyncpg
import nats
import psutil
from soctalk_common import events as ev
from soctalk_common.bus import STREAMS, Bus
from soctalk_common.stack import free_port

from bench.common import FULL, profiler, servers
from bench.seed import COMPONENTS, Seeded, dsn, seed_tenants

KEY = "bench-adapter-signing-key-0123456789abcdef"
Msg = tuple[str, bytes, dict[str, str]]
# Core NATS: adapters never run more than MAX_BACKLOG + CHUNK ahead of what the service verified, which
# stays inside its pending bound (consumer.MAX_PENDING_MSGS: beyond it, heartbeats are dropped by design).
CHUNK, MAX_BACKLOG = 2_500, 6_000


def heartbeat(t: Seeded, version: str = "bench-1.0.0") -> Msg:
    hb = ev.AdapterHeartbeat(tenant_id=t.tenant_id, adapter_version=version, status="ok",
                             components={c: ev.ComponentHealth(status="ok") for c in COMPONENTS})
    return hb.subject, hb.model_dump_json().encode(), {"Authorization": f"Bearer {t.token}"}


def backlog(seeded: list[Seeded], n: int) -> Iterator[Msg]:
    """``n`` heartbeats round-robin over the tenants; the last one of each tenant is ``bench-final``.
    Each tenant's header dict is shared by its messages (nothing mutates it; less bench memory)."""
    k = len(seeded)
    headers = [{"Authorization": f"Bearer {t.token}"} for t in seeded]
    for i in range(n):
        subject, body, _ = heartbeat(seeded[i % k], "bench-final" if i >= n - k else "bench-1.0.0")
        yield subject, body, headers[i % k]


async def raw_pubsub(nats_url: str, msgs: list[Msg]) -> float:
    """Baseline: core NATS, one publisher connection, one subscriber connection, same process."""
    pub = await nats.connect(nats_url, name="bench-raw-pub")
    sub_nc = await nats.connect(nats_url, name="bench-raw-sub", pending_size=256 * 1024 * 1024)
    n = len(msgs)
    got = 0
    done = asyncio.Event()

    async def on_msg(_msg) -> None:  # type: ignore[no-untyped-def]
        nonlocal got
        got += 1
        if got == n:
            done.set()

    sub = await sub_nc.subscribe("bench.raw.*.heartbeat", cb=on_msg, pending_msgs_limit=n + 1,
                                 pending_bytes_limit=512 * 1024 * 1024)
    await sub_nc.flush()
    t = time.perf_counter()
    for subject, payload, headers in msgs:
        await pub.publish(subject.replace("soctalk.adapter", "bench.raw"), payload, headers=headers)
    await pub.flush()
    await asyncio.wait_for(done.wait(), 120)
    rate = n / (time.perf_counter() - t)
    await sub.unsubscribe()
    await pub.close()
    await sub_nc.close()
    return rate


def stored() -> bool:
    """Whether heartbeats go through a JetStream stream (older layout) or core NATS only."""
    return "soctalk.adapter.>" in {subj for spec in STREAMS for subj in spec.subjects}


async def publish_all(bus: Bus, msgs: Iterable[Msg]) -> None:
    """The adapters' side: JetStream publishes (pipelined, every PubAck awaited) when heartbeats are
    stored, else core NATS publishes (flushed every 5,000)."""
    if not stored():
        for i, (s, p, h) in enumerate(msgs, 1):
            await bus.nc.publish(s, p, headers=h)
            if i % 5000 == 0:
                await bus.nc.flush()
        await bus.nc.flush()
        return
    futs = []
    for s, p, h in msgs:
        futs.append(await bus.js.publish_async(s, p, headers=h))
        if len(futs) >= 5000:
            await asyncio.gather(*futs)
            futs = []
    await asyncio.gather(*futs)


async def _count(conn: asyncpg.Connection, version: str) -> int:
    return int(await conn.fetchval(
        "SELECT count(*) FROM heartbeat_state WHERE last_health->>'adapter_version' = $1", version))


async def _until(conn: asyncpg.Connection, version: str, want: int, timeout: float, proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
    deadline = time.perf_counter() + timeout
    while await _count(conn, version) < want:
        if proc.poll() is not None:
            raise RuntimeError(f"heartbeat service exited with {proc.returncode}")
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{version}: {await _count(conn, version)} of {want} tenants after {timeout}s")
        await asyncio.sleep(0.02)


async def ours(nats_url: str, database_url: str, seeded: list[Seeded], n: int) -> dict[str, float]:
    port = free_port()
    env = dict(os.environ, NATS_URL=nats_url, DATABASE_URL=database_url, SOCTALK_TOKEN_HASH_KEY=KEY,
               SOCTALK_LOG_LEVEL="WARNING", SOCTALK_HTTP_PORT=str(port), SOCTALK_HTTP_HOST="127.0.0.1")
    proc = subprocess.Popen([sys.executable, "-m", "soctalk_heartbeat"], env=env)  # noqa: ASYNC220
    ps = psutil.Process(proc.pid)
    adapters = await Bus.connect(nats_url, name="bench-adapters")
    await adapters.ensure_streams()
    conn = await asyncpg.connect(dsn(database_url))
    pg = await _postmaster(conn)
    k = len(seeded)
    try:
        for attempt in range(30):  # on core NATS nothing waits for a subscriber that is still starting
            await publish_all(adapters, (heartbeat(t, "bench-warm") for t in seeded))
            try:
                await _until(conn, "bench-warm", k, 6 if attempt < 29 else 60, proc)
                break
            except TimeoutError:
                if attempt == 29:
                    raise
        await asyncio.sleep(1.5)  # its loops idle again (flush, cache refresh)
        accepted0 = await _metric(port, "soctalk_heartbeat_accepted_total")
        if stored():  # a backlog in the stream, consumed from the moment the service resumes
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                t_pub = time.perf_counter()
                await publish_all(adapters, backlog(seeded, n))
                publish_s = time.perf_counter() - t_pub
            finally:
                pg0 = _pg_cpu(pg)
                cpu0 = sum(ps.cpu_times()[:2])
                t0 = time.perf_counter()
                os.kill(proc.pid, signal.SIGCONT)
            with profiler(proc.pid, "heartbeat"):
                await _until(conn, "bench-final", k, 600, proc)
        else:  # core NATS: nothing is stored, so the service consumes while the adapters publish
            # Made before the clock starts, as the baseline's are: building each heartbeat (a pydantic
            # model and its JSON, ~15 µs) inside the timed loop put the bench's own CPU on the scale.
            msgs = list(backlog(seeded, n))
            pg0 = _pg_cpu(pg)
            cpu0 = sum(ps.cpu_times()[:2])
            t0 = time.perf_counter()
            with profiler(proc.pid, "heartbeat"):
                for sent in range(0, n, CHUNK):
                    # Keep at most MAX_BACKLOG unread: the service drops what exceeds its pending bound
                    # (and beyond the server's per-client buffer a slow consumer is cut off).
                    while sent - (await _metric(port, "soctalk_heartbeat_accepted_total") - accepted0) > MAX_BACKLOG:
                        await asyncio.sleep(0.05)
                    await publish_all(adapters, msgs[sent:sent + CHUNK])
                publish_s = time.perf_counter() - t0
                del msgs
                # Until every heartbeat is verified, watch the service's counter (cheap); only then poll
                # Postgres for the last flush. Polling Postgres all along (a JSONB count over every tenant
                # each 20 ms) took a good part of a core from the service and Postgres at 10,000 tenants.
                while (await _metric(port, "soctalk_heartbeat_accepted_total") - accepted0 < n
                       and not await _metric(port, "soctalk_heartbeat_dropped_total")
                       and time.perf_counter() - t0 < 600 and proc.poll() is None):
                    await asyncio.sleep(0.05)
                await _until(conn, "bench-final", k, 600, proc)
        elapsed = time.perf_counter() - t0
        cpu = sum(ps.cpu_times()[:2]) - cpu0
        pg_cpu = _pg_delta(pg0, _pg_cpu(pg))
        refused = await _metric(port, "soctalk_heartbeat_refused_total")
        dropped = await _metric(port, "soctalk_heartbeat_dropped_total")
        verified = await _metric(port, "soctalk_heartbeat_accepted_total") - accepted0
    finally:
        await conn.close()
        await adapters.close()
        proc.terminate()
        await asyncio.to_thread(proc.wait, 30)
    # Every heartbeat counts only if the service verified it (core NATS drops what a slow consumer
    # cannot take, and so does the service beyond its pending bound; both would show here).
    return {"per_s": verified / elapsed, "cpu_us": cpu / max(verified, 1) * 1e6, "refused": refused,
            "pg_cpu_us": pg_cpu / max(verified, 1) * 1e6 if pg is not None else -1.0,
            "publish_per_s": n / publish_s, "verified": verified, "dropped": dropped}


async def _postmaster(conn: asyncpg.Connection) -> psutil.Process | None:
    """The Postgres server of this run, when it runs on this machine as a process we can read (the
    bench's own server); None otherwise (an external or containerised one: no Postgres figure)."""
    try:
        backend = psutil.Process(int(await conn.fetchval("SELECT pg_backend_pid()")))
        parent = backend.parent()
        return parent if parent is not None and "postgres" in parent.name() else None
    except (psutil.Error, OSError):
        return None


def _pg_cpu(pg: psutil.Process | None) -> dict[int, float]:
    """CPU seconds (user + system) of every process of that server, by pid."""
    out: dict[int, float] = {}
    if pg is None:
        return out
    for p in [pg, *pg.children()]:
        with contextlib.suppress(psutil.Error):
            out[p.pid] = sum(p.cpu_times()[:2])
    return out


def _pg_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """Postgres CPU spent in between (a backend that exited in between is not counted; the service's
    pooled connections live throughout)."""
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


async def _metric(port: int, name: str) -> float:
    import httpx

    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5)).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


async def run() -> dict[str, float]:
    tenants = 10_000 if FULL else 2_000
    n = 300_000 if FULL else 100_000
    async with servers() as (nats_url, database_url):
        seeded = await seed_tenants(database_url, tenants, KEY.encode())
        msgs = list(backlog(seeded, min(n, 100_000)))
        raw = await raw_pubsub(nats_url, msgs)
        del msgs
        o = await ours(nats_url, database_url, seeded, n)
    assert o["refused"] == 0, f"{o['refused']} heartbeats refused"
    return {"heartbeat.tenants": tenants, "heartbeat.messages": n,
            "heartbeat.raw_per_s": round(raw), "heartbeat.ours_per_s": round(o["per_s"]),
            "heartbeat.ratio": round(o["per_s"] / raw, 3),
            "heartbeat.ours_cpu_us_per_msg": round(o["cpu_us"], 1),
            "heartbeat.postgres_cpu_us_per_msg": round(o["pg_cpu_us"], 1),
            "heartbeat.publish_per_s": round(o["publish_per_s"]), "heartbeat.verified": round(o["verified"]),
            "heartbeat.dropped": round(o["dropped"]),
            "heartbeat.transport": "jetstream" if stored() else "core"}
