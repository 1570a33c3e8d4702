"""Command groups: tenants, secrets, compat, keys, charts, dev, adapter, demo."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import typer
import yaml
from soctalk_api import commands as cmds
from soctalk_common import events as ev
from soctalk_common.db import models as m
from soctalk_common.errors import ValidationFailed
from sqlalchemy import select

from soctalk_cli.context import Conn, connect, find_tenant
from soctalk_cli.output import (
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    Output,
    console,
    emit_json,
    err_console,
    table,
)

tenants = typer.Typer(help="Request and operate tenants.", no_args_is_help=True)
secrets_app = typer.Typer(help="Tenant secrets (references only; material never printed).", no_args_is_help=True)
compat_app = typer.Typer(help="Chart compatibility matrix.", no_args_is_help=True)
keys_app = typer.Typer(help="Install keys.", no_args_is_help=True)
charts_app = typer.Typer(help="The soctalk-system and soctalk-tenant charts.", no_args_is_help=True)
dev_app = typer.Typer(help="The embedded development stack.", no_args_is_help=True)
adapter_app = typer.Typer(help="Tenant adapter tools.", no_args_is_help=True)

TERMINAL_OK = {"active"}
TERMINAL_BAD = {"failed"}


def register(app: typer.Typer) -> None:
    app.add_typer(tenants, name="tenants")
    app.add_typer(secrets_app, name="secrets")
    app.add_typer(compat_app, name="compat")
    app.add_typer(keys_app, name="keys")
    app.add_typer(charts_app, name="charts")
    app.add_typer(dev_app, name="dev")
    app.add_typer(adapter_app, name="adapter")
    from soctalk_cli.demo import demo

    app.command("demo")(demo)


# ---------------------------------------------------------------------------------------------------
# tenants
# ---------------------------------------------------------------------------------------------------


def load_request_file(path: Path) -> tuple[dict[str, Any], str | None]:
    """A tenant request file: YAML or JSON with ``config`` (and optional ``requestId``), or a bare config."""
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        err_console.print(f"[red]error:[/red] {path}: no such file")
        raise typer.Exit(EXIT_USAGE) from None
    except UnicodeDecodeError as exc:
        err_console.print(f"[red]error:[/red] {path}: not UTF-8 text (byte {exc.start})")
        raise typer.Exit(EXIT_USAGE) from None
    except IsADirectoryError:
        err_console.print(f"[red]error:[/red] {path}: is a directory")
        raise typer.Exit(EXIT_USAGE) from None
    except yaml.YAMLError as exc:
        err_console.print(f"[red]error:[/red] {path}: not valid YAML/JSON ({str(exc).splitlines()[0]})")
        raise typer.Exit(EXIT_USAGE) from None
    if not isinstance(doc, dict):
        err_console.print(f"[red]error:[/red] {path}: $ must be a mapping")
        raise typer.Exit(EXIT_USAGE)
    if "config" in doc:
        rid = doc.get("requestId")
        if rid is not None and not isinstance(rid, str):
            err_console.print(f"[red]error:[/red] {path}: $.requestId must be a string")
            raise typer.Exit(EXIT_USAGE)
        return doc["config"], rid
    return doc, None


def _fail_validation(path: Path, exc: ValidationFailed) -> None:
    err_console.print(f"[red]error:[/red] {path} is not a valid tenant request:")
    for p, msg in exc.errors:
        err_console.print(f"  {p}: {msg}")
    raise typer.Exit(EXIT_USAGE)


@tenants.command("request")
def tenants_request(
    file: Path = typer.Option(..., "-f", "--file", help="tenant request (YAML or JSON)"),
    request_id: str | None = typer.Option(None, "--request-id", help="idempotency key (default: from file or new)"),
    wait: bool = typer.Option(False, "--wait", help="wait until the tenant is active or failed"),
    timeout: float = typer.Option(1800, "--timeout", help="seconds to wait with --wait"),
    output: Output = typer.Option(Output.text, "--output", "-o"),
) -> None:
    """Request a new tenant (publishes TenantRequested)."""
    config, rid = load_request_file(file)
    try:
        event = cmds.tenant_requested(config, request_id or rid)
    except ValidationFailed as exc:
        _fail_validation(file, exc)
        return
    asyncio.run(_send_and_maybe_wait(event, wait, timeout, output))


async def _send_and_maybe_wait(event: ev.Event, wait: bool, timeout: float, output: Output,
                               ok_states: set[str] | None = None) -> None:
    async with connect(db=wait, nats=True) as conn:
        assert conn.bus is not None
        await cmds.send(conn.bus, event)
        result = {"tenant_id": str(event.tenant_id), "event_id": str(event.event_id), "event_type": event.event_type}
        if output is Output.json and not wait:
            emit_json(result)
        elif not wait:
            console.print(f"{event.event_type} sent for tenant {event.tenant_id} (event {event.event_id})")
        if wait:
            state = await wait_for_state(conn, event.tenant_id, ok_states or TERMINAL_OK, timeout,
                                         progress=output is Output.text)
            if output is Output.json:
                emit_json(result | {"state": state})
            if state in TERMINAL_BAD:
                raise typer.Exit(EXIT_FAILED)


async def wait_for_state(conn: Conn, tenant_id: uuid.UUID, ok: set[str], timeout: float, *,
                         progress: bool) -> str:
    """Follow the tenant's state with a spinner until it reaches ``ok`` or ``failed``; driven by the
    lifecycle stream (no fixed polling interval), re-reading the row on each event."""
    from rich.status import Status
    from soctalk_common.tail import tail_lifecycle

    assert conn.sessionmaker is not None and conn.bus is not None

    async def state() -> str | None:
        async with conn.sessionmaker() as s:  # type: ignore[misc]
            t = await s.get(m.Tenant, tenant_id)
            return t.state if t else None

    async def follow() -> str:
        current = await state()
        if current in ok | TERMINAL_BAD:
            return current  # type: ignore[return-value]
        async for e in tail_lifecycle(conn.bus, tenant_id=tenant_id, follow=True):  # type: ignore[arg-type]
            if status is not None:
                status.update(f"{e.type} {e.state_to or ''} {e.message}"[:120])
            current = await state()
            if current in ok | TERMINAL_BAD:
                return current  # type: ignore[return-value]
        return current or "unknown"

    status = Status("waiting for the tenant…") if progress else None
    try:
        if status:
            status.start()
        return await asyncio.wait_for(follow(), timeout)
    except TimeoutError:
        err_console.print(f"[yellow]timed out after {timeout:.0f}s; state {await state()}[/yellow]")
        raise typer.Exit(EXIT_TIMEOUT) from None
    finally:
        if status:
            status.stop()


@tenants.command("list")
def tenants_list(
    state: str | None = typer.Option(None, "--state"),
    all_: bool = typer.Option(False, "--all", help="include decommissioned tenants"),
    output: Output = typer.Option(Output.text, "--output", "-o"),
) -> None:
    """List tenants."""

    async def run() -> None:
        async with connect() as conn:
            assert conn.sessionmaker is not None
            async with conn.sessionmaker() as s:
                stmt = select(m.Tenant).order_by(m.Tenant.created_at)
                if state:
                    stmt = stmt.where(m.Tenant.state == state)
                if not all_:
                    stmt = stmt.where(m.Tenant.deleted_at.is_(None))
                rows = list((await s.execute(stmt)).scalars())
        if output is Output.json:
            emit_json([_view(t) for t in rows])
            return
        table("tenants", ["slug", "state", "chart", "profile", "revision", "last heartbeat", "id"],
              [[t.slug, t.state, t.chart_version, t.profile, t.release_revision,
                t.last_heartbeat_at.isoformat(timespec="seconds") if t.last_heartbeat_at else None, t.id]
               for t in rows])

    asyncio.run(run())


def _view(t: m.Tenant) -> dict[str, Any]:
    from soctalk_api.app import tenant_view

    return json.loads(json.dumps(tenant_view(t), default=str))


@tenants.command("show")
def tenants_show(tenant: str, output: Output = typer.Option(Output.text, "--output", "-o")) -> None:
    """Show one tenant: state, steps, secrets by reference, recent lifecycle."""

    async def run() -> None:
        async with connect() as conn:
            t = await find_tenant(conn, tenant)
            assert conn.sessionmaker is not None
            async with conn.sessionmaker() as s:
                refs = list((await s.execute(select(m.TenantSecret).where(m.TenantSecret.tenant_id == t.id)
                                             .order_by(m.TenantSecret.id))).scalars())
                events = list((await s.execute(
                    select(m.TenantLifecycleEvent).where(m.TenantLifecycleEvent.tenant_id == t.id)
                    .order_by(m.TenantLifecycleEvent.id.desc()).limit(15))).scalars())
        view = _view(t)
        view["secrets"] = [{"backend": r.backend, "namespace": r.namespace, "path": r.path, "name": r.name,
                            "key": r.key, "versionLabel": r.version_label, "status": r.status} for r in refs]
        if output is Output.json:
            emit_json(view)
            return
        table(f"tenant {t.slug}", ["field", "value"],
              [[k, v] for k, v in view.items() if k != "secrets"])
        table("secrets (references only)", ["backend", "where", "name", "key", "version", "status"],
              [[r["backend"], r["namespace"] or r["path"], r["name"], r["key"], r["versionLabel"], r["status"]]
               for r in view["secrets"]])
        table("recent lifecycle", ["when", "type", "state", "message"],
              [[e.occurred_at.isoformat(timespec="seconds"), e.type,
                f"{e.state_from or ''} → {e.state_to}" if e.state_to else "", e.message[:80]]
               for e in reversed(events)])

    asyncio.run(run())


def _simple(name: str, make: Any, help_: str, ok_states: set[str] | None = None) -> None:
    @tenants.command(name, help=help_)
    def command(
        tenant: str,
        wait: bool = typer.Option(False, "--wait"),
        timeout: float = typer.Option(1800, "--timeout"),
        output: Output = typer.Option(Output.text, "--output", "-o"),
    ) -> None:
        async def run() -> None:
            async with connect() as conn:
                t = await find_tenant(conn, tenant, include_deleted=False)
            await _send_and_maybe_wait(make(t.id), wait, timeout, output, ok_states)

        asyncio.run(run())


_simple("retry", lambda tid: ev.TenantRetryRequested(tenant_id=tid),
        "Retry a failed tenant from its last completed step.")
_simple("suspend", lambda tid: ev.TenantSuspendRequested(tenant_id=tid),
        "Scale the tenant's workloads to zero.", {"suspended"})
_simple("resume", lambda tid: ev.TenantResumeRequested(tenant_id=tid), "Scale a suspended tenant back up.")
_simple("cancel", lambda tid: ev.TenantDecommissionCancelRequested(tenant_id=tid),
        "Cancel a pending decommission during its grace period.", {"active", "degraded", "suspended"})


@tenants.command("upgrade")
def tenants_upgrade(
    tenant: str,
    to: str = typer.Option(..., "--to", help="target soctalk-tenant chart version"),
    wait: bool = typer.Option(False, "--wait"),
    timeout: float = typer.Option(1800, "--timeout"),
    output: Output = typer.Option(Output.text, "--output", "-o"),
) -> None:
    """Upgrade a tenant's chart (gated by compatibility.yaml; blocked combinations are refused)."""
    from soctalk_common.compat import load_compatibility, verdict
    from soctalk_common.settings import Settings

    settings = Settings()
    v = verdict(load_compatibility(settings.compatibility_file), settings.system_version, to)
    if v.status == "blocked":
        err_console.print(f"[red]refused:[/red] system {settings.system_version} × tenant {to} is blocked"
                          f"{': ' + v.notes if v.notes else ''}")
        raise typer.Exit(EXIT_FAILED)
    if v.status == "deprecated":
        err_console.print(f"[yellow]warning:[/yellow] {to} is deprecated on {settings.system_version}: {v.notes}")

    async def run() -> None:
        async with connect() as conn:
            t = await find_tenant(conn, tenant, include_deleted=False)
        await _send_and_maybe_wait(ev.TenantUpgradeRequested(tenant_id=t.id, target_chart_version=to), wait,
                                   timeout, output)

    asyncio.run(run())


