"""N tenants from TenantRequested to ChartApplied through every service, vs the same N Helm installs.

* ours: the whole control plane as separate processes (``DevStack``: relay, provisioner, secrets,
  helm-runner, heartbeat, api) on NATS + Postgres + OpenBao, against the Kubernetes emulator (or the
  cluster in ``SOCTALK_TEST_KUBECONFIG``) with the simulated kubelet at zero delay. N
  ``TenantRequested`` (the example request, LLM key sealed to the install key as ``make demo`` does)
  are published at once; the figure is first request → last ``ChartApplied`` seen on the bus. Each
  step commits its state, lifecycle rows and events in one transaction and hands over through the
  outbox relay; the helm-runner renders + validates the values, installs and waits for readiness
  (the kubelet makes workloads ready at once). As each ChartApplied arrives the bench plays the
  tenant's adapter (reads its token Secret, heartbeats once), so activation is measured too.
* baseline: the same N Helm installs of the same chart with the same values (those the helm-runner
  rendered for a warm-up tenant, with each tenant's id and slug), at the helm-runner's concurrency,
  called directly through ``HelmGateway`` from their own process (``bench/helm_direct.py``), against
  the same API server, into namespaces created beforehand (not timed). Run before ours; its
  namespaces are deleted before ours starts, so both meet an API server holding the same data.

Per-step p50/p99 come from the lifecycle rows' commit times (``occurred_at``):
validate = TenantRequested → TenantAccepted, secrets = → SecretsReady, install = SecretsReady →
ReadinessWaitStarted (the helm-runner's render + validation + helm install; render alone is the
render scenario's per-tenant figure), ready = → ChartApplied, activate = ChartApplied →
TenantActivated (includes our stand-in adapter reading its token and sending one heartbeat).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import asyncpg
import yaml
from nats.js.api import DeliverPolicy
from soctalk_api import commands as cmds
from soctalk_common import charts
from soctalk_common import events as ev
from soctalk_common.bus import Bus
from soctalk_common.gateways.helm import HelmGateway
from soctalk_common.gateways.kube import KubeGateway
from soctalk_common.memory import helm_go_env
from soctalk_common.sealing import seal

from bench.common import FULL, perf_window, profiler, summary
from bench.seed import EXAMPLE, dsn
from bench.stackrun import dead, devstack, peak_rss_mb

RELEASE = "soctalk-tenant"
STEPS = [("validate", "TenantRequested", "TenantAccepted"), ("secrets", "TenantAccepted", "SecretsReady"),
         ("install", "SecretsReady", "HelmInstalled"), ("ready", "HelmInstalled", "ReleaseReady"),
         ("activate", "ReleaseReady", "TenantActivated")]


class Run:
    """Requests N tenants and follows them on the bus (ChartApplied, TenantActivated, failures)."""

    def __init__(self, ds: Any, bus: Bus, kube: KubeGateway, public_key: str) -> None:
        self.ds, self.bus, self.kube, self.public_key = ds, bus, kube, public_key
        self.applied: dict[str, float] = {}
        self.activated: dict[str, float] = {}
        self.failed: dict[str, str] = {}
        self.slugs: dict[str, str] = {}
        self.requested: dict[str, datetime] = {}
        self._adapters: list[asyncio.Task[None]] = []
        self._changed = asyncio.Event()

    async def start(self) -> None:
        self.sub = await self.bus.js.subscribe("soctalk.tenant.>", ordered_consumer=True, cb=self._on_msg,
                                               deliver_policy=DeliverPolicy.NEW)

    async def _on_msg(self, msg: Any) -> None:
        parts = msg.subject.split(".")
        if len(parts) != 4:
            return
        tid, typ = parts[2], parts[3]
        if tid not in self.slugs:
            return
        now = time.perf_counter()
        if typ == "ChartApplied" and tid not in self.applied:
            self.applied[tid] = now
            self._adapters.append(asyncio.create_task(self._adapter(tid)))
        elif typ == "TenantActivated":
            self.activated.setdefault(tid, now)
        elif typ in ("TenantRejected", "ChartFailed", "TenantFailed"):
            self.failed[tid] = typ
        self._changed.set()

    async def _adapter(self, tid: str) -> None:
        """The tenant's adapter: its token from the Secret the chart mounts, one heartbeat."""
        ns = f"tenant-{self.slugs[tid]}"
        for _ in range(200):
            rec = await self.kube.read_secret(ns, "adapter-token")
            if rec is not None:
                break
            await asyncio.sleep(0.05)
        else:
            return
        hb = ev.AdapterHeartbeat(tenant_id=uuid.UUID(tid), adapter_version="bench-1.0.0", status="ok",
                                 components={c: ev.ComponentHealth(status="ok") for c in ("wazuh", "thehive",
                                                                                          "cortex")})
        await self.bus.publish(hb.subject, hb.model_dump_json().encode(), msg_id=str(hb.event_id),
                               headers={"Authorization": f"Bearer {rec.data['token'].strip()}"})

    def requests(self, slugs: list[str]) -> list[ev.TenantRequested]:
        base = yaml.safe_load(EXAMPLE.read_text())["config"]
        out = []
        for slug in slugs:
            config = json.loads(json.dumps(base))
            config.update(slug=slug, displayName=f"Bench {slug}")
            config["wazuhIngress"]["hostname"] = f"{slug}.soc.mssp.example.com"
            config["llm"]["apiKey"] = {"sealed": seal(self.public_key, "bench-llm-key-" + uuid.uuid4().hex)}
            e = cmds.tenant_requested(config, f"bench-{slug}-{uuid.uuid4().hex[:6]}")
            self.slugs[str(e.tenant_id)] = slug
            self.requested[str(e.tenant_id)] = e.occurred_at
            out.append(e)
        return out

    async def provision(self, slugs: list[str] | list[ev.TenantRequested],
                        timeout: float) -> tuple[float, list[str]]:  # noqa: ASYNC109
        """Publish the requests at once; seconds until the last ChartApplied, and the tenant ids.
        ``slugs`` may be requests built beforehand (so building them is not counted as ours)."""
        reqs = [r for r in slugs if not isinstance(r, str)] or self.requests(slugs)  # type: ignore[arg-type]
        sent = datetime.now(UTC)  # requests built earlier are stamped as sent now (the validate step)
        reqs = [r.model_copy(update={"occurred_at": sent}) for r in reqs]
        self.requested.update({str(r.tenant_id): sent for r in reqs})
        ids = [str(r.tenant_id) for r in reqs]
        t0 = time.perf_counter()
        futs = [await self.bus.js.publish_async(r.subject, r.model_dump_json().encode(),
                                                headers={"Nats-Msg-Id": str(r.event_id)}) for r in reqs]
        await asyncio.gather(*futs)
        deadline = t0 + timeout
        while not all(i in self.applied or i in self.failed for i in ids):
            down = dead(self.ds)
            if down:
                raise RuntimeError(f"services died: {down}")
            if time.perf_counter() > deadline:
                left = len([i for i in ids if i not in self.applied])
                raise TimeoutError(f"{left} of {len(ids)} tenants had no ChartApplied after {timeout}s "
                                   f"(logs: {self.ds.workdir}/logs)")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 1.0)
        failed = {i: self.failed[i] for i in ids if i in self.failed and i not in self.applied}
        if failed:
            raise RuntimeError(f"{len(failed)} tenants failed: {list(failed.values())[:5]} "
                               f"(logs: {self.ds.workdir}/logs)")
        return max(self.applied[i] for i in ids) - t0, ids

    async def activations(self, ids: list[str], timeout: float) -> int:  # noqa: ASYNC109
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline and not all(i in self.activated for i in ids):
            await asyncio.sleep(0.1)
        return sum(1 for i in ids if i in self.activated)


