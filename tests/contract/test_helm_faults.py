"""HelmGateway error mapping, timeouts and thread discipline, with real faults.

A private emulator answers 401/403/5xx or stalls on demand; a closed port is an unreachable cluster.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from soctalk_common.errors import Forbidden, OperationInProgress, PermanentError, Unauthorized, Unavailable
from soctalk_common.gateways import ConfigurationError
from soctalk_common.gateways.helm import HelmGateway
from soctalk_common.gateways.kube import KubeGateway
from soctalk_kubesim import KubeEmulator

from tests.contract.conftest import MINI_CHART

NS = "tenant-helm-faults"
SECRETS = f"/api/v1/namespaces/{NS}/secrets"


@pytest.fixture
async def faulty(emulator: KubeEmulator) -> KubeEmulator:
    kube = await KubeGateway.from_kubeconfig(emulator.kubeconfig_path)
    await kube.ensure_namespace(NS, {})
    await kube.close()
    return emulator


@pytest.fixture
def helm_on(faulty: KubeEmulator) -> Iterator[HelmGateway]:
    gateway = HelmGateway(faulty.kubeconfig_path, default_timeout=10)
    yield gateway
    gateway.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_unreachable_cluster_is_unavailable(emulator: KubeEmulator, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(emulator.kubeconfig().replace(f":{emulator.port}", f":{closed_port()}"))
    helm = HelmGateway(str(kubeconfig), default_timeout=10)
    try:
        with pytest.raises(Unavailable, match=f"helm status of release {NS}/acme: .*connection refused"):
            await helm.status("acme", NS)
        with pytest.raises(Unavailable, match=f"helm install of release {NS}/acme"):
            await helm.install("acme", MINI_CHART, NS, {})
    finally:
        helm.close()


async def test_missing_kubeconfig_is_a_configuration_error(tmp_path: Path) -> None:
    helm = HelmGateway(str(tmp_path / "absent"))
    try:
        with pytest.raises(ConfigurationError) as exc:
            await helm.history("acme", NS)
        assert isinstance(exc.value, PermanentError)
    finally:
        helm.close()


@pytest.mark.parametrize(("status", "error"), [(401, Unauthorized), (403, Forbidden)])
async def test_auth_failures_are_typed(helm_on: HelmGateway, faulty: KubeEmulator, status: int,
                                       error: type[Exception]) -> None:
    faulty.inject_fault(SECRETS, status)
    with pytest.raises(error, match=f"release {NS}/acme"):
        await helm_on.status("acme", NS)
    with pytest.raises(error, match=f"helm install of release {NS}/acme"):
        await helm_on.install("acme", MINI_CHART, NS, {})


async def test_server_errors_are_temporary_even_for_uninstall(
        helm_on: HelmGateway, faulty: KubeEmulator) -> None:
    faulty.inject_fault(SECRETS, 500)
    with pytest.raises(Unavailable, match="Internal error"):
        await helm_on.history("acme", NS)
    with pytest.raises(Unavailable):  # a failed read is not "already uninstalled"
        await helm_on.uninstall("acme", NS)


async def test_calls_time_out_without_blocking_the_loop(helm_on: HelmGateway, faulty: KubeEmulator) -> None:
    faulty.inject_fault(SECRETS, 0, delay=3)  # the API server stalls, then answers
    loop = asyncio.get_running_loop()
    started = loop.time()
    call = asyncio.create_task(helm_on.install("acme", MINI_CHART, NS, {}, timeout=0.5))
    # While Helm waits in its worker thread, this loop keeps serving other coroutines.
    other = await asyncio.wait_for(asyncio.to_thread(lambda: "served"), 0.4)
    assert other == "served" and not call.done()
    with pytest.raises(Unavailable, match=rf"helm install of release {NS}/acme: no result within 0\.5s"):
        await call
    assert loop.time() - started < 2
    # The abandoned install still holds the release: a second write waits, then gives up in time.
    with pytest.raises(OperationInProgress, match="still running"):
        await helm_on.uninstall("acme", NS, timeout=0.3)
    faulty.clear_faults()
