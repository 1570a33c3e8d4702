"""The ``soctalk`` command line: tables for people, ``--output json`` for programs, exit codes that mean
something (0 ok, 1 failed, 2 usage/invalid input, 3 not found, 4 unavailable, 5 timed out)."""

from __future__ import annotations

import asyncio

import typer

from soctalk_cli import events_cmd
from soctalk_cli.output import console

app = typer.Typer(help="SocTalk tenant control plane.", no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(events_cmd.app, name="events")

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head")) -> None:
    """Apply Alembic migrations to DATABASE_URL."""
    from soctalk_common.db.migrate import upgrade
    from soctalk_common.settings import Settings

    upgrade(Settings().database_url, revision)
    console.print(f"database at {revision}")


@app.command("serve")
def serve(service: str = typer.Argument(..., help="provisioner|secrets|helm-runner|heartbeat|relay|api")) -> None:
    """Run one service in the foreground (what the system chart's containers run)."""
    import runpy

    modules = {"provisioner": "soctalk_provisioner", "secrets": "soctalk_secrets",
               "helm-runner": "soctalk_helm_runner", "heartbeat": "soctalk_heartbeat",
               "relay": "soctalk_common.relay", "api": "soctalk_api"}
    if service not in modules:
        console.print(f"unknown service {service!r}; one of: {', '.join(modules)}")
        raise typer.Exit(2)
    runpy.run_module(modules[service], run_name="__main__", alter_sys=True)


def _register_optional() -> None:
    """Command groups that live with their services; each registers itself here."""
    from soctalk_cli import commands

    commands.register(app)


_register_optional()

if __name__ == "__main__":
    app()

__all__ = ["app", "asyncio"]
