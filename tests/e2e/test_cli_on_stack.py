"""CLI commands that need the whole stack and a cluster: ``tenants diff``, ``adapter simulate``,
``tenants suspend --wait`` / ``resume --wait`` and ``events tail`` on a real onboarding."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest
from soctalk_cli.demo import EXAMPLE, provision

pytestmark = pytest.mark.e2e


async def cli(ds, *args: str, timeout: float = 120) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    env = dict(os.environ, COLUMNS="200", **{k: ds.env()[k] for k in ("NATS_URL", "DATABASE_URL", "KUBECONFIG")})
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "soctalk_cli.main", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_commands_against_a_live_tenant(devstack):
    assert await provision(devstack, EXAMPLE, timeout=240, keep=False) == 0

    code, out, err = await cli(devstack, "tenants", "diff", "acme", "--to", "v1.1.0")
    assert code == 0, err
    code, out, err = await cli(devstack, "tenants", "diff", "acme", "--to", "v9.9.9")
    assert code == 3 and "v9.9.9" in (out + err)

    code, out, err = await cli(devstack, "adapter", "simulate", "--tenant", "acme", "--count", "2")
    assert code == 0 and "sent 2 heartbeat(s)" in out, err
    assert "sta_" not in out + err  # the token itself is never printed
    code, _, err = await cli(devstack, "adapter", "simulate", "--tenant", "ghost", "--count", "1")
    assert code == 3

    code, out, err = await cli(devstack, "tenants", "suspend", "acme", "--wait", "--timeout", "120",
                               "--output", "json")
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["state"] == "suspended"

    code, out, err = await cli(devstack, "events", "tail", "--tenant", "acme", "--output", "json")
    types = [json.loads(line)["type"] for line in out.splitlines()]
    assert code == 0 and "TenantAccepted" in types and "TenantActivated" in types
