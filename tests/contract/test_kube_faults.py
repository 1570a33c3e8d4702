"""KubeGateway error mapping and retries, with real faults.

These use a private emulator (whatever cluster the suite targets) because they need a server that
answers 401/403/5xx or stalls on demand; a closed port stands in for an unreachable API server.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from soctalk_common.errors import (
    Conflict,
    Forbidden,
    NotFound,
    PermanentError,
    TemporaryError,
    Unauthorized,
    Unavailable,
)
from soctalk_common.gateways.kube import ConfigurationError, KubeGateway
from soctalk_kubesim import KubeEmulator

SECRETS = "/api/v1/namespaces/tenant-faults/secrets"


@pytest.fixture
async def gateway(emulator: KubeEmulator) -> AsyncIterator[KubeGateway]:
    gw = await KubeGateway.from_kubeconfig(emulator.kubeconfig_path, retries=3, request_timeout=2.0)
    await gw.ensure_namespace("tenant-faults", {})
    yield gw
    await gw.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kubeconfig_for(tmp_path: Path, server: str) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
    }))
    return str(path)


async def test_unreachable_api_server_is_unavailable_after_bounded_retries(tmp_path: Path) -> None:
    server = f"http://127.0.0.1:{closed_port()}"
    gw = await KubeGateway.from_kubeconfig(kubeconfig_for(tmp_path, server), retries=3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(Unavailable) as exc:
            await gw.read_secret("tenant-acme", "wazuh-bootstrap")
    finally:
        await gw.close()
    assert isinstance(exc.value, TemporaryError)
    assert "secret tenant-acme/wazuh-bootstrap" in str(exc.value)
    assert "unreachable" in str(exc.value)
    assert loop.time() - started < 5


@pytest.mark.parametrize(("status", "error"), [(401, Unauthorized), (403, Forbidden)])
async def test_auth_failures_are_permanent_and_not_retried(
        gateway: KubeGateway, emulator: KubeEmulator, status: int, error: type[Exception]) -> None:
    fault = emulator.inject_fault(SECRETS, status)
    with pytest.raises(error) as exc:
        await gateway.read_secret("tenant-faults", "adapter-token")
    assert isinstance(exc.value, PermanentError)
    assert "secret tenant-faults/adapter-token" in str(exc.value)
    assert str(status) in str(exc.value)
    assert fault.hits == 1


async def test_transient_server_errors_are_retried(gateway: KubeGateway, emulator: KubeEmulator) -> None:
    await gateway.create_secret("tenant-faults", "cortex-bootstrap", {"k": "v"})
    fault = emulator.inject_fault(SECRETS, 503, times=2)
    record = await gateway.read_secret("tenant-faults", "cortex-bootstrap")
    assert record is not None and record.data == {"k": "v"}
    assert fault.hits == 2


async def test_persistent_server_errors_give_up_after_the_retry_budget(
        gateway: KubeGateway, emulator: KubeEmulator) -> None:
    fault = emulator.inject_fault(SECRETS, 500)
    with pytest.raises(Unavailable, match="secret tenant-faults/x.*500"):
        await gateway.read_secret("tenant-faults", "x")
    assert fault.hits == 3


async def test_throttling_is_temporary(gateway: KubeGateway, emulator: KubeEmulator) -> None:
    emulator.inject_fault(SECRETS, 429)
    with pytest.raises(Unavailable, match="429"):
        await gateway.list_secrets("tenant-faults")


async def test_a_stalled_server_times_out(emulator: KubeEmulator) -> None:
    gw = await KubeGateway.from_kubeconfig(emulator.kubeconfig_path, retries=1, request_timeout=0.3)
    emulator.inject_fault(SECRETS, 0, delay=5)
    try:
        with pytest.raises(Unavailable, match=r"secret tenant-faults/slow: no answer .* within 0.3s"):
            await gw.read_secret("tenant-faults", "slow")
    finally:
        await gw.close()


async def test_conflicts_and_missing_objects(gateway: KubeGateway, emulator: KubeEmulator) -> None:
    emulator.inject_fault(SECRETS, 409, method="POST")
    with pytest.raises(Conflict, match="secret tenant-faults/dup"):
        await gateway.create_secret("tenant-faults", "dup", {"k": "canary-value"})
    with pytest.raises(NotFound, match="Deployment tenant-faults/absent"):
        await gateway.restart_workloads("tenant-faults", [("Deployment", "absent")])


async def test_errors_never_carry_secret_values(gateway: KubeGateway, emulator: KubeEmulator) -> None:
    emulator.inject_fault(SECRETS, 500, message="boom")
    with pytest.raises(Unavailable) as exc:
        await gateway.create_secret("tenant-faults", "llm-key", {"api_key": "canary-sk-123456"})
    assert "canary" not in str(exc.value) and "canary" not in repr(exc.value)


async def test_ensure_namespace_refuses_a_terminating_namespace(emulator: KubeEmulator) -> None:
    gw = await KubeGateway.from_kubeconfig(emulator.kubeconfig_path)
    try:
        await gw.ensure_namespace("tenant-going", {})
        await gw.apply({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": "held", "namespace": "tenant-going",
                                     "finalizers": ["soctalk.io/test"]}})
        await gw.delete_namespace("tenant-going")
        with pytest.raises(Conflict, match="namespace tenant-going: is being deleted"):
            await gw.ensure_namespace("tenant-going", {})
        with pytest.raises(Unavailable, match="still terminating"):
            await gw.delete_namespace("tenant-going", wait=True, timeout=0.3)
    finally:
        await gw.close()


async def test_bad_configuration_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="cannot be loaded"):
        await KubeGateway.from_kubeconfig(str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigurationError, match="in-cluster"):
        await KubeGateway.in_cluster()
