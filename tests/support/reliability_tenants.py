"""Tenants for reliability runs: requests with sealed canary LLM keys, simulated adapters, and the
postconditions every onboarded tenant must meet (checked from Postgres, the cluster and Helm).

``request`` publishes ``TenantRequested`` exactly as the CLI and the API do (``commands.send``: the
command's ``Nats-Msg-Id`` is its event id). The LLM key is sealed on the "client" side to the install's
public key, so only the secrets service can open it; the plaintexts are returned as canaries.

``AdapterFleet`` plays every tenant's adapter: once the tenant's ``adapter-token`` Secret exists it reads
the token from the cluster (as the pod mounts it) and heartbeats every ``interval_s`` over NATS — one
task and one connection for the whole fleet, each beat carrying its own tenant's token.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import secrets
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import yaml
from soctalk_api import commands as cmds
from soctalk_common.bus import Bus
from soctalk_common.db import models as m
from soctalk_common.errors import GatewayError
from soctalk_common.gateways.kube import KubeGateway
from soctalk_common.sealing import seal
from soctalk_common.settings import REPO_ROOT
from soctalk_heartbeat.simulator import AdapterSimulator, token_from_cluster
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

EXAMPLE = yaml.safe_load((REPO_ROOT / "deploy" / "examples" / "tenant-acme.yaml").read_text())
RELEASE = "soctalk-tenant"

#: The lifecycle events of onboarding, each expected exactly once per tenant.
ONBOARDING_STEPS = ("TenantAccepted", "SecretsReady", "ChartApplied", "TenantActivated")


def canary(kind: str) -> str:
    """A unique value that must never show up outside the Secrets meant to hold it (URL-safe chars)."""
    return f"canary-{kind}-{secrets.token_urlsafe(24)}"


async def public_key(sm: async_sessionmaker[AsyncSession]) -> str | None:
    async with sm() as s:
        key = await s.get(m.SystemKey, "sealing")
    return None if key is None else str(key.public_key)


def tenant_config(slug: str, sealed_llm_key: str) -> dict[str, Any]:
    config: dict[str, Any] = copy.deepcopy(EXAMPLE["config"])
    config["slug"] = slug
    config["displayName"] = f"Reliability {slug}"
    config["profile"] = "small-dev"
    config["llm"]["apiKey"] = {"sealed": sealed_llm_key}
    config["wazuhIngress"]["hostname"] = f"{slug}.soc.mssp.example.com"
    return config


@dataclass
class Requested:
    slug: str
    tenant_id: uuid.UUID
    request_id: str
    llm_key: str  # the plaintext, a canary


async def request(bus: Bus, public: str, slug: str) -> Requested:
    key = canary("llm")
    event = cmds.tenant_requested(tenant_config(slug, seal(public, key)), f"rel-{slug}")
    await cmds.send(bus, event)
    return Requested(slug, event.tenant_id, event.request_id, key)


# --------------------------------------------------------------------------------------------------
# adapters
# --------------------------------------------------------------------------------------------------


@dataclass
class AdapterFleet:
    nats_url: str
    kubeconfig_path: str
    interval_s: float = 1.0
    tenants: dict[uuid.UUID, str] = field(default_factory=dict)  # tenant id → slug
    sims: dict[uuid.UUID, AdapterSimulator] = field(default_factory=dict)
    tokens: dict[uuid.UUID, str] = field(default_factory=dict)
    beats: int = 0
    failed_beats: int = 0

    def add(self, tenant_id: uuid.UUID, slug: str) -> None:
        self.tenants[tenant_id] = slug

    async def run(self, stop: asyncio.Event) -> None:
        bus: Bus | None = None
        kube = await KubeGateway.from_kubeconfig(self.kubeconfig_path)
        try:
            while not stop.is_set():
                if bus is None:
                    with contextlib.suppress(Exception):
                        bus = await Bus.connect(self.nats_url, name="adapter-fleet")
                if bus is not None:
                    await self._tick(bus, kube)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval_s)
        finally:
            await kube.close()
            if bus is not None:
                await bus.close()

    async def _tick(self, bus: Bus, kube: KubeGateway) -> None:
        for tenant_id, slug in list(self.tenants.items()):
            if tenant_id not in self.sims:
                try:
                    token = await token_from_cluster(kube, slug)
                except (GatewayError, OSError):  # no Secret yet (NotFound) or the API hiccuped
                    continue
                self.tokens[tenant_id] = token
                self.sims[tenant_id] = AdapterSimulator(self.nats_url, tenant_id, token, self.interval_s,
                                                        bus=bus)
        results = await asyncio.gather(*(s.beat_once() for s in self.sims.values()), return_exceptions=True)
        self.beats += sum(1 for r in results if not isinstance(r, BaseException))
        self.failed_beats += sum(1 for r in results if isinstance(r, BaseException))


# --------------------------------------------------------------------------------------------------
# postconditions
# --------------------------------------------------------------------------------------------------


async def states(sm: async_sessionmaker[AsyncSession], ids: list[uuid.UUID]) -> Counter[str]:
    async with sm() as s:
        rows = (await s.execute(select(m.Tenant.state, func.count()).where(m.Tenant.id.in_(ids))
                                .group_by(m.Tenant.state))).all()
    return Counter({state: n for state, n in rows})


@dataclass
class TenantAudit:
    """What one tenant looks like after a run; ``problems`` lists every broken postcondition."""

    slug: str
    state: str | None
    revisions: list[int]
    step_counts: dict[str, int]
    secret_versions: dict[str, list[str]]
    problems: list[str] = field(default_factory=list)


async def audit_tenant(sm: async_sessionmaker[AsyncSession], kube: KubeGateway, helm: Any,
                       req: Requested) -> TenantAudit:
    async with sm() as s:
        tenant = await s.get(m.Tenant, req.tenant_id)
        lifecycle = list((await s.execute(select(m.TenantLifecycleEvent.type).where(
            m.TenantLifecycleEvent.tenant_id == req.tenant_id))).scalars())
        refs = list((await s.execute(select(m.TenantSecret).where(
            m.TenantSecret.tenant_id == req.tenant_id))).scalars())
    counts = Counter(lifecycle)
    history = await helm.history(RELEASE, f"tenant-{req.slug}")
    versions: dict[str, list[str]] = {}
    for r in refs:
        versions.setdefault(f"{r.namespace or r.path}/{r.name}/{r.key}", []).append(r.version_label)
    a = TenantAudit(req.slug, tenant.state if tenant else None, [h.revision for h in history],
                    {step: counts.get(step, 0) for step in ONBOARDING_STEPS}, versions)
    if tenant is None:
        a.problems.append("no tenant row")
        return a
    if tenant.state != "active":
        a.problems.append(f"state {tenant.state} (failed step {tenant.failed_step}: {tenant.last_error})")
    if a.revisions != [1]:
        a.problems.append(f"helm revisions {a.revisions} (expected exactly one install, revision 1)")
    for step, n in a.step_counts.items():
        if n != 1:
            a.problems.append(f"lifecycle {step} recorded {n} times")
    if not refs:
        a.problems.append("no secret references")
    for where, labels in versions.items():
        if labels != ["v1"]:
            a.problems.append(f"secret {where} versions {labels} (expected one set at v1)")
    ns = f"tenant-{req.slug}"
    if not await kube.namespace_exists(ns):
        a.problems.append(f"namespace {ns} missing")
    return a
