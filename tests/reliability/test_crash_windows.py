"""Minimal, deterministic reproductions of crash windows the chaos run found.

The helm-runner writes to the cluster (``helm install``) and only afterwards commits what it did
(``HelmInstalled`` lifecycle event, release operation row) in one transaction. When the process dies
— or its commit fails — between the two, the redelivered ``SecretsReady`` finds the release already
deployed. It used to reconcile to "watch revision 1" without a write and never record
``HelmInstalled`` (the install happened exactly once, but the tenant's lifecycle did not say so);
fixed in the helm-runner (942cd03), this test keeps it fixed.

Here the rest of the control plane runs as processes (``ReliabilityStack`` without its helm-runner);
the helm-runner runs in this process with a fault-injecting Helm port that lets the first install
really happen and then loses the runner's work, exactly as a SIGKILL at that point would (nothing of
the handler commits; JetStream redelivers).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections import Counter
from typing import Any

import pytest
from soctalk_common.bus import Bus
from soctalk_common.db import models as m
from soctalk_common.db.session import make_engine, make_sessionmaker
from soctalk_common.errors import Unavailable
from soctalk_common.gateways.helm import HelmGateway
from soctalk_common.gateways.kube import KubeGateway
from soctalk_common.settings import Settings
from soctalk_common.uow import UnitOfWorkFactory
from sqlalchemy import select

from tests.support import reliability_tenants as rt
from tests.support.reliability_stack import FAST_RECOVERY_ENV, ReliabilityStack
from tests.support.waiting import eventually

pytestmark = pytest.mark.reliability


class DiesAfterInstall:
    """Delegates to the real Helm gateway; after the first install has really happened, the runner's
    work is lost (the exception unwinds the handler before its transaction commits)."""

    def __init__(self, inner: HelmGateway) -> None:
        self.inner = inner
        self.installs = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def install(self, *args: Any, **kwargs: Any) -> Any:
        info = await self.inner.install(*args, **kwargs)
        self.installs += 1
        if self.installs == 1:
            raise Unavailable("injected: the helm-runner died right after helm install returned")
        return info


async def test_helm_installed_is_recorded_when_the_runner_dies_after_installing() -> None:
    from soctalk_helm_runner.bootstrap import bootstrap

    ds = ReliabilityStack(skip=frozenset({"helm-runner"}), kubelet_delay_s=0.1, extra_env=dict(FAST_RECOVERY_ENV))
    await ds.start()
    engine = make_engine(ds.database_url, pool_size=4)
    sm = make_sessionmaker(engine)
    bus = await Bus.connect(ds.nats_url, name="helm-runner-under-test")
    kube = await KubeGateway.from_kubeconfig(ds.kubeconfig_path)
    helm = DiesAfterInstall(HelmGateway(ds.kubeconfig_path))
    env = ds.env()
    settings = Settings().model_copy(update={
        "nats_url": ds.nats_url, "database_url": ds.database_url, "kubeconfig": ds.kubeconfig_path,
        "default_profile": "small-dev", "token_hash_key": env["SOCTALK_TOKEN_HASH_KEY"],
        "ack_wait_s": 6.0, "retry_base_delay_s": 0.2, "retry_max_delay_s": 1.0, "lease_ttl_s": 15.0,
    })
    stop = asyncio.Event()
    process = bootstrap(settings, uow=UnitOfWorkFactory(sm), bus=bus, kube=kube, helm=helm)
    runner = asyncio.create_task(process.run(stop))
    fleet = rt.AdapterFleet(ds.nats_url, ds.kubeconfig_path)
    adapters = asyncio.create_task(fleet.run(stop))
    try:
        public = await eventually(lambda: rt.public_key(sm), timeout=60, what="the sealing key")
        req = await rt.request(bus, public, "crashwin")
        fleet.add(req.tenant_id, req.slug)

        async def active() -> bool:
            return (await rt.states(sm, [req.tenant_id])).get("active", 0) == 1

        await eventually(active, timeout=120, what="the tenant active after the runner's retry")
        async with sm() as s:
            types = Counter((await s.execute(select(m.TenantLifecycleEvent.type).where(
                m.TenantLifecycleEvent.tenant_id == req.tenant_id))).scalars())
        history = [h.revision for h in await helm.inner.history(rt.RELEASE, f"tenant-{req.slug}")]
    finally:
        stop.set()
        await asyncio.gather(runner, adapters, return_exceptions=True)
        helm.inner.close()
        await kube.close()
        await bus.close()
        await engine.dispose()
        await ds.stop()
        if not os.environ.get("SOCTALK_RELIABILITY_KEEP"):
            shutil.rmtree(ds.workdir, ignore_errors=True)
    assert helm.installs == 1 and history == [1]  # the release was installed exactly once
    assert types["HelmInstalled"] == 1, (
        f"the install happened once but its lifecycle event is recorded {types['HelmInstalled']} times: {types}")