@tenants.command("decommission")
def tenants_decommission(
    tenant: str,
    grace: str | None = typer.Option(None, "--grace", help="grace period (e.g. 1h, 7d); default per profile"),
    force: bool = typer.Option(False, "--force", help="bypass the decommissions-per-hour guard"),
    reason: str = typer.Option("", "--reason"),
    output: Output = typer.Option(Output.text, "--output", "-o"),
) -> None:
    """Start decommissioning (uninstall after the grace period; data kept for the retention window)."""
    from soctalk_cli.events_cmd import parse_duration

    grace_s = parse_duration(grace).total_seconds() if grace else None

    async def run() -> None:
        async with connect() as conn:
            t = await find_tenant(conn, tenant, include_deleted=False)
        await _send_and_maybe_wait(ev.TenantDecommissionRequested(tenant_id=t.id, grace_period_s=grace_s, force=force,
                                                                  reason=reason), False, 0, output)

    asyncio.run(run())


@tenants.command("diff")
def tenants_diff(tenant: str, to: str = typer.Option(..., "--to", help="target chart version")) -> None:
    """Show the manifest change an upgrade to VERSION would make, before anyone upgrades."""
    try:
        from soctalk_helm_runner.diff import diff_tenant
    except ImportError:
        err_console.print("[red]error:[/red] the helm-runner package is not installed")
        raise typer.Exit(EXIT_FAILED) from None

    async def run() -> int:
        async with connect() as conn:
            t = await find_tenant(conn, tenant, include_deleted=False)
            return await diff_tenant(conn.settings, conn.sessionmaker, t, to, print_fn=console.print)

    raise typer.Exit(asyncio.run(run()))


