"""The helm-runner's ports and its own settings (built once, in :mod:`soctalk_helm_runner.bootstrap`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic_settings import BaseSettings, SettingsConfigDict
from soctalk_common.clock import Clock, SystemClock
from soctalk_common.compat import CompatEntry, load_compatibility
from soctalk_common.errors import Forbidden, NotFound
from soctalk_common.gateways.helm import ReleaseInfo
from soctalk_common.settings import Settings
from soctalk_common.uow import UnitOfWorkFactory

from soctalk_helm_runner.values import ClusterFeatures

#: Durable timer kind: a tenant namespace was seen missing; re-checked under the lease when due.
NAMESPACE_TIMER = "helm-ns-missing"


class HelmRunnerSettings(BaseSettings):
    """``SOCTALK_HELM_RUNNER_*``. Timeouts of the readiness wait itself come from the profile
    (``Settings.readiness_timeout_s`` overrides it for every profile)."""

    model_config = SettingsConfigDict(env_prefix="SOCTALK_HELM_RUNNER_", extra="ignore")

    watch_interval_s: float = 2.0  # how often waiting operations are re-checked (new ones at once)
    watch_concurrency: int = 8
    drift_interval_s: float = 300.0  # each live tenant's release is checked this long after its last check/write
    drift_tick_s: float | None = None  # how often due tenants are looked for (None: interval / 10, ≤ 30 s)
    drift_correct: bool = False  # False: warn only (DriftDetected); True: also helm upgrade to restore
    helm_field_manager: str = "helm"  # Helm's server-side apply manager (drift correction hands fields back)
    drift_max_events: int = 20  # DriftDetected events per tenant per check (the lifecycle has them all)
    namespace_grace_s: float = 300.0  # a vanished namespace is reported after this, re-checked
    undo_timeout_s: float = 600.0  # a failed install's namespace must be gone within this
    uninstall_timeout_s: float = 900.0  # decommission: namespace gone within this, else ChartFailed
    pending_min_age_s: float | None = None  # pending-* younger than this is left alone (None: helm timeout)
    fqdn_engine: Literal["auto", "cilium", "none"] = "auto"  # auto: discovery (cilium.io/v2 served?)
    cert_manager: Literal["auto", "on", "off"] = "auto"  # auto: discovery (cert-manager.io/v1 served?)
    features_ttl_s: float = 300.0  # how long a discovery answer is trusted
    operation_retention_s: float = 30 * 86400.0  # finished release operations kept this long (see prune)
    prune_interval_s: float = 3600.0
    edge_port_base: int = 15140
    edge_port_limit: int = 16140

    def drift_tick(self) -> float:
        """Seconds between looks for due tenants: a tenant is checked at most a tick late."""
        return self.drift_tick_s if self.drift_tick_s is not None else max(0.1, min(30.0, self.drift_interval_s / 10))


class HelmPort(Protocol):
    """What the helm-runner needs of ``HelmGateway`` (fault-injecting wrappers implement the same)."""

    async def install(self, release: str, chart_path: str, namespace: str, values: dict, *,
                      timeout: float | None = None) -> ReleaseInfo: ...  # noqa: ASYNC109
    async def upgrade(self, release: str, chart_path: str, namespace: str, values: dict, *,
                      timeout: float | None = None) -> ReleaseInfo: ...  # noqa: ASYNC109
    async def rollback(self, release: str, namespace: str, revision: int | None = None) -> ReleaseInfo: ...
    async def uninstall(self, release: str, namespace: str, *, timeout: float | None = None) -> None: ...  # noqa: ASYNC109
    async def status(self, release: str, namespace: str) -> ReleaseInfo | None: ...
    async def history(self, release: str, namespace: str) -> list[ReleaseInfo]: ...
    async def manifest(self, release: str, namespace: str, revision: int | None = None) -> str: ...
    async def values(self, release: str, namespace: str, revision: int | None = None) -> dict: ...
    async def stored(self, release: str, namespace: str) -> tuple[ReleaseInfo, dict] | None: ...
    async def render(self, chart_path: str, values: dict, *, release: str, namespace: str) -> str: ...
    async def recover_pending(self, release: str, namespace: str, *, min_age: float = 0.0) -> str | None: ...


class FeatureProbe:
    """Which optional APIs the cluster serves, from settings or discovery (cached ``features_ttl_s``)."""

    def __init__(self, own: HelmRunnerSettings, kube: Any, *, system_namespace: str) -> None:
        self.own = own
        self.kube = kube
        self.system_namespace = system_namespace
        self._cached: tuple[float, ClusterFeatures] | None = None
        self._lock = asyncio.Lock()

    async def _serves(self, api_version: str, kind: str) -> bool:
        try:
            await self.kube.list(api_version, kind, namespace=self.system_namespace)
        except NotFound:  # discovery does not know the group/version: not installed
            return False
        except Forbidden:  # served, we may just not list it
            return True
        return True

    async def get(self) -> ClusterFeatures:
        loop = asyncio.get_running_loop()
        async with self._lock:
            if self._cached is not None and loop.time() - self._cached[0] < self.own.features_ttl_s:
                return self._cached[1]
            cilium = (self.own.fqdn_engine == "cilium" if self.own.fqdn_engine != "auto"
                      else await self._serves("cilium.io/v2", "CiliumNetworkPolicy"))
            cert = (self.own.cert_manager == "on" if self.own.cert_manager != "auto"
                    else await self._serves("cert-manager.io/v1", "Certificate"))
            features = ClusterFeatures(cilium=cilium, cert_manager=cert)
            self._cached = (loop.time(), features)
            return features


@dataclass
class Deps:
    settings: Settings
    helm: HelmPort
    kube: Any  # KubeGateway (or a wrapper with the same methods)
    uow: UnitOfWorkFactory  # unbound: for records outside a message (watcher, drift, intermediate steps)
    own: HelmRunnerSettings = field(default_factory=HelmRunnerSettings)
    clock: Clock = field(default_factory=SystemClock)
    features: FeatureProbe | None = None
    compatibility: list[CompatEntry] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # a new wait was recorded: watch now
    holder: str = "helm-runner"

    def __post_init__(self) -> None:
        if self.features is None:
            self.features = FeatureProbe(self.own, self.kube, system_namespace=self.settings.system_namespace)
        if not self.compatibility:
            self.compatibility = load_compatibility(self.settings.compatibility_file)

    @property
    def max_deliver(self) -> int:
        return self.settings.max_deliver

    @property
    def pending_min_age_s(self) -> float:
        own = self.own.pending_min_age_s
        return own if own is not None else self.settings.helm_timeout_s

    async def cluster_features(self) -> ClusterFeatures:
        assert self.features is not None
        return await self.features.get()