def cpu_by_process(ds: Any) -> dict[str, float]:
    """CPU seconds (user + system) so far of every process of this stack, by role."""
    import psutil

    out: dict[str, float] = defaultdict(float)
    me = psutil.Process()
    out["bench (emulator, kubelet, adapters)"] = sum(me.cpu_times()[:2])
    for name, p in ds.procs.items():
        with contextlib.suppress(psutil.Error):
            out[name] = sum(psutil.Process(p.pid).cpu_times()[:2])
    for srv in getattr(ds, "_owned", []):
        try:
            if type(srv).__name__ == "NatsServer" and srv.proc is not None:
                out["nats-server"] += sum(psutil.Process(srv.proc.pid).cpu_times()[:2])
            elif type(srv).__name__ == "PostgresServer":
                pid = int((srv.data_root / "data" / "postmaster.pid").read_text().split()[0])
                master = psutil.Process(pid)
                # Backends that already exited are counted in the postmaster's children times.
                t = master.cpu_times()
                out["postgres"] += t.user + t.system + t.children_user + t.children_system
                out["postgres"] += sum(sum(c.cpu_times()[:2]) for c in master.children())
        except (psutil.Error, OSError, ValueError):
            pass
    return dict(out)


def stack_roles(ds: Any) -> dict[str, int]:
    """pid of every process of the stack by role (the bench process: emulator, kubelet, adapters)."""
    roles = {name: p.pid for name, p in ds.procs.items()}
    roles["bench"] = os.getpid()
    for srv in getattr(ds, "_owned", []):
        proc = getattr(srv, "proc", None)
        if type(srv).__name__ == "NatsServer" and proc is not None:
            roles["nats-server"] = proc.pid
        elif type(srv).__name__ == "PostgresServer":
            with contextlib.suppress(OSError, ValueError):
                roles["postgres"] = int((srv.data_root / "data" / "postmaster.pid").read_text().split()[0])
    return roles


