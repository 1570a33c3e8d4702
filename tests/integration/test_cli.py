"""Every ``soctalk`` command's happy path and its main error, run as a real process against real
NATS and Postgres (and the Kubernetes emulator where the command needs a cluster)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from soctalk_common import events as ev
from soctalk_common.bus import EVENTS_STREAM, Bus
from soctalk_common.db import models as m
from soctalk_common.sealing import generate_keypair, unseal
from soctalk_common.settings import REPO_ROOT

pytestmark = pytest.mark.integration

EXAMPLE = REPO_ROOT / "deploy/examples/tenant-acme.yaml"


async def soctalk(database_url: str, nats_url: str, *args: str, stdin: bytes | None = None,
                  env: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, str, str]:
    full_env = dict(os.environ, DATABASE_URL=database_url, NATS_URL=nats_url, COLUMNS="200", **(env or {}))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "soctalk_cli.main", *args, env=full_env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def stream_events(bus: Bus) -> list[ev.Event]:
    info = await bus.js.stream_info(EVENTS_STREAM)
    if not info.state.messages:
        return []
    return [ev.parse_event((await bus.js.get_msg(EVENTS_STREAM, s)).data)
            for s in range(info.state.first_seq, info.state.last_seq + 1)]


async def add_tenant(uow, slug: str = "acme", state: str = "active") -> uuid.UUID:  # type: ignore[no-untyped-def]
    tid = uuid.uuid4()
    async with uow() as tx:
        tx.session.add(m.Tenant(id=tid, mssp_id=uuid.uuid4(), install_id=uuid.uuid4(), slug=slug,
                                request_id=f"r-{slug}", display_name=slug.title(), state=state, profile="small-dev",
                                chart_version="v1.1.0", config={}))
        tx.session.add(m.TenantSecret(tenant_id=tid, purpose="wazuh", backend="kubernetes",
                                      namespace=f"tenant-{slug}", name="wazuh-bootstrap", key="admin_password",
                                      version_label="v1"))
        await tx.commit()
    return tid


@pytest.fixture
def run(database_url, nats_url):  # type: ignore[no-untyped-def]
    async def _run(*args: str, **kw):  # type: ignore[no-untyped-def]
        return await soctalk(database_url, nats_url, *args, **kw)

    return _run


async def test_tenants_request_publishes_and_rejects_invalid_files(run, bus, tmp_path):
    code, out, err = await run("tenants", "request", "-f", str(EXAMPLE), "--output", "json")
    assert code == 0, err
    sent = json.loads(out)
    [event] = await stream_events(bus)
    assert isinstance(event, ev.TenantRequested) and str(event.tenant_id) == sent["tenant_id"]

    bad = tmp_path / "bad.yaml"
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["config"]["llm"]["apiKey"] = "sk-plaintext-canary-cli"
    doc["config"]["slug"] = "Bad_Slug"
    bad.write_text(yaml.safe_dump(doc))
    code, out, err = await run("tenants", "request", "-f", str(bad))
    assert code == 2
    assert "$.config.llm.apiKey" in err and "$.config.slug" in err
    assert "sk-plaintext-canary-cli" not in out + err
    broken = tmp_path / "broken.yaml"
    broken.write_text("config: [unclosed")
    code, _, err = await run("tenants", "request", "-f", str(broken))
    assert code == 2 and "not valid YAML" in err
    code, _, err = await run("tenants", "request", "-f", str(tmp_path / "missing.yaml"))
    assert code == 2 and "no such file" in err
    assert len(await stream_events(bus)) == 1  # the invalid files published nothing


async def test_tenants_list_and_show(run, uow):
    await add_tenant(uow, "acme")
    code, out, _ = await run("tenants", "list", "--output", "json")
    assert code == 0 and [t["slug"] for t in json.loads(out)] == ["acme"]
    code, out, _ = await run("tenants", "list")
    assert code == 0 and "acme" in out and "active" in out
    code, out, _ = await run("tenants", "show", "acme", "--output", "json")
    shown = json.loads(out)
    assert code == 0 and shown["state"] == "active" and shown["secrets"][0]["name"] == "wazuh-bootstrap"
    code, _, err = await run("tenants", "show", "nope")
    assert code == 3 and "no tenant 'nope'" in err


@pytest.mark.parametrize(("command", "expected"), [
    (["retry"], "TenantRetryRequested"),
    (["suspend"], "TenantSuspendRequested"),
    (["resume"], "TenantResumeRequested"),
    (["cancel"], "TenantDecommissionCancelRequested"),
    (["decommission", "--grace", "1h", "--reason", "contract ended"], "TenantDecommissionRequested"),
    (["upgrade", "--to", "v1.1.0"], "TenantUpgradeRequested"),
])
async def test_tenant_commands_publish_their_event(run, uow, bus, command, expected):
    tid = await add_tenant(uow, "acme")
    code, _, err = await run("tenants", command[0], "acme", *command[1:])
    assert code == 0, err
    [event] = await stream_events(bus)
    assert event.event_type == expected and event.tenant_id == tid
    if expected == "TenantDecommissionRequested":
        assert event.grace_period_s == 3600  # type: ignore[attr-defined]
    code, _, err = await run("tenants", command[0], "ghost", *command[1:])
    assert code == 3 and "no tenant 'ghost'" in err


async def test_blocked_upgrade_is_refused_before_anything_is_sent(run, uow, bus):
    await add_tenant(uow, "acme")
    code, _, err = await run("tenants", "upgrade", "acme", "--to", "v0.9.0")
    assert code == 1 and "blocked" in err
    assert await stream_events(bus) == []


async def test_compat_check(run, tmp_path):
    code, out, _ = await run("compat", "check", "--system", "v1.1.0", "--tenant", "v1.1.0")
    assert code == 0 and "supported" in out
    code, out, _ = await run("compat", "check", "--system", "v1.1.0", "--tenant", "v1.0.0", "--output", "json")
    assert code == 0 and json.loads(out)["status"] == "deprecated"
    code, out, _ = await run("compat", "check", "--system", "v1.0.0", "--tenant", "v9.9.9")
    assert code == 1 and "blocked" in out
    broken = tmp_path / "compat.yaml"
    broken.write_text("- system: v1.0.0\n  tenant:\n    - version: v1.0.0\n      status: sure\n")
    code, _, err = await run("compat", "check", "--system", "v1.0.0", "--tenant", "v1.0.0", "--file", str(broken))
    assert code == 2 and "sure" in err


async def test_keys_public_and_seal(run, uow):
    code, _, err = await run("keys", "public")
    assert code == 3 and "no sealing key" in err
    private, public = generate_keypair()
    async with uow() as tx:
        tx.session.add(m.SystemKey(name="sealing", public_key=public))
        await tx.commit()
    code, out, _ = await run("keys", "public")
    assert code == 0 and out.strip() == public
    code, out, _ = await run("keys", "seal", "--public-key", public, stdin=b"sk-canary-to-seal")
    assert code == 0 and out.startswith("sealed:v1:") and "sk-canary-to-seal" not in out
    assert unseal(private, out.strip()) == "sk-canary-to-seal"
    code, _, err = await run("keys", "seal", "--public-key", public, stdin=b"")
    assert code == 2


async def test_secrets_rotate(run, uow, bus):
    tid = await add_tenant(uow, "acme")
    code, _, err = await run("secrets", "rotate", "--tenant", "acme", "--service", "wazuh")
    assert code == 0, err
    [event] = await stream_events(bus)
    assert isinstance(event, ev.SecretRotationRequested) and event.service == "wazuh" and event.tenant_id == tid
    code, _, err = await run("secrets", "rotate", "--tenant", "acme", "--service", "nginx")
    assert code == 2 and "service" in err


async def test_db_upgrade(run, postgres_url):
    import asyncpg

    name = f"cli_{uuid.uuid4().hex[:8]}"
    admin = postgres_url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(admin)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    url = postgres_url.rsplit("/", 1)[0] + "/" + name
    code, out, err = await soctalk(url, "nats://127.0.0.1:1", "db", "upgrade")
    assert code == 0, err
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        assert await conn.fetchval("SELECT count(*) FROM information_schema.tables WHERE table_name='outbox'") == 1
    finally:
        await conn.close()
    code, _, err = await soctalk("postgresql+asyncpg://x:y@127.0.0.1:1/none", "nats://127.0.0.1:1", "db", "upgrade")
    assert code != 0


async def test_charts_lint_and_package(run, tmp_path):
    code, out, err = await run("charts", "lint", timeout=180)
    assert code == 0, out + err
    assert "soctalk-tenant" in out and "✗" not in out
    code, out, err = await run("charts", "package", "--dest", str(tmp_path), timeout=180)
    assert code == 0, err
    assert sorted(p.name.split("-1")[0] for p in tmp_path.glob("*.tgz")) == ["soctalk-system", "soctalk-tenant"]


async def test_unreachable_nats_is_exit_code_4(database_url, uow):
    await add_tenant(uow, "acme")
    code, _, err = await soctalk(database_url, "nats://127.0.0.1:1", "tenants", "retry", "acme")
    assert code == 4 and "unreachable" in err


async def test_dev_up_prints_endpoints_and_stops_cleanly_on_ctrl_c(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL", "VAULT_ADDR")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "soctalk_cli.main", "dev", "up", env=env | {"COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None
    seen = ""
    try:
        while "Ctrl-C to stop" not in seen:
            line = await asyncio.wait_for(proc.stdout.readline(), 120)
            assert line, f"dev up exited early: {seen}"
            seen += line.decode()
        assert "NATS" in seen and "Postgres" in seen and "OpenBao" in seen and "Kubernetes" in seen
        assert "HTTP API" in seen
    finally:
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 120)
    assert proc.returncode == 0
    assert "stopping" in (await proc.stdout.read()).decode()


def test_every_documented_command_exists():
    from soctalk_cli.main import app
    from typer.main import get_command

    root = get_command(app)
    wanted = {"tenants": {"request", "list", "show", "retry", "upgrade", "decommission", "cancel", "suspend",
                          "resume", "diff"},
              "events": {"tail"}, "secrets": {"rotate"}, "compat": {"check"}, "keys": {"public"},
              "charts": {"lint", "package"}, "db": {"upgrade"}, "dev": {"up"}, "adapter": {"simulate"}}
    for group, commands in wanted.items():
        assert commands <= set(root.commands[group].commands), group  # type: ignore[attr-defined]
    assert Path(REPO_ROOT / "README.md").read_text().startswith("# SocTalk")
