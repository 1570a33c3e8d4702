"""Contract-test fixtures: one cluster per session, real gateways, unique names per test.

By default the cluster is the in-process emulator (``soctalk_kubesim``), started in its own thread
so the Helm SDK's blocking calls in worker threads are answered while the test loop waits. With
``SOCTALK_TEST_KUBECONFIG=~/.kube/config`` the same tests run against that cluster. Every test
works in its own ``tenant-ct-<random>`` namespace and deletes what it created.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from kubernetes_asyncio.config import new_client_from_config
from soctalk_common.gateways.helm import HelmGateway
from soctalk_common.gateways.kube import KubeGateway
from soctalk_kubesim import ClusterHandle, KubeEmulator, SimulatedKubelet, cluster_from_env

CHARTS = Path(__file__).parent / "charts"
MINI_CHART = str(CHARTS / "mini")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.contract)


def unique(prefix: str = "ct") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def cluster() -> Iterator[ClusterHandle]:
    handle = cluster_from_env()
    yield handle
    handle.stop()


@pytest.fixture(scope="session")
def kubeconfig(cluster: ClusterHandle) -> str:
    return cluster.kubeconfig_path


@pytest.fixture(scope="session")
def emulated(cluster: ClusterHandle) -> bool:
    return cluster.is_emulated


@pytest.fixture
async def kube(kubeconfig: str) -> AsyncIterator[KubeGateway]:
    gateway = await KubeGateway.from_kubeconfig(kubeconfig)
    yield gateway
    await gateway.close()


@pytest.fixture(scope="session")
def helm(kubeconfig: str) -> Iterator[HelmGateway]:
    gateway = HelmGateway(kubeconfig, default_timeout=60)
    yield gateway
    gateway.close()


@pytest.fixture
async def kubelet(kubeconfig: str) -> AsyncIterator[SimulatedKubelet]:
    """Marks workloads in ``tenant-*`` namespaces ready at once; tests may ``fail()`` some."""
    sim = SimulatedKubelet(lambda: new_client_from_config(kubeconfig), delay=0.0)
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture
async def namespace(kube: KubeGateway) -> AsyncIterator[str]:
    """A fresh tenant-style namespace, deleted (with everything in it) afterwards."""
    name = unique("tenant-ct")
    await kube.ensure_namespace(name, {"soctalk.io/test": "contract"})
    yield name
    await kube.delete_namespace(name)


@pytest.fixture
async def emulator() -> AsyncIterator[KubeEmulator]:
    """A private emulator for fault injection, whatever cluster the suite targets."""
    async with KubeEmulator() as emu:
        yield emu