async def public_key(database_url: str, timeout: float = 60) -> str:  # noqa: ASYNC109
    conn = await asyncpg.connect(dsn(database_url))
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            key = await conn.fetchval("SELECT public_key FROM system_keys WHERE name = 'sealing'")
            if key:
                return str(key)
            await asyncio.sleep(0.2)
    finally:
        await conn.close()
    raise TimeoutError("the secrets service did not publish the sealing key")


async def per_step(database_url: str, ids: list[str]) -> dict[str, dict[str, float]]:
    conn = await asyncpg.connect(dsn(database_url))
    try:
        rows = await conn.fetch("SELECT tenant_id, type, occurred_at FROM tenant_lifecycle_events "
                                "WHERE tenant_id = ANY($1::uuid[]) ORDER BY id", ids)
        # TenantRequested has no lifecycle row of its own: the request's occurred_at (set when sent).
        firsts: dict[str, dict[str, datetime]] = defaultdict(dict)
        for r in rows:
            firsts[str(r["tenant_id"])].setdefault(r["type"], r["occurred_at"])
    finally:
        await conn.close()
    return firsts  # type: ignore[return-value]


def fill_drain(firsts: dict[str, dict[str, datetime]], sent: datetime) -> dict[str, float]:
    """How long the pipeline takes to fill (requests sent → the first tenant's SecretsReady, when the
    helm-runner can start its first install; the baseline starts installing at once) and, at the end,
    the last HelmInstalled → the last ChartApplied (the readiness wait and hand-over after the last install)."""
    def mark(kind: str, pick: Any) -> datetime | None:
        found = [m[kind] for m in firsts.values() if kind in m]
        return pick(found) if found else None
    out: dict[str, float] = {}
    first_ready = mark("SecretsReady", min)
    if first_ready is not None:
        out["fill_s"] = round((first_ready - sent).total_seconds(), 2)
    last_installed, last_applied = mark("HelmInstalled", max), mark("ReleaseReady", max)
    if last_installed is not None and last_applied is not None:
        out["drain_s"] = round((last_applied - last_installed).total_seconds(), 2)
    return out


