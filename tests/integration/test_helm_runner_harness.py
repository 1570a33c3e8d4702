"""Shared harness for the helm-runner's integration and end-to-end tests (plus tests of the harness).

* One cluster for every helm-runner test in the session: the in-process emulator, or the cluster of
  ``SOCTALK_TEST_KUBECONFIG`` (``soctalk_kubesim.cluster_from_env``) — the same tests run on both.
  A simulated kubelet (function scope) makes workloads ready; tests ``fail()`` some.
* Real Postgres (a fresh database per test), the real ``HelmGateway`` and ``KubeGateway``, a
  ``FakeClock`` for deadlines and grace periods. Handlers are called as the runtime calls them
  (a ``Ctx`` bound to the message); the watcher and the monitor are driven one round at a time.
* Fault-injecting wrappers, never mocks: ``CrashAfterInstall`` (a process dying right after
  ``helm install`` returned), ``SlowHelm`` (writes that take a while) and ``CountingHelm`` (how many
  Helm writes run at once per release, across any number of gateways).
* A local chart directory with the shipped chart (v1.1.0), a copy as v1.2.0 (supported) and one as
  v1.3.0 (blocked by the test's compatibility matrix).

Other modules import this one as ``h`` and bind its fixtures (``kube = h.kube`` ...). Every tenant
gets a random slug; its namespace is deleted after the test.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import gzip
import json
import secrets
import shutil
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from soctalk_common import charts
from soctalk_common import events as ev
from soctalk_common.clock import FakeClock
from soctalk_common.db import models as m
from soctalk_common.gateways.helm import HelmGateway, ReleaseInfo
from soctalk_common.gateways.kube import KubeGateway
from soctalk_common.runtime import Ctx
from soctalk_common.settings import Settings
from soctalk_common.uow import UnitOfWorkFactory
from soctalk_helm_runner.bootstrap import bootstrap
from soctalk_helm_runner.deps import Deps, HelmRunnerSettings
from soctalk_helm_runner.handlers import ROUTES
from soctalk_helm_runner.monitor import Monitor
from soctalk_helm_runner.records import TenantView
from soctalk_helm_runner.values import namespace_labels
from soctalk_helm_runner.watcher import Watcher
from soctalk_kubesim import ClusterHandle, SimulatedKubelet, cluster_from_env
from soctalk_provisioner.validation import stored_form
from sqlalchemy import select

from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

MSSP = uuid.UUID("5a1e5a1e-0000-4000-8000-00000000beef")
INSTALL = uuid.UUID("1a57a11e-0000-4000-8000-0000000000b2")
SYSTEM_NS = "soctalk-system"
RELEASE = "soctalk-tenant"
SEALED = "sealed:v1:QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo"
READINESS_S = 60.0  # the profile timeout every test runs with (fake clock)

_cluster: ClusterHandle | None = None


def shared_cluster() -> ClusterHandle:
    """One cluster for the session: the emulator (own thread) or $SOCTALK_TEST_KUBECONFIG's."""
    global _cluster
    if _cluster is None:
        _cluster = cluster_from_env()
        atexit.register(_cluster.stop)
    return _cluster


# --- charts and compatibility ------------------------------------------------------------------------


