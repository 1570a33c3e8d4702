"""``soctalk demo`` (``make demo``): the main job end to end on the embedded stack.

Starts everything, seals a demo LLM key to the install's public key, requests the tenant in
``deploy/examples/tenant-acme.yaml``, prints its lifecycle events live, runs a simulated adapter once the
adapter token exists, and ends with the tenant ``active`` and a summary. Exit 0 only if it got there.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
import uuid
from pathlib import Path
from typing import Any

import typer
import yaml
from soctalk_api import commands as cmds
from soctalk_common.db import models as m
from soctalk_common.settings import REPO_ROOT
from sqlalchemy import select

from soctalk_cli.output import EXIT_FAILED, EXIT_TIMEOUT, console, err_console, table

START_POLL_S = 0.2
EXAMPLE = REPO_ROOT / "deploy" / "examples" / "tenant-acme.yaml"


def demo(
    file: Path = typer.Option(EXAMPLE, "-f", "--file", help="tenant request to provision"),
    kubeconfig: str | None = typer.Option(None, "--kubeconfig", envvar="KUBECONFIG",
                                          help="use this real cluster instead of the emulator"),
    simulate_kubelet: bool | None = typer.Option(None, "--simulate-kubelet/--no-simulate-kubelet",
                                                 help="mark workloads ready (default: only on the emulator)"),
    timeout: float = typer.Option(600, "--timeout", help="seconds to wait for the tenant to become active"),
    keep: bool = typer.Option(False, "--keep", help="keep the stack running afterwards (Ctrl-C to stop)"),
) -> None:
    """Provision the sample tenant end to end on the embedded stack and show its lifecycle."""
    code = asyncio.run(run_demo(file, kubeconfig, simulate_kubelet, timeout, keep))
    raise typer.Exit(code)


async def run_demo(file: Path, kubeconfig: str | None, simulate_kubelet: bool | None, timeout: float,
                   keep: bool) -> int:
    from soctalk_cli.devstack import DevStack

    started = time.monotonic()
    console.print("[bold]starting the embedded stack[/bold] (NATS, Postgres, OpenBao, Kubernetes, services)…")
    ds = DevStack(kubeconfig=kubeconfig, simulate_kubelet=simulate_kubelet)
    try:
        await ds.start()
        table(None, ["part", "where"], [list(r) for r in ds.describe()])
        console.print(f"stack up in {time.monotonic() - started:.1f}s")
        return await provision(ds, file, timeout, keep)
    finally:
        console.print("stopping the stack…")
        await ds.stop()


async def provision(ds: Any, file: Path, timeout: float, keep: bool) -> int:
    from soctalk_common.bus import Bus
    from soctalk_common.db.session import make_engine, make_sessionmaker
    from soctalk_common.sealing import seal
    from soctalk_common.tail import tail_lifecycle

    doc = yaml.safe_load(file.read_text())  # noqa: ASYNC240 - a small local file, read once
    config: dict[str, Any] = copy.deepcopy(doc.get("config", doc))
    request_id = f"demo-{uuid.uuid4().hex[:8]}"
    engine = make_engine(ds.database_url, pool_size=2)
    sm = make_sessionmaker(engine)
    bus = await Bus.connect(ds.nats_url, name="demo")
    sim_task: asyncio.Task[None] | None = None
    stop_sim = asyncio.Event()
    try:
        public_key = await _wait_public_key(sm)
        # The demo's LLM key is sealed here, on the "client" side: only the secrets service can open it.
        config.setdefault("llm", {})["apiKey"] = {"sealed": seal(public_key, "demo-llm-key-" + uuid.uuid4().hex)}
        event = cmds.tenant_requested(config, request_id)
        await cmds.send(bus, event)
        console.print(f"[bold]requested[/bold] tenant {config.get('slug')} ({event.tenant_id})\n")
        t0 = time.monotonic()
        # The adapter starts when its token Secret exists, as its pod would once the chart is installed.
        sim_task = asyncio.create_task(_adapter(ds, sm, event.tenant_id, config["slug"], stop_sim))

        async def follow() -> str:
            async for e in tail_lifecycle(bus, tenant_id=event.tenant_id, follow=True):
                states = f"{e.state_from or '·'} → {e.state_to}" if e.state_to and e.state_to != e.state_from else ""
                console.print(f"  +{time.monotonic() - t0:6.2f}s  {e.type:<22} {states:<26} {e.message}"[:200],
                              markup=False, soft_wrap=True)
                if e.state_to in ("active", "failed"):
                    return e.state_to
            return "unknown"

        try:
            state = await asyncio.wait_for(follow(), timeout)
        except TimeoutError:
            err_console.print(f"[red]timed out after {timeout:.0f}s[/red]; logs in {ds.workdir}/logs")
            return EXIT_TIMEOUT
        await summary(sm, event.tenant_id)
        if state != "active":
            err_console.print(f"[red]tenant ended {state}[/red]; logs in {ds.workdir}/logs")
            return EXIT_FAILED
        console.print(f"\n[green]tenant {config['slug']} is active[/green] "
                      f"({time.monotonic() - t0:.1f}s from request).")
        if keep:
            console.print("stack kept running; Ctrl-C to stop.")
            await asyncio.Event().wait()
        return 0
    finally:
        stop_sim.set()
        if sim_task is not None:
            await asyncio.gather(sim_task, return_exceptions=True)
        await bus.close()
        await engine.dispose()


async def _wait_public_key(sm: Any, timeout: float = 60) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        async with sm() as s:
            key = await s.get(m.SystemKey, "sealing")
        if key is not None:
            return str(key.public_key)
        await asyncio.sleep(START_POLL_S)  # bounded wait while the secrets service starts
    raise RuntimeError("the secrets service did not publish the install's sealing key")


async def _adapter(ds: Any, sm: Any, tenant_id: uuid.UUID, slug: str, stop: asyncio.Event) -> None:
    """The tenant's adapter, as it would run in its namespace: token from its Secret, heartbeat loop."""
    from soctalk_common.gateways.kube import KubeGateway
    from soctalk_heartbeat.simulator import AdapterSimulator, token_from_cluster

    kube = await KubeGateway.from_kubeconfig(ds.kubeconfig_path)
    try:
        while not stop.is_set():
            if await kube.read_secret(f"tenant-{slug}", "adapter-token") is not None:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), START_POLL_S)
        if stop.is_set():
            return
        token = await token_from_cluster(kube, slug)
    finally:
        await kube.close()
    sim = AdapterSimulator(ds.nats_url, tenant_id, token, interval_s=1.0)
    await sim.run(stop)