def step_summary(firsts: dict[str, dict[str, datetime]], requested: dict[str, datetime]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, a, b in STEPS:
        vals = []
        for tid, marks in firsts.items():
            start = requested.get(tid) if a == "TenantRequested" else marks.get(a)
            end = marks.get(b)
            if start is not None and end is not None:
                vals.append((end - start).total_seconds() * 1e3)
        if vals:
            s = summary(vals)
            out[name] = {"p50": round(s["p50"], 1), "p99": round(s["p99"], 1), "n": len(vals)}
    return out


async def replay_render(database_url: str, ids: list[str]) -> list[float]:
    """The helm-runner's render step (``render_values`` + ``charts.validate_values``) on each tenant's
    stored record and references, timed here: the step has no lifecycle row of its own."""
    from soctalk_common.db.session import make_engine, make_sessionmaker
    from soctalk_common.settings import Settings
    from soctalk_common.uow import UnitOfWorkFactory
    from soctalk_helm_runner import records
    from soctalk_helm_runner.values import ClusterFeatures, render_values

    engine = make_engine(database_url, pool_size=2)
    uow = UnitOfWorkFactory(make_sessionmaker(engine))
    settings = Settings()
    features = ClusterFeatures(cilium=False, cert_manager=False)  # what the emulator serves
    chart = charts.chart_dir(charts.TENANT_CHART)
    out = []
    try:
        for tid in ids:
            tenant = await records.tenant_view(uow, uuid.UUID(tid))
            refs = await records.secret_refs(uow, uuid.UUID(tid))
            t = time.perf_counter()
            values = render_values(tenant, refs, settings, features=features)
            errors = charts.validate_values(chart, values)
            out.append((time.perf_counter() - t) * 1e3)
            assert not errors, errors
    finally:
        await engine.dispose()
    return out


async def baseline(ds: Any, template: dict[str, Any], warm_id: str, warm_slug: str, n: int) -> dict[str, Any]:
    """The same installs, directly, from their own process (bench/helm_direct.py)."""
    kube = await KubeGateway.from_kubeconfig(ds.kubeconfig_path)
    jobs = []
    text = json.dumps(template)
    try:
        for i in range(n):
            slug, tid = f"raw-{i:05d}", str(uuid.uuid4())
            values = json.loads(text.replace(warm_id, tid).replace(warm_slug, slug))
            await kube.ensure_namespace(f"tenant-{slug}", {})
            jobs.append({"release": RELEASE, "namespace": f"tenant-{slug}", "values": values})
    finally:
        await kube.close()
    chart = str(charts.chart_dir(charts.TENANT_CHART))
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(jobs, f)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.helm_direct", ds.kubeconfig_path, chart, f.name,
            stdout=asyncio.subprocess.PIPE, env=raw_env(ds))
        out, _ = await proc.communicate()
    finally:
        os.unlink(f.name)
    if proc.returncode != 0:
        raise RuntimeError(f"helm_direct exited with {proc.returncode}")
    return json.loads(out.decode().strip().splitlines()[-1])


def raw_env(ds: Any) -> dict[str, str]:
    """The baseline's environment: the same Go runtime settings as the helm-runner's (GOGC), so the
    ratio compares the pipeline with the same Helm, not a tuned Helm with an untuned one."""
    env = dict(os.environ, KUBECONFIG=ds.kubeconfig_path)
    return env | helm_go_env(env)


async def remove_baseline(kube: KubeGateway, n: int) -> None:
    """Delete the baseline's namespaces (and with them its releases and objects) before ours runs, so
    both sides meet an API server holding the same amount of data: the emulator's list requests get
    slower with every object it stores, in any namespace (not timed)."""
    names = [f"tenant-raw-{i:05d}" for i in range(n)]
    for i in range(0, n, 50):
        await asyncio.gather(*(kube.delete_namespace(ns) for ns in names[i:i + 50]))
    deadline = time.monotonic() + 300
    for ns in names:
        while await kube.namespace_exists(ns) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)