# ---------------------------------------------------------------------------------------------------
# compat, keys, charts
# ---------------------------------------------------------------------------------------------------


@compat_app.command("check")
def compat_check(
    system: str = typer.Option(..., "--system"),
    tenant: str = typer.Option(..., "--tenant"),
    file: Path | None = typer.Option(None, "--file", help="compatibility.yaml (default: the install's)"),
    output: Output = typer.Option(Output.text, "--output", "-o"),
) -> None:
    """Print the verdict for a system × tenant chart pair; exit 1 when blocked."""
    from soctalk_common.compat import load_compatibility, verdict
    from soctalk_common.settings import Settings

    path = file or Settings().compatibility_file
    try:
        entries = load_compatibility(path)
    except (OSError, ValueError) as exc:
        err_console.print(f"[red]error:[/red] {path}: {exc}")
        raise typer.Exit(EXIT_USAGE) from None
    v = verdict(entries, system, tenant)
    if output is Output.json:
        emit_json({"system": system, "tenant": tenant, "status": v.status, "notes": v.notes})
    else:
        colour = {"supported": "green", "deprecated": "yellow", "blocked": "red"}[v.status]
        console.print(f"system {system} × tenant {tenant}: [{colour}]{v.status}[/{colour}]"
                      + (f" — {v.notes}" if v.notes else ""))
    raise typer.Exit(EXIT_FAILED if v.status == "blocked" else 0)