def _copy_chart(root: Path, version: str) -> None:
    target = root / f"soctalk-tenant-v{version}"
    shutil.copytree(charts.chart_dir("soctalk-tenant"), target)
    meta = yaml.safe_load((target / "Chart.yaml").read_text())
    meta.update(version=version, appVersion=f"v{version}")
    (target / "Chart.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))


@pytest.fixture(scope="session")
def charts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("charts")
    (root / "soctalk-tenant").symlink_to(charts.chart_dir("soctalk-tenant"))
    _copy_chart(root, "1.2.0")
    _copy_chart(root, "1.3.0")
    return root


@pytest.fixture(scope="session")
def compat_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("compat") / "compatibility.yaml"
    path.write_text(yaml.safe_dump([{"system": "v1.1.0", "tenant": [
        {"version": "v1.1.0", "status": "supported"}, {"version": "v1.2.0", "status": "supported"},
        {"version": "v1.3.0", "status": "blocked", "notes": "test: never this one"}]}]))
    return path


def settings(charts_dir: Path, compat_file: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"mssp_id": MSSP, "install_id": INSTALL, "charts_dir": charts_dir,
                              "compatibility_file": compat_file, "system_version": "v1.1.0",
                              "readiness_timeout_s": READINESS_S, "helm_timeout_s": 60.0, "lease_ttl_s": 60.0,
                              "max_deliver": 8, "timer_poll_s": 0.1, "http_port": 0}
    values.update(overrides)
    return Settings(**values)


def own_settings(**overrides: Any) -> HelmRunnerSettings:
    values: dict[str, Any] = {"watch_interval_s": 0.1, "drift_interval_s": 3600.0, "namespace_grace_s": 120.0,
                              "undo_timeout_s": 120.0, "uninstall_timeout_s": 120.0, "pending_min_age_s": 0.0}
    values.update(overrides)
    return HelmRunnerSettings(**values)


# --- cluster fixtures ----------------------------------------------------------------------------------


@pytest.fixture
async def kube() -> AsyncIterator[KubeGateway]:
    gw = await KubeGateway.from_kubeconfig(shared_cluster().kubeconfig_path)
    await gw.ensure_namespace(SYSTEM_NS, {"managed-by": "soctalk"})
    yield gw
    await gw.close()


@pytest.fixture(scope="session")
def helm_gateway() -> Iterator[HelmGateway]:
    gw = HelmGateway(shared_cluster().kubeconfig_path, default_timeout=60)
    yield gw
    gw.close()


@pytest.fixture
async def kubelet() -> AsyncIterator[SimulatedKubelet]:
    sim = shared_cluster().kubelet()
    await sim.start()
    yield sim
    await sim.stop()


# --- fault-injecting wrappers ----------------------------------------------------------------------


class Wrapper:
    """Delegates everything to ``inner``; subclasses override the calls they interfere with."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class CrashAfterInstall(Wrapper):
    """``helm install`` succeeds, then the process "dies" before anything is recorded (once)."""

    def __init__(self, inner: Any, times: int = 1) -> None:
        super().__init__(inner)
        self.left = times
        self.installs = 0

    async def install(self, *args: Any, **kwargs: Any) -> ReleaseInfo:
        info = await self.inner.install(*args, **kwargs)
        self.installs += 1
        if self.left > 0:
            self.left -= 1
            raise ConnectionResetError("injected crash right after helm install returned")
        return info


class SlowHelm(Wrapper):
    """Every write takes ``delay`` seconds longer (so overlapping writes would really overlap)."""

    def __init__(self, inner: Any, delay: float = 0.3) -> None:
        super().__init__(inner)
        self.delay = delay

    async def _slow(self, name: str, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(self.delay)  # the fault itself, not a wait for a condition
        return await getattr(self.inner, name)(*args, **kwargs)

    async def install(self, *a: Any, **k: Any) -> Any:
        return await self._slow("install", *a, **k)

    async def upgrade(self, *a: Any, **k: Any) -> Any:
        return await self._slow("upgrade", *a, **k)

    async def uninstall(self, *a: Any, **k: Any) -> Any:
        return await self._slow("uninstall", *a, **k)


@dataclass
class Concurrency:
    active: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    peak: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    calls: list[tuple[str, str]] = field(default_factory=list)  # (operation, namespace)


class CountingHelm(Wrapper):
    """Counts Helm writes in flight per release; share one ``Concurrency`` between gateways."""

    WRITES = ("install", "upgrade", "rollback", "uninstall", "recover_pending")

    def __init__(self, inner: Any, stats: Concurrency) -> None:
        super().__init__(inner)
        self.stats = stats

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if name not in self.WRITES:
            return target

        async def counted(release: str, *args: Any, **kwargs: Any) -> Any:
            namespace = args[1] if name in ("install", "upgrade") else args[0]
            key = (namespace, release)
            self.stats.active[key] += 1
            self.stats.peak[key] = max(self.stats.peak[key], self.stats.active[key])
            self.stats.calls.append((name, namespace))
            try:
                return await target(release, *args, **kwargs)
            finally:
                self.stats.active[key] -= 1

        return counted


# --- tenants -----------------------------------------------------------------------------------------


def request_config(slug: str, **changes: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "slug": slug, "displayName": f"{slug} Corp", "profile": "small-dev",
        "llm": {"provider": "openai-compatible", "baseUrl": "https://api.openai.com/v1", "model": "gpt-4o",
                "apiKey": {"sealed": SEALED}},
        "allowedLlmHosts": ["api.openai.com"],
        "wazuhIngress": {"mode": "loadbalancer", "hostname": f"{slug}.soc.mssp.example.com",
                         "tls": {"issuerRef": "letsencrypt-prod", "secretName": "wazuh-tls"}},
    }
    cfg.update(changes)
    return cfg


def new_slug() -> str:
    return "hr-" + secrets.token_hex(4)


@dataclass
class Runner:
    """The helm-runner's deps as the composition root builds them, plus drivers and probes."""

    uow: UnitOfWorkFactory
    kube: KubeGateway
    deps: Deps
    clock: FakeClock
    namespaces: list[str] = field(default_factory=list)

    @property
    def watcher(self) -> Watcher:
        if not hasattr(self, "_watcher"):
            self._watcher = Watcher(self.deps)
        return self._watcher

    @property
    def monitor(self) -> Monitor:
        return Monitor(self.deps)

    async def add_tenant(self, *, slug: str | None = None, state: str = "provisioning",
                         chart_version: str = "v1.1.0", namespace: bool = True, **changes: Any) -> TenantView:
        """A tenant row with its secret references (as the provisioner and secrets service leave them)."""
        slug = slug or new_slug()
        tid = uuid.uuid4()
        config, _ = stored_form(request_config(slug, **changes), tenant_id=tid, default_chart_version=chart_version,
                                system_namespace=SYSTEM_NS)
        row = m.Tenant(id=tid, mssp_id=MSSP, install_id=INSTALL, slug=slug, request_id=uuid.uuid4().hex,
                       display_name=config["displayName"], state=state, profile=config["profile"],
                       chart_version=chart_version, secrets_backend="kubernetes", config=config)
        async with self.uow.sessionmaker() as s, s.begin():
            s.add(row)
            await s.flush()
            s.add_all([
                m.TenantSecret(tenant_id=tid, purpose="llm", backend="kubernetes", namespace=SYSTEM_NS,
                               name=f"tenant-{tid}-llm", key="api_key", version_label="v1"),
                m.TenantSecret(tenant_id=tid, purpose="adapter-token", backend="kubernetes",
                               namespace=f"tenant-{slug}", name="adapter-token", key="token", version_label="v1"),
            ])
        view = TenantView.of(row)
        self.namespaces.append(view.namespace)
        if namespace:
            await self.kube.ensure_namespace(view.namespace, namespace_labels(view))
        return view

    async def set_tenant(self, tenant_id: uuid.UUID, **fields: Any) -> None:
        async with self.uow.sessionmaker() as s, s.begin():
            row = await s.get(m.Tenant, tenant_id)
            assert row is not None
            for k, v in fields.items():
                setattr(row, k, v)

    async def handle(self, event: ev.Event, *, attempt: int = 1, deps: Deps | None = None) -> None:
        """Deliver ``event`` to its handler as the runtime does (inbox bound to this message)."""
        consumer = f"helm-runner--{event.event_type}"
        await ROUTES[event.event_type](event, Ctx(uow=self.uow.bind(consumer, event.event_id),
                                                  deps=deps or self.deps, attempt=attempt))

    async def settle(self, tenant_id: uuid.UUID, *, timeout: float = 20.0) -> list[m.ReleaseOperation]:
        """Run watcher rounds until no operation of the tenant is waiting."""
        async def probe() -> list[m.ReleaseOperation] | None:
            await self.watcher.tick()
            rows = await ops(self.uow, tenant_id)
            return rows if rows and all(r.status != "waiting" for r in rows) else None
        return await eventually(probe, timeout=timeout, what="every operation closed")

    async def cleanup(self) -> None:
        for ns in self.namespaces:
            with contextlib.suppress(Exception):  # best effort
                await self.kube.delete_namespace(ns)


def make_deps(uow: UnitOfWorkFactory, kube: Any, helm: Any, clock: FakeClock, charts_dir: Path,
              compat_file: Path, *, own: HelmRunnerSettings | None = None, holder: str | None = None,
              **overrides: Any) -> Deps:
    process = bootstrap(settings(charts_dir, compat_file, **overrides), uow=uow, bus=None,  # type: ignore[arg-type]
                        kube=kube, helm=helm, clock=clock, own=own or own_settings(), holder=holder)
    deps: Deps = process.runtime.deps
    return deps


@pytest.fixture
async def runner(uow: UnitOfWorkFactory, kube: KubeGateway, helm_gateway: HelmGateway, charts_dir: Path,
                 compat_file: Path) -> AsyncIterator[Runner]:
    clock = FakeClock()
    r = Runner(uow, kube, make_deps(uow, kube, helm_gateway, clock, charts_dir, compat_file), clock)
    yield r
    await r.cleanup()


# --- probes ------------------------------------------------------------------------------------------


async def ops(uow: UnitOfWorkFactory, tenant_id: uuid.UUID) -> list[m.ReleaseOperation]:
    async with uow.sessionmaker() as s:
        return list((await s.execute(select(m.ReleaseOperation).where(m.ReleaseOperation.tenant_id == tenant_id)
                                     .order_by(m.ReleaseOperation.id))).scalars().all())


async def emitted(uow: UnitOfWorkFactory, event_type: str, tenant_id: uuid.UUID | None = None) -> list[Any]:
    async with uow.sessionmaker() as s:
        rows = (await s.execute(select(m.Outbox).where(m.Outbox.event_type == event_type)
                                .order_by(m.Outbox.id))).scalars().all()
    found = [ev.parse_event(bytes(r.payload)) for r in rows]
    return [e for e in found if tenant_id is None or e.tenant_id == tenant_id]


async def lifecycle(uow: UnitOfWorkFactory, tenant_id: uuid.UUID) -> list[m.TenantLifecycleEvent]:
    async with uow.sessionmaker() as s:
        return list((await s.execute(select(m.TenantLifecycleEvent)
                                     .where(m.TenantLifecycleEvent.tenant_id == tenant_id)
                                     .order_by(m.TenantLifecycleEvent.id))).scalars().all())


async def history(helm: Any, namespace: str) -> list[ReleaseInfo]:
    return await helm.history(RELEASE, namespace)


async def namespace_gone(kube: KubeGateway, namespace: str, timeout: float = 20.0) -> None:
    async def probe() -> bool:
        return not await kube.namespace_exists(namespace)
    await eventually(probe, timeout=timeout, what=f"namespace {namespace} gone")


async def workloads(kube: KubeGateway, namespace: str) -> dict[str, dict[str, Any]]:
    out = {}
    for kind in ("Deployment", "StatefulSet"):
        for obj in await kube.list("apps/v1", kind, namespace=namespace):
            out[f"{kind}/{obj['metadata']['name']}"] = obj
    return out


async def force_status(kube: KubeGateway, namespace: str, revision: int, status: str) -> None:
    """Rewrite a stored revision's status, as a process killed mid-operation leaves it."""
    name = f"sh.helm.release.v1.{RELEASE}.v{revision}"
    record = await kube.read_secret(namespace, name)
    assert record is not None
    doc = json.loads(gzip.decompress(base64.b64decode(record.data["release"])))
    doc["info"]["status"] = status
    encoded = base64.b64encode(gzip.compress(json.dumps(doc).encode())).decode()
    await kube.apply({"apiVersion": "v1", "kind": "Secret", "type": "helm.sh/release.v1",
                      "metadata": {"name": name, "namespace": namespace, "labels": {"status": status}},
                      "data": {"release": base64.b64encode(encoded.encode()).decode()}},
                     field_manager="test-crash")


def secrets_ready(tenant: TenantView) -> ev.SecretsReady:
    return ev.SecretsReady(tenant_id=tenant.id, namespace=tenant.namespace, references=[])


# --- the harness itself -----------------------------------------------------------------------------


async def test_counting_wrapper_sees_overlapping_writes(helm_gateway: HelmGateway) -> None:
    """The instrument works: two writes to one release at the same time are counted as two."""
    stats = Concurrency()
    both_inside = asyncio.Barrier(2)  # each write returns only once the other has started: a real overlap

    class Hold(Wrapper):
        async def uninstall(self, *a: Any, **k: Any) -> None:
            await both_inside.wait()

    a, b = CountingHelm(Hold(helm_gateway), stats), CountingHelm(Hold(helm_gateway), stats)
    await asyncio.gather(a.uninstall(RELEASE, "tenant-nowhere"), b.uninstall(RELEASE, "tenant-nowhere"))
    assert stats.peak[("tenant-nowhere", RELEASE)] == 2
    assert stats.calls == [("uninstall", "tenant-nowhere")] * 2