async def scenario(n: int, kubeconfig: str | None, timeout: float) -> dict[str, Any]:  # noqa: ASYNC109
    async with devstack(kubeconfig=kubeconfig) as ds:
        bus = await Bus.connect(ds.nats_url, name="bench-pipeline")
        kube = await KubeGateway.from_kubeconfig(ds.kubeconfig_path)
        try:
            run = Run(ds, bus, kube, await public_key(ds.database_url))
            await run.start()
            # Warm-up: two tenants through every service (connections, caches, imports), and the
            # values the helm-runner rendered, as the baseline's template.
            _, warm = await run.provision(["warm-0", "warm-1"], 180)
            warm_slug = run.slugs[warm[0]]
            template = await HelmGateway(ds.kubeconfig_path).values(RELEASE, f"tenant-{warm_slug}")
            ours_requests = run.requests([f"bench-{i:05d}" for i in range(n)])  # built outside both windows
            c0 = cpu_by_process(ds)
            with perf_window("pipeline-raw", stack_roles(ds)):
                raw = await baseline(ds, template, warm[0], warm_slug, n)
            c1 = cpu_by_process(ds)
            await remove_baseline(kube, n)
            with contextlib.ExitStack() as spies:  # BENCH_PROFILE=1: every service, while ours runs
                for name, proc in ds.procs.items():
                    spies.enter_context(profiler(proc.pid, f"pipeline-{name}"))
                spies.enter_context(profiler(os.getpid(), "pipeline-bench"))  # the emulator, kubelet, adapters
                spies.enter_context(perf_window("pipeline-ours", stack_roles(ds)))
                ours_s, ids = await run.provision(ours_requests, timeout)
            c2 = cpu_by_process(ds)
            activated = await run.activations(ids, 120)
            # Each service's peak resident set over the whole scenario (the memory scenario's rows-only
            # window has no Helm work; here the helm-runner installs 16 at a time).
            peaks = {name: round(peak_rss_mb(p.pid), 1) for name, p in ds.procs.items()}
            firsts = await per_step(ds.database_url, ids)
            render_ms = await replay_render(ds.database_url, ids[:100])
        finally:
            await kube.close()
            await bus.close()
    steps = step_summary(firsts, run.requested)
    edges = fill_drain(firsts, min(run.requested[i] for i in ids))
    r = summary(render_ms)
    steps = {"validate": steps.get("validate"), "secrets": steps.get("secrets"),
             "render": {"p50": round(r["p50"], 1), "p99": round(r["p99"], 1), "n": len(render_ms)},
             **{k: v for k, v in steps.items() if k not in ("validate", "secrets")}}
    cpu_ours = {k: round(v - c1.get(k, 0.0), 1) for k, v in c2.items() if v - c1.get(k, 0.0) >= 0.05}
    cpu_raw = {k: round(v - c0.get(k, 0.0), 1) for k, v in c1.items() if v - c0.get(k, 0.0) >= 0.05}
    cpu_raw["helm_direct (child)"] = round(raw.get("cpu_s", 0.0), 1)
    return {"ours_s": ours_s, "raw_s": raw["elapsed_s"], "raw_install": summary(raw["install_ms"]), "peaks": peaks,
            "activated": activated, "steps": steps, "edges": edges, "cpu_ours": cpu_ours, "cpu_raw": cpu_raw}


async def run() -> dict[str, Any]:
    n = 1000 if FULL else 100
    out: dict[str, Any] = {}
    r = await scenario(n, None, 900 if FULL else 300)
    key = "pipeline"
    out[f"{key}.tenants"] = n
    out[f"{key}.ours_s"] = round(r["ours_s"], 2)
    out[f"{key}.raw_s"] = round(r["raw_s"], 2)
    out[f"{key}.ratio"] = round(r["ours_s"] / r["raw_s"], 3)
    out[f"{key}.ours_tenants_per_s"] = round(n / r["ours_s"], 2)
    out[f"{key}.raw_install_ms"] = r["raw_install"]
    out[f"{key}.per_step_ms"] = r["steps"]
    out[f"{key}.fill_drain_s"] = r["edges"]
    out[f"{key}.activated"] = r["activated"]
    # CPU seconds by process while each side ran (other load on the machine does not inflate these).
    out[f"{key}.cpu_s_ours"] = r["cpu_ours"]
    out[f"{key}.cpu_s_raw"] = r["cpu_raw"]
    out[f"{key}.cpu_ratio"] = round(sum(r["cpu_ours"].values()) / sum(r["cpu_raw"].values()), 3)
    out[f"{key}.peak_rss_mb"] = r["peaks"]
    if n == 1000:
        out[f"{key}.tenants_1000_s"] = round(r["ours_s"], 1)
    if cluster := os.environ.get("SOCTALK_TEST_KUBECONFIG"):
        c = await scenario(min(n, 50), cluster, 900)
        out["pipeline.cluster.tenants"] = min(n, 50)
        out["pipeline.cluster.ours_s"] = round(c["ours_s"], 2)
        out["pipeline.cluster.raw_s"] = round(c["raw_s"], 2)
        out["pipeline.cluster.ratio"] = round(c["ours_s"] / c["raw_s"], 3)
        out["pipeline.cluster.per_step_ms"] = c["steps"]
    return out
