"""``soctalk events tail``: the lifecycle stream, history first, then live."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta

import typer
from soctalk_common import events as ev
from soctalk_common.tail import tail_lifecycle

from soctalk_cli.context import connect, find_tenant
from soctalk_cli.output import EXIT_USAGE, Output, console, emit_json, err_console

app = typer.Typer(help="The tenant lifecycle stream.", no_args_is_help=True)

_DURATION = re.compile(r"^(\d+)(s|m|h|d)$")


def parse_duration(text: str) -> timedelta:
    m = _DURATION.match(text.strip())
    if not m:
        raise typer.BadParameter(f"{text!r} is not a duration like 30s, 15m, 2h, 7d", param_hint="--since")
    n, unit = int(m.group(1)), m.group(2)
    return timedelta(**{{"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[unit]: n})


def format_event(e: ev.TenantLifecycleEvent) -> str:
    when = e.occurred_at.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3]
    states = f" {e.state_from or '·'} → {e.state_to}" if e.state_to else ""
    step = f" [{e.step}]" if e.step else ""
    who = e.slug or str(e.tenant_id)[:8]
    return f"{when} {who:<12} {e.type:<22}{states}{step} {e.message}".rstrip()


@app.command("tail")
def tail(
    tenant: str | None = typer.Option(None, "--tenant", help="tenant slug or id"),
    type_: str | None = typer.Option(None, "--type", help="lifecycle event type, e.g. TenantActivated"),
    since: str | None = typer.Option(None, "--since", help="only events newer than this (30s, 15m, 2h, 7d)"),
    follow: bool = typer.Option(False, "-f", "--follow", help="keep streaming new events"),
    output: Output = typer.Option(Output.text, "--output", "-o"),
) -> None:
    """Print lifecycle events (history, then live with -f)."""
    start = datetime.now(UTC) - parse_duration(since) if since else None
    if type_ is not None and not re.fullmatch(r"[A-Za-z][A-Za-z0-9]{0,63}", type_):
        err_console.print(f"[red]error:[/red] --type {type_!r} is not an event type name")
        raise typer.Exit(EXIT_USAGE)
    asyncio.run(_tail(tenant, type_, start, follow, output))


async def _tail(tenant: str | None, type_: str | None, start: datetime | None, follow: bool, output: Output) -> None:
    async with connect(db=tenant is not None, nats=True) as conn:
        tenant_id = (await find_tenant(conn, tenant)).id if tenant else None
        assert conn.bus is not None
        try:
            async for e in tail_lifecycle(conn.bus, tenant_id=tenant_id, type_=type_, since=start, follow=follow):
                if output is Output.json:
                    emit_json(e.model_dump(mode="json"))
                else:
                    console.print(format_event(e), markup=False)
        except (KeyboardInterrupt, asyncio.CancelledError):
            return