@keys_app.command("public")
def keys_public(output: Output = typer.Option(Output.text, "--output", "-o")) -> None:
    """Print the install's public sealing key (seal LLM keys to it: `soctalk keys seal`)."""

    async def run() -> None:
        async with connect() as conn:
            assert conn.sessionmaker is not None
            async with conn.sessionmaker() as s:
                key = await s.get(m.SystemKey, "sealing")
        if key is None:
            err_console.print("[red]error:[/red] no sealing key yet: the secrets service creates it on first start")
            raise typer.Exit(EXIT_NOT_FOUND)
        if output is Output.json:
            emit_json({"public_key": key.public_key, "algorithm": "X25519-HKDF-SHA256-ChaCha20Poly1305"})
        else:
            print(key.public_key)

    asyncio.run(run())


@keys_app.command("seal")
def keys_seal(public_key: str = typer.Option(..., "--public-key", help="from `soctalk keys public`")) -> None:
    """Seal a value read from stdin to the install's public key (prints only the sealed envelope)."""
    import sys

    from soctalk_common.sealing import seal

    value = sys.stdin.read().strip()
    if not value:
        err_console.print("[red]error:[/red] nothing on stdin to seal")
        raise typer.Exit(EXIT_USAGE)
    print(seal(public_key, value))


@charts_app.command("lint")
def charts_lint(profile: list[str] = typer.Option(["pilot-prod", "small-dev"], "--profile")) -> None:
    """helm lint both charts with every value profile."""
    from soctalk_common import charts

    failures = 0
    for chart in ("soctalk-system", "soctalk-tenant"):
        for values in charts.profile_values_files(chart, profile):
            problems = charts.lint(chart, [values])
            label = f"{chart} × {values.name}"
            if problems:
                failures += 1
                err_console.print(f"[red]✗[/red] {label}")
                for p in problems:
                    err_console.print(f"    {p}")
            else:
                console.print(f"[green]✓[/green] {label}")
    raise typer.Exit(EXIT_FAILED if failures else 0)


