"""Verified heartbeats per second (token check + durable ``last_seen``) vs raw nats-py core pub→sub.

* ours: the real service process (``python -m soctalk_heartbeat``, default settings) over ``tenants``
  active tenants seeded with real adapter tokens. Warm-up: one heartbeat per tenant (token cache and
  per-tenant views loaded, as in steady state). Then, per round, ``n`` heartbeats round-robin
  over the tenants on core NATS (a stream would store the bearer tokens they carry): the adapters
  publish them (made beforehand, as the baseline's are) as fast as they can, never more than
  ``MAX_BACKLOG`` + ``CHUNK`` ahead of the service, while it consumes; the figure is heartbeats /
  (first publish → the last heartbeat of every tenant verified and its ``last_seen`` committed). The
  round's last heartbeat of each tenant carries ``adapter_version = bench-final-<round>``, so "done" is
  one exact query on ``heartbeat_state``; it includes the last flush (``heartbeat_flush_s``, 1 s). The
  service's CPU time per message is reported too (robust to other load on the machine).
* raw: the same payload and Authorization header published with nats-py core ``publish`` on one
  connection and received by a callback subscriber on another, no JetStream, no checks:
  ``n`` / (first publish → last message received).
* Rounds alternate raw, ours, raw, ours, … (``ROUNDS`` each) and ``heartbeat.ratio`` is the median of
  the per-round ratios: the host's speed drifts by tens of percent within minutes on these machines,
  and a single raw phase followed by a single ours phase measured that drift as often as the service.
  ``heartbeat.round_ratios`` lists them all.

``BENCH_PROFILE=1`` samples the service with py-spy during the timed phases (if installed) and writes
the collapsed stacks to ``bench/results/profile-heartbeat.txt``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
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


def backlog(seeded: list[Seeded], n: int, final: str = "bench-final") -> Iterator[Msg]:
    """``n`` heartbeats round-robin over the tenants; the last one of each tenant is tagged ``final``.
    Each tenant's header dict is shared by its messages (nothing mutates it; less bench memory)."""
    k = len(seeded)
    headers = [{"Authorization": f"Bearer {t.token}"} for t in seeded]
    for i in range(n):
        subject, body, _ = heartbeat(seeded[i % k], final if i >= n - k else "bench-1.0.0")
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


