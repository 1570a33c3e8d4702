"""Crash and restart: tenants onboard exactly once while services are SIGKILLed and servers restart.

The whole control plane runs as separate processes (``ReliabilityStack`` = the demo's ``DevStack``)
against real NATS, Postgres and the Kubernetes emulator with its simulated kubelet. Tenants are
requested over the first part of the run, half through the HTTP API and half as bus commands (as the
CLI sends them), each client retrying until its request is acknowledged. Meanwhile a random service
process is SIGKILLed every ``kill_interval_s`` (each service ``kills_per_service`` times, in a shuffled
order) and restarted at once; NATS is stopped and started once and Postgres once, in the middle of the
run. A supervisor starts again any service that exits on its own (e.g. started while NATS was down).
Simulated adapters heartbeat for every tenant once its token Secret exists.

Afterwards every tenant must be ``active`` with exactly one Helm install (revision 1), one set of
secret references at v1 (and the Secrets at v1), each onboarding lifecycle event exactly once in
Postgres and exactly once on the lifecycle stream; no namespace, Helm release, Secret or outbox row
that belongs to nobody; no command or event stored twice on the bus. The captured logs, a pg_dump,
every stream, the Helm release records and every ConfigMap hold none of the tenants' secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from soctalk_api.auth import issue_token
from soctalk_common.bus import EVENTS_STREAM, LIFECYCLE_STREAM, Bus
from soctalk_common.db import models as m
from soctalk_common.db.session import make_engine, make_sessionmaker
from soctalk_common.gateways.helm import HelmGateway
from soctalk_common.gateways.kube import KubeGateway
from soctalk_common.sealing import seal
from sqlalchemy import func, select

from tests.reliability.conftest import SIZES
from tests.reliability.results import record
from tests.support import reliability_scan as scan
from tests.support import reliability_tenants as rt
from tests.support.reliability_stack import FAST_RECOVERY_ENV, SIGNING_KEY, ReliabilityStack
from tests.support.waiting import eventually

pytestmark = pytest.mark.reliability

#: (lifecycle type, step) recorded exactly once per onboarded tenant.
ONCE = [("TenantAccepted", "validate"), ("SecretsReady", "secrets"), ("StepCompleted", "secrets"),
        ("HelmInstalled", "install"), ("ReadinessWaitStarted", "install"), ("ReleaseReady", "install"),
        ("StepCompleted", "chart"), ("TenantActivated", "activate")]
KILLABLE = ["relay", "provisioner", "secrets", "helm-runner", "heartbeat", "api"]


@dataclass
class ChaosRun:
    stack: ReliabilityStack
    requested: list[rt.Requested]
    schedule: list[str]
    seed: int
    fleet: rt.AdapterFleet
    figures: dict[str, Any] = field(default_factory=dict)
    problems: dict[str, list[str]] = field(default_factory=dict)  # tenant slug or "global" → problems
    converged: bool = False


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------


def chaos_schedule(rng: random.Random, kills_per_service: int) -> list[str]:
    """Each service ``kills_per_service`` times, shuffled; one NATS and one Postgres restart inside."""
    kills = [s for s in KILLABLE for _ in range(kills_per_service)]
    rng.shuffle(kills)
    kills.insert(len(kills) // 3, "restart:nats")
    kills.insert(2 * len(kills) // 3, "restart:postgres")
    return kills


class Requester:
    """Requests every tenant once, retrying each until acknowledged (the API may be down, NATS may be
    restarting). Even tenants go through the HTTP API, odd ones are published as the CLI does."""

    def __init__(self, stack: ReliabilityStack, public: str, slugs: list[str], spread_s: float,
                 fleet: rt.AdapterFleet) -> None:
        self.stack, self.public, self.slugs, self.spread_s, self.fleet = stack, public, slugs, spread_s, fleet
        self.requested: list[rt.Requested] = []
        self.retries = Counter[str]()

    async def run(self) -> None:
        bus = await Bus.connect(self.stack.nats_url, name="reliability-requester")
        token = issue_token(SIGNING_KEY, "reliability")
        base = f"http://127.0.0.1:{self.stack.api_port}"
        try:
            async with httpx.AsyncClient(base_url=base, timeout=5,
                                         headers={"Authorization": f"Bearer {token}"}) as api:
                loop = asyncio.get_running_loop()
                start = loop.time()
                for i, slug in enumerate(self.slugs):
                    due = start + self.spread_s * i / max(1, len(self.slugs))
                    await asyncio.sleep(max(0.0, due - loop.time()))  # request cadence, not a race guard
                    via_api = i % 2 == 0
                    req = await (self._via_api(api, slug) if via_api else self._via_bus(bus, slug))
                    self.requested.append(req)
                    self.fleet.add(req.tenant_id, req.slug)  # its adapter starts once its token exists
        finally:
            await bus.close()

    async def _via_api(self, api: httpx.AsyncClient, slug: str) -> rt.Requested:
        key = rt.canary("llm")
        body = {"requestId": f"rel-{slug}", "config": rt.tenant_config(slug, seal(self.public, key))}
        while True:
            try:
                r = await api.post("/api/mssp/tenants", json=body)
                if r.status_code == 202:
                    return rt.Requested(slug, uuid.UUID(r.json()["tenantId"]), body["requestId"], key)
                assert r.status_code >= 500, f"the API refused a valid request: {r.status_code} {r.text}"
            except httpx.HTTPError:
                pass
            self.retries["api"] += 1
            await asyncio.sleep(0.3)  # client retry interval (the API process may be restarting)

    async def _via_bus(self, bus: Bus, slug: str) -> rt.Requested:
        from soctalk_api import commands as cmds

        key = rt.canary("llm")
        event = cmds.tenant_requested(rt.tenant_config(slug, seal(self.public, key)), f"rel-{slug}")
        while True:
            try:
                await cmds.send(bus, event)  # the same event again: JetStream drops the duplicate
                return rt.Requested(slug, event.tenant_id, event.request_id, key)
            except Exception:  # noqa: BLE001 - NATS restarting: retry the same command
                self.retries["bus"] += 1
                await asyncio.sleep(0.3)


async def run_chaos(ds: ReliabilityStack, sizes: Any) -> ChaosRun:
    seed = int(os.environ.get("SOCTALK_CHAOS_SEED") or random.SystemRandom().randrange(2**32))
    rng = random.Random(seed)
    schedule = chaos_schedule(rng, sizes.kills_per_service)
    engine = make_engine(ds.database_url, pool_size=4)
    sm = make_sessionmaker(engine)
    public = await eventually(lambda: rt.public_key(sm), timeout=60, what="the install's sealing key")
    # A bound, not a wait: on a fresh clone (no bytecode yet) six interpreters start at once on 2 cores;
    # one CI run needed more than 60 s here while every later start took well under it.
    await eventually(ds.all_healthy, timeout=180, what="every service answering")

    fleet = rt.AdapterFleet(ds.nats_url, ds.kubeconfig_path)
    chaos_s = len(schedule) * sizes.kill_interval_s
    slugs = [f"c{i:03d}" for i in range(sizes.crash_tenants)]
    requester = Requester(ds, public, slugs, spread_s=0.6 * chaos_s, fleet=fleet)
    stop = asyncio.Event()
    background = [asyncio.create_task(fleet.run(stop)), asyncio.create_task(ds.supervise(stop))]
    req_task = asyncio.create_task(requester.run())
    run = ChaosRun(ds, requester.requested, schedule, seed, fleet)
    outages: dict[str, float] = {}
    t0 = time.monotonic()
    try:
        for action in schedule:
            await asyncio.sleep(sizes.kill_interval_s)  # the kill cadence: a timer between kills
            if action == "restart:nats":
                outages["nats"] = await ds.restart_nats()
            elif action == "restart:postgres":
                outages["postgres"] = await ds.restart_postgres()
            else:
                ds.sigkill(action)
        await req_task
        chaos_done = time.monotonic()
        ids = [t.tenant_id for t in requester.requested]

        async def all_active() -> bool:
            return (await rt.states(sm, ids)).get("active", 0) == len(ids)

        try:
            await eventually(all_active, timeout=sizes.crash_converge_s, what="every tenant active")
            run.converged = True
        except AssertionError:
            run.converged = False
        converged_s = time.monotonic() - chaos_done

        async def quiet() -> bool:
            async with sm() as s:
                unpublished = await s.scalar(select(func.count()).select_from(m.Outbox)
                                             .where(m.Outbox.published_at.is_(None)))
                waiting = await s.scalar(select(func.count()).select_from(m.ReleaseOperation)
                                         .where(m.ReleaseOperation.status == "waiting"))
            return unpublished == 0 and waiting == 0

        with contextlib.suppress(AssertionError):
            await eventually(quiet, timeout=60, what="outbox drained and no release operation waiting")
    finally:
        stop.set()
        await asyncio.gather(*background, return_exceptions=True)
        if not req_task.done():
            req_task.cancel()

    await audit(run, sm)
    run.figures["log_events"] = log_events(ds)
    kills = Counter(a for a in schedule if not a.startswith("restart:"))
    run.figures.update({
        "tenants": len(requester.requested), "active": (await rt.states(sm, ids)).get("active", 0),
        "states": dict(await rt.states(sm, ids)), "seed": seed, "kills": sum(kills.values()),
        "kills_by_service": dict(sorted(kills.items())), "server_restarts": len(outages),
        "server_outage_s": {k: round(v, 2) for k, v in outages.items()},
        "unplanned_restarts": sum(ds.restarts.values()) - sum(kills.values()),
        "unplanned_exits": [f"{name} ({code})" for name, code in ds.exits if code != -9],
        "request_retries": dict(requester.retries), "chaos_s": round(chaos_done - t0, 1),
        "converged_after_chaos_s": round(converged_s, 1), "heartbeats_sent": fleet.beats,
        "heartbeats_failed": fleet.failed_beats,
    })
    await engine.dispose()
    return run


def log_events(ds: ReliabilityStack) -> dict[str, int]:
    """How often the services reported recovering: retries, interruptions, duplicates skipped."""
    wanted = {"handler.retry", "handler.failed", "message.dead_lettered", "relay.interrupted", "relay.leader",
              "heartbeat.pull_failed", "heartbeat.verify_unavailable", "service.started"}
    counts: Counter[str] = Counter()
    for path in (ds.workdir / "logs").glob("*.log"):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    event = json.loads(line).get("event")
                    if event in wanted:
                        counts[event] += 1
            elif line.startswith("Traceback"):
                counts["traceback"] += 1
    return dict(sorted(counts.items()))


async def audit(run: ChaosRun, sm: Any) -> None:
    """Every postcondition, per tenant and global; fills ``run.problems`` and the lost/duplicated figures."""
    ds = run.stack
    ids = {t.tenant_id: t for t in run.requested}
    kube = await KubeGateway.from_kubeconfig(ds.kubeconfig_path)
    helm = HelmGateway(ds.kubeconfig_path)
    bus = await Bus.connect(ds.nats_url, name="reliability-audit")
    lost = duplicated = 0
    try:
        async with sm() as s:
            lc = m.TenantLifecycleEvent
            rows = (await s.execute(select(lc.tenant_id, lc.type, lc.step, lc.event_id))).all()
            refs = list((await s.execute(select(m.TenantSecret))).scalars())
            tenants = {t.id: t for t in (await s.execute(select(m.Tenant))).scalars()}
            ops = list((await s.execute(select(m.ReleaseOperation))).scalars())
            unpublished = await s.scalar(select(func.count()).select_from(m.Outbox)
                                         .where(m.Outbox.published_at.is_(None)))
            dead = (await s.execute(select(lc.type, func.count())
                                    .where(lc.type.in_(["MessageDeadLettered", "EventRejected"]))
                                    .group_by(lc.type))).all()
        per_tenant: dict[uuid.UUID, Counter[tuple[str, str | None]]] = {}
        other_types: Counter[str] = Counter()
        for tid, type_, step, _ in rows:
            per_tenant.setdefault(tid, Counter())[(type_, step)] += 1
            if (type_, step) not in ONCE:
                other_types[type_] += 1

        for tid, req in ids.items():
            problems: list[str] = []
            t = tenants.get(tid)
            if t is None or t.state != "active":
                problems.append(f"state {t.state if t else None} ({t.failed_step if t else ''}: "
                                f"{(t.last_error or '')[:200] if t else ''})")
            counts = per_tenant.get(tid, Counter())
            history = [h.revision for h in await helm.history(rt.RELEASE, f"tenant-{req.slug}")]
            for key in ONCE:
                n = counts.get(key, 0)
                if n != 1:
                    problems.append(f"lifecycle {key[0]}/{key[1]} recorded {n} times")
                    lost += n == 0
                    duplicated += max(0, n - 1)
            if history != [1]:
                problems.append(f"helm history {history}, expected exactly one install (revision 1)")
                duplicated += max(0, len(history) - 1)
                lost += not history
            mine = [r for r in refs if r.tenant_id == tid]
            by_key = Counter((r.namespace or r.path, r.name, r.key) for r in mine)
            if not mine:
                problems.append("no secret references")
                lost += 1
            for where, n in by_key.items():
                if n != 1:
                    problems.append(f"secret reference {where} recorded {n} times")
                    duplicated += n - 1
            if labels := sorted({r.version_label for r in mine} - {"v1"}):
                problems.append(f"secret versions beyond v1: {labels}")
                duplicated += 1
            for r in mine:
                rec = await kube.read_secret(r.namespace or "", r.name) if r.namespace else None
                if rec is None:
                    problems.append(f"referenced Secret {r.namespace}/{r.name} missing")
                elif rec.version_label != "v1" or r.key not in rec.data:
                    problems.append(f"Secret {r.namespace}/{r.name} at {rec.version_label}, key {r.key} "
                                    f"{'present' if r.key in rec.data else 'missing'}")
            if problems:
                run.problems[req.slug] = problems

        glob: list[str] = []
        slugs = {t.slug for t in run.requested}
        namespaces = await scan.tenant_namespaces(kube)
        if orphans := sorted(set(namespaces) - {f"tenant-{s}" for s in slugs}):
            glob.append(f"orphan namespaces {orphans}")
        if missing := sorted({f"tenant-{s}" for s in slugs} - set(namespaces)):
            glob.append(f"missing namespaces {missing}")
        everywhere = ["default", "soctalk-system", *namespaces]
        releases = [name for name, _ in await scan.helm_releases(kube, everywhere)]
        expected = {f"tenant-{s}/sh.helm.release.v1.{rt.RELEASE}.v1" for s in slugs}
        if extra := sorted(set(releases) - expected):
            glob.append(f"orphan Helm release records {extra}")
        referenced = {(r.namespace, r.name) for r in refs}
        for ns in ["soctalk-system", *namespaces]:
            for rec in await kube.list_secrets(ns):
                if rec.labels.get("managed-by") != "soctalk" or "soctalk.io/tenant-id" not in rec.labels:
                    continue  # Helm records and the install's own keys
                if (ns, rec.name) not in referenced:
                    glob.append(f"orphan Secret {ns}/{rec.name} (no reference in Postgres)")
                if uuid.UUID(rec.labels["soctalk.io/tenant-id"]) not in ids:
                    glob.append(f"Secret {ns}/{rec.name} of an unknown tenant")
        if unpublished:
            glob.append(f"{unpublished} outbox rows never published")
        if stray := [t.slug for t in tenants.values() if t.id not in ids]:
            glob.append(f"tenant rows nobody requested: {stray}")
        installs = Counter(o.tenant_id for o in ops if o.operation == "install" and o.status == "succeeded")
        if dup := [ids[t].slug for t, n in installs.items() if n > 1 and t in ids]:
            glob.append(f"tenants installed more than once: {dup}")

        # The bus: every lifecycle row mirrored exactly once; no command or event stored twice.
        lifecycle_msgs = await scan.read_stream(bus, LIFECYCLE_STREAM)
        on_stream = Counter(json.loads(msg.data)["event_id"] for msg in lifecycle_msgs)
        in_pg = {str(r[3]) for r in rows}
        stream_dups = sum(n - 1 for n in on_stream.values() if n > 1)
        stream_lost = len(in_pg - set(on_stream))
        if stream_dups or stream_lost:
            glob.append(f"lifecycle stream: {stream_lost} rows never published, "
                        f"{stream_dups} published twice")
        event_msgs = await scan.read_stream(bus, EVENTS_STREAM)
        msg_ids = Counter(h for msg in event_msgs if (h := msg.headers.get("Nats-Msg-Id")))
        bus_dups = sum(n - 1 for n in msg_ids.values() if n > 1)
        if bus_dups:
            glob.append(f"{bus_dups} messages stored twice on {EVENTS_STREAM} (same Nats-Msg-Id)")
        lost += stream_lost
        duplicated += stream_dups + bus_dups
        if glob:
            run.problems["global"] = glob
        run.figures.update({
            "lost": lost, "duplicated": duplicated, "lifecycle_rows": len(rows),
            "lifecycle_stream_messages": len(lifecycle_msgs), "event_stream_messages": len(event_msgs),
            "other_lifecycle_events": dict(sorted(other_types.items())),
            "dead_lettered_or_rejected": {t: n for t, n in dead},
            "tenants_with_problems": len([k for k in run.problems if k != "global"]),
        })
    finally:
        helm.close()
        await bus.close()
        await kube.close()


# ------------------------------------------------------------------------------------------------
# fixture and tests
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def chaos() -> AsyncIterator[ChaosRun]:
    ds = ReliabilityStack(kubelet_delay_s=0.1,
                          extra_env=FAST_RECOVERY_ENV | {"SOCTALK_JWT_SIGNING_KEY": SIGNING_KEY})
    await ds.start()
    try:
        yield await run_chaos(ds, SIZES)
    finally:
        await ds.stop()
        if not os.environ.get("SOCTALK_RELIABILITY_KEEP"):
            shutil.rmtree(ds.workdir, ignore_errors=True)


async def test_every_tenant_onboards_exactly_once_through_kills_and_restarts(chaos: ChaosRun) -> None:
    record("crash_restart", chaos.figures)
    kills = chaos.figures["kills_by_service"]
    assert all(kills.get(s, 0) >= SIZES.kills_per_service for s in KILLABLE), kills
    assert chaos.figures["server_restarts"] == 2
    assert len(chaos.requested) == SIZES.crash_tenants
    logs = chaos.stack.workdir / "logs"
    detail = "\n".join(f"  {slug}: {'; '.join(p)}" for slug, p in sorted(chaos.problems.items())[:25])
    assert chaos.converged and not chaos.problems, (
        f"seed {chaos.seed} (SOCTALK_CHAOS_SEED to replay), logs in {logs} (SOCTALK_RELIABILITY_KEEP=1 keeps "
        f"them); {chaos.figures['active']}/{len(chaos.requested)} active; problems:\n{detail}")
    assert chaos.figures["lost"] == 0 and chaos.figures["duplicated"] == 0


async def test_no_tenant_secret_leaks_after_the_chaos(chaos: ChaosRun) -> None:
    ds = chaos.stack
    canaries = scan.CanaryIndex()
    kube = await KubeGateway.from_kubeconfig(ds.kubeconfig_path)
    bus = await Bus.connect(ds.nats_url, name="reliability-scan")
    try:
        for t in chaos.requested:
            canaries.add(t.llm_key, f"LLM key of {t.slug}")
            for value, where in (await scan.tenant_material(kube, t.tenant_id, t.slug)).items():
                canaries.add(value, where)
        for value, where in (await scan.install_material(kube)).items():
            canaries.add(value, where)
        report = await scan.scan(canaries, workdir=ds.workdir, database_url=ds.database_url, bus=bus,
                                 kube=kube)
    finally:
        await bus.close()
        await kube.close()
    record("crash_restart_leaks", {
        "canaries": report.canaries, "canary_hits": report.total_hits,
        "canary_hits_by_source": {k: len(v) for k, v in report.hits.items()},
        "searched_chars": report.sources, "helm_releases": report.releases, "configmaps": report.configmaps})
    # ~12 stored values per tenant + its LLM key (some tenants may have failed before their secrets)
    assert report.canaries >= 10 * len(chaos.requested)
    assert report.releases >= 1 and report.sources["logs"] > 0
    assert report.hits == {}, f"secret material found: {report.hits}"