async def summary(sm: Any, tenant_id: uuid.UUID) -> None:
    async with sm() as s:
        t = await s.get(m.Tenant, tenant_id)
        refs = list((await s.execute(select(m.TenantSecret).where(m.TenantSecret.tenant_id == tenant_id)
                                     .order_by(m.TenantSecret.id))).scalars())
        events = list((await s.execute(select(m.TenantLifecycleEvent)
                                       .where(m.TenantLifecycleEvent.tenant_id == tenant_id)
                                       .order_by(m.TenantLifecycleEvent.id))).scalars())
    if t is None:
        return
    console.print()
    table("tenant", ["field", "value"], [
        ["slug", t.slug], ["state", t.state], ["namespace", f"tenant-{t.slug}"],
        ["release", f"soctalk-tenant revision {t.release_revision}"], ["chart", t.chart_version],
    ])
    table("secrets (references only)", ["where", "name", "key", "version"],
          [[r.namespace or r.path, r.name, r.key, r.version_label] for r in refs])
    # The onboarding steps, each measured from the previous milestone's lifecycle event.
    milestones = [("validate + accept", "TenantAccepted"), ("secrets", "SecretsReady"),
                  ("render + helm install", "HelmInstalled"), ("workloads ready", "ReleaseReady"),
                  ("adapter heartbeat → active", "TenantActivated")]
    first = {}
    for e in events:
        first.setdefault(e.type, e.occurred_at)
    rows, prev = [], events[0].occurred_at if events else None
    for label, type_ in milestones:
        if type_ in first and prev is not None:
            rows.append([label, type_, f"{(first[type_] - prev).total_seconds() * 1000:.0f} ms"])
            prev = first[type_]
    table("time per step", ["step", "lifecycle event", "took"], rows)