class Service:
    """The heartbeat service process, started and warmed up once; ``timed_round`` measures one round."""

    def __init__(self, nats_url: str, database_url: str, seeded: list[Seeded]) -> None:
        self.nats_url, self.database_url, self.seeded = nats_url, database_url, seeded
        self.port = free_port()

    async def __aenter__(self) -> Service:
        env = dict(os.environ, NATS_URL=self.nats_url, DATABASE_URL=self.database_url, SOCTALK_TOKEN_HASH_KEY=KEY,
                   SOCTALK_LOG_LEVEL="WARNING", SOCTALK_HTTP_PORT=str(self.port), SOCTALK_HTTP_HOST="127.0.0.1")
        self.proc = subprocess.Popen([sys.executable, "-m", "soctalk_heartbeat"], env=env)  # noqa: ASYNC220
        self.ps = psutil.Process(self.proc.pid)
        self.adapters = await Bus.connect(self.nats_url, name="bench-adapters")
        await self.adapters.ensure_streams()
        self.conn = await asyncpg.connect(dsn(self.database_url))
        self.pg = await _postmaster(self.conn)
        k = len(self.seeded)
        try:
            for attempt in range(30):  # on core NATS nothing waits for a subscriber that is still starting
                await publish_all(self.adapters, (heartbeat(t, "bench-warm") for t in self.seeded))
                try:
                    await _until(self.conn, "bench-warm", k, 6 if attempt < 29 else 60, self.proc)
                    break
                except TimeoutError:
                    if attempt == 29:
                        raise
            await self._quiet()  # its loops idle again (flush, cache refresh) before anything is timed
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def _quiet(self, window_s: float = 0.25, busy_s: float = 0.02, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Until the service used less than ``busy_s`` of CPU over a ``window_s`` window (deadline
        ``timeout``): the warm-up's flush and cache loads are over."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline and self.proc.poll() is None:
            before = sum(self.ps.cpu_times()[:2])
            await asyncio.sleep(window_s)
            if sum(self.ps.cpu_times()[:2]) - before < busy_s:
                return
        raise TimeoutError(f"the heartbeat service did not go quiet within {timeout:g}s after the warm-up")

    async def __aexit__(self, *exc: object) -> None:
        await self.conn.close()
        await self.adapters.close()
        self.proc.terminate()
        await asyncio.to_thread(self.proc.wait, 30)

    async def metric(self, name: str) -> float:
        return await _metric(self.port, name)

    async def timed_round(self, n: int, final: str) -> dict[str, float]:
        proc, k = self.proc, len(self.seeded)
        accepted0 = await self.metric("soctalk_heartbeat_accepted_total")
        # Made before the clock starts, as the baseline's are: building each heartbeat (a pydantic
        # model and its JSON, ~15 µs) inside the timed loop put the bench's own CPU on the scale.
        msgs = list(backlog(self.seeded, n, final))
        pg0 = _pg_cpu(self.pg)
        cpu0 = sum(self.ps.cpu_times()[:2])
        t0 = time.perf_counter()
        with profiler(proc.pid, "heartbeat"):
            for sent in range(0, n, CHUNK):
                # Keep at most MAX_BACKLOG unread: the service drops what exceeds its pending bound
                # (and beyond the server's per-client buffer a slow consumer is cut off).
                while sent - (await self.metric("soctalk_heartbeat_accepted_total") - accepted0) > MAX_BACKLOG:
                    await asyncio.sleep(0.05)
                await publish_all(self.adapters, msgs[sent:sent + CHUNK])
            publish_s = time.perf_counter() - t0
            del msgs
            # Until every heartbeat is verified, watch the service's counter (cheap); only then poll
            # Postgres for the last flush. Polling Postgres all along (a JSONB count over every tenant
            # each 20 ms) took a good part of a core from the service and Postgres at 10,000 tenants.
            while (await self.metric("soctalk_heartbeat_accepted_total") - accepted0 < n
                   and not await self.metric("soctalk_heartbeat_dropped_total")
                   and time.perf_counter() - t0 < 600 and proc.poll() is None):
                await asyncio.sleep(0.05)
            await _until(self.conn, final, k, 600, proc)
        elapsed = time.perf_counter() - t0
        cpu = sum(self.ps.cpu_times()[:2]) - cpu0
        pg_cpu = _pg_delta(pg0, _pg_cpu(self.pg))
        verified = await self.metric("soctalk_heartbeat_accepted_total") - accepted0
        # Every heartbeat counts only if the service verified it (core NATS drops what a slow consumer
        # cannot take, and so does the service beyond its pending bound; both would show here).
        return {"per_s": verified / elapsed, "cpu_s": cpu, "pg_cpu_s": pg_cpu if self.pg is not None else -1.0,
                "publish_s": publish_s, "verified": verified, "n": n}


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


ROUNDS = 3


async def run() -> dict[str, float]:
    tenants = 10_000 if FULL else 2_000
    n = 300_000 if FULL else 100_000
    per_round = n  # each round the whole figure: its one final flush weighs as it did in a single run
    async with servers() as (nats_url, database_url):
        seeded = await seed_tenants(database_url, tenants, KEY.encode())
        raw_msgs = list(backlog(seeded, min(per_round, 100_000)))
        raws: list[float] = []
        rounds: list[dict[str, float]] = []
        async with Service(nats_url, database_url, seeded) as svc:
            for r in range(ROUNDS):  # raw, ours, raw, ours, …: both meet the same host minutes
                raws.append(await raw_pubsub(nats_url, raw_msgs))
                rounds.append(await svc.timed_round(per_round, f"bench-final-{r}"))
            refused = await svc.metric("soctalk_heartbeat_refused_total")
            dropped = await svc.metric("soctalk_heartbeat_dropped_total")
    assert refused == 0, f"{refused} heartbeats refused"
    ratios = [o["per_s"] / raw for o, raw in zip(rounds, raws, strict=True)]
    verified = sum(o["verified"] for o in rounds)
    pg = [o["pg_cpu_s"] for o in rounds]
    return {"heartbeat.tenants": tenants, "heartbeat.messages": per_round * ROUNDS,
            "heartbeat.rounds": ROUNDS,
            "heartbeat.raw_per_s": round(statistics.median(raws)),
            "heartbeat.ours_per_s": round(statistics.median(o["per_s"] for o in rounds)),
            "heartbeat.ratio": round(statistics.median(ratios), 3),
            "heartbeat.round_ratios": [round(x, 3) for x in ratios],
            "heartbeat.ours_cpu_us_per_msg": round(sum(o["cpu_s"] for o in rounds) / max(verified, 1) * 1e6, 1),
            "heartbeat.postgres_cpu_us_per_msg": round(sum(pg) / max(verified, 1) * 1e6, 1) if min(pg) >= 0 else -1.0,
            "heartbeat.publish_per_s": round(per_round * ROUNDS / sum(o["publish_s"] for o in rounds)),
            "heartbeat.verified": round(verified), "heartbeat.dropped": round(dropped),
            "heartbeat.transport": "jetstream" if stored() else "core"}