@charts_app.command("package")
def charts_package(dest: Path = typer.Option(Path("dist/charts"), "--dest")) -> None:
    """Build the chart .tgz files (push them with `helm push <tgz> oci://<registry>/charts`)."""
    from soctalk_common import charts

    dest.mkdir(parents=True, exist_ok=True)
    for chart in ("soctalk-system", "soctalk-tenant"):
        console.print(str(charts.package(chart, dest)))


# ---------------------------------------------------------------------------------------------------
# dev, secrets, adapter
# ---------------------------------------------------------------------------------------------------


@dev_app.command("up")
def dev_up(
    kubeconfig: str | None = typer.Option(None, "--kubeconfig", envvar="SOCTALK_DEV_KUBECONFIG"),
    simulate_kubelet: bool | None = typer.Option(None, "--simulate-kubelet/--no-simulate-kubelet"),
) -> None:
    """Start NATS, Postgres, OpenBao, a Kubernetes API and every service; Ctrl-C stops them all."""
    from soctalk_cli.devstack import DevStack

    async def run() -> None:
        import signal

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        ds = await DevStack(kubeconfig=kubeconfig, simulate_kubelet=simulate_kubelet).start()
        try:
            table("soctalk dev stack", ["part", "where"], [list(r) for r in ds.describe()])
            # Credentials go to a 0600 file, not the terminal.
            env_file = ds.workdir / "env"
            env_file.touch(mode=0o600)
            env_file.write_text("".join(f"export {k}={ds.env()[k]}\n"
                                        for k in ("NATS_URL", "DATABASE_URL", "KUBECONFIG", "VAULT_ADDR")))
            console.print(f"to use the CLI against it:  source {env_file}")
            console.print("Ctrl-C to stop.")
            await stop.wait()
        finally:
            console.print("stopping…")
            await ds.stop()

    asyncio.run(run())


@secrets_app.command("rotate")
def secrets_rotate(
    tenant: str = typer.Option(..., "--tenant"),
    service: str = typer.Option(..., "--service", help="wazuh|thehive|cortex|cassandra|authd|adapter|llm"),
    overlap: str | None = typer.Option(None, "--overlap", help="adapter token overlap window, e.g. 1h"),
    sealed_llm_key: str | None = typer.Option(None, "--sealed-llm-key", help="new LLM key, sealed (for llm)"),
    output: Output = typer.Option(Output.text, "--output", "-o"),
) -> None:
    """Rotate one of a tenant's secrets: new version label, patch, restart readers, verify, retire old."""
    from pydantic import ValidationError

    from soctalk_cli.events_cmd import parse_duration

    async def run() -> None:
        async with connect() as conn:
            t = await find_tenant(conn, tenant, include_deleted=False)
        try:
            event = ev.SecretRotationRequested(
                tenant_id=t.id, service=service,  # type: ignore[arg-type]
                overlap_s=parse_duration(overlap).total_seconds() if overlap else None,
                new_llm_key=ev.LlmKeySource(sealed=sealed_llm_key) if sealed_llm_key else None)
        except ValidationError as exc:
            for e in exc.errors():
                err_console.print(f"[red]error:[/red] --{e['loc'][0] if e['loc'] else '?'}: {e['msg']}")
            raise typer.Exit(EXIT_USAGE) from None
        await _send_and_maybe_wait(event, False, 0, output)

    asyncio.run(run())


@adapter_app.command("simulate")
def adapter_simulate(
    tenant: str = typer.Option(..., "--tenant"),
    interval: float = typer.Option(30.0, "--interval"),
    count: int = typer.Option(0, "--count", help="stop after N heartbeats (0 = until Ctrl-C)"),
) -> None:
    """Heartbeat as the tenant's adapter, with the token read from its cluster Secret."""
    from soctalk_common.gateways.kube import KubeGateway
    from soctalk_heartbeat.simulator import AdapterSimulator, token_from_cluster

    async def run() -> None:
        async with connect() as conn:
            t = await find_tenant(conn, tenant, include_deleted=False)
            kube = await KubeGateway.from_kubeconfig(conn.settings.kubeconfig)
            try:
                token = await token_from_cluster(kube, t.slug)
            finally:
                await kube.close()
            sim = AdapterSimulator(conn.settings.nats_url, t.id, token, interval_s=interval)
            if count:
                for _ in range(count):
                    await sim.beat_once()
                console.print(f"sent {count} heartbeat(s) for {t.slug}")
            else:
                await sim.run(asyncio.Event())

    asyncio.run(run())
