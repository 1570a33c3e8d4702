"""Canary: the secrets service, running as a process on the bus, leaks no material anywhere.

Tenants are provisioned, rotated, failed and decommissioned through real JetStream messages (the
service process + the outbox relay), with planted values: LLM keys sealed from canary plaintexts
(one of them sealed to a foreign key, so it fails), and every generated password, API key and
adapter token as read back from the cluster and Vault. None of them may appear in the captured logs
(JSON lines), a ``pg_dump`` of the database (bytea payloads decoded), or any message of any JetStream
stream (DLQ included). Helm release records are covered by the end-to-end suite, which installs charts.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import secrets
import subprocess
from typing import Any

import pytest
import structlog
from soctalk_common import events as ev
from soctalk_common import stack
from soctalk_common.bus import STREAMS, Bus
from soctalk_common.db import models as m
from soctalk_common.errors import Unavailable
from soctalk_common.gateways.kube import KubeGateway
from soctalk_common.gateways.vault import VaultGateway
from soctalk_common.logging import configure_logging
from soctalk_common.relay import OutboxRelay
from soctalk_common.sealing import generate_keypair, seal
from soctalk_secrets.bootstrap import bootstrap
from soctalk_secrets.domain import INVENTORY, SYSTEM_NAMESPACE, Gen
from sqlalchemy import func, select

from tests.integration import test_secrets_harness as h
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration
kube = h.kube
vault = h.vault


class FlakyKube(h.FaultyKube):
    """Fails the given Secret writes (1-based, counted across the process) once each, like an API
    server hiccup: the runtime retries the message and the logs get a retry line."""

    def __init__(self, inner: KubeGateway, fail: set[int]) -> None:
        super().__init__(inner, writes_ok=10**9)
        self.fail = fail

    def _write(self, what: str) -> None:
        self.writes += 1
        if self.writes in self.fail:
            raise Unavailable(f"{what}: API server answered 503 (injected)")


async def publish(bus: Bus, event: ev.Event) -> None:
    await bus.publish(event.subject, event.model_dump_json().encode(), msg_id=str(event.event_id))


async def outbox_has(uow, event_type: str, tenant_id) -> bool:  # type: ignore[no-untyped-def]
    async with uow.sessionmaker() as s:
        n = await s.scalar(select(func.count()).select_from(m.Outbox).where(
            m.Outbox.event_type == event_type, m.Outbox.subject.contains(str(tenant_id))))
    return bool(n)


async def all_published(uow) -> bool:  # type: ignore[no-untyped-def]
    async with uow.sessionmaker() as s:
        stmt = select(func.count()).select_from(m.Outbox).where(m.Outbox.published_at.is_(None))
    async with uow.sessionmaker() as s:
        return not await s.scalar(stmt)


async def material(kube: KubeGateway, vault: VaultGateway, tenant: m.Tenant) -> set[str]:
    """Every generated / supplied value of a tenant as stored now (cluster and Vault)."""
    found: set[str] = set()
    for s in INVENTORY:
        keys = [k.key for k in s.keys if k.gen != Gen.FIXED]
        ns = SYSTEM_NAMESPACE if s.location == "system" else f"tenant-{tenant.slug}"
        rec = await kube.read_secret(ns, s.secret_name(tenant.id))
        kv = await vault.kv_read(f"{h.MSSP}/tenants/{tenant.slug}/{s.purpose}")
        for data in (rec.data if rec else {}, kv.data if kv else {}):
            found.update(data[k] for k in keys if k in data and len(data[k]) >= 16)  # not usernames
    found |= {v.split("_", 2)[2] for v in found if v.startswith("sta_")}  # a token's secret part alone
    return found


async def stream_contents(bus: Bus) -> str:
    parts = []
    for spec in STREAMS:
        info = await bus.js.stream_info(spec.name)
        for seq in range(info.state.first_seq, info.state.last_seq + 1) if info.state.messages else ():
            msg = await bus.js.get_msg(spec.name, seq)
            parts.append((msg.data or b"").decode("utf-8", "replace"))
            parts.append(repr(msg.headers or {}))
    return "\n".join(parts)


def pg_dump(database_url: str) -> str:
    url = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    out = subprocess.run([str(stack.postgres_bin_dir() / "pg_dump"), "--no-owner", url],  # noqa: S603
                         capture_output=True, text=True, check=True, timeout=60).stdout
    # bytea (outbox payloads) is dumped as hex: decode it so material inside would be found too.
    decoded = [bytes.fromhex(x).decode("utf-8", "replace") for x in re.findall(r"\\\\x([0-9a-f]+)", out)]
    return out + "\n".join(decoded)


@pytest.fixture
def captured_logs() -> Any:
    buffer = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging("secrets", level="DEBUG", json_output=True, stream=buffer)
    yield buffer
    structlog.reset_defaults()
    root.handlers, root.level = saved[0], saved[1]


async def test_no_material_in_logs_postgres_or_streams(uow, database_url: str, nats_url: str, bus: Bus,
                                                       kube: KubeGateway, vault: VaultGateway, vault_server,
                                                       captured_logs: io.StringIO) -> None:
    settings = h.settings(nats_url=nats_url, vault_addr=vault_server.addr, vault_token=vault_server.token,
                          retry_base_delay_s=0.05, retry_max_delay_s=0.2)
    process = await bootstrap(settings, uow=uow, bus=bus, kube=FlakyKube(kube, {3}), vault=vault)
    async with uow.sessionmaker() as s:  # what `soctalk keys public` prints
        public = (await s.get(m.SystemKey, "sealing")).public_key  # type: ignore[union-attr]
    canaries = {n: f"sk-canary-{n}-{secrets.token_hex(12)}" for n in ("k8s", "vault", "foreign", "rot")}
    relay, stop = OutboxRelay(database_url, bus), asyncio.Event()
    tasks = [asyncio.create_task(relay.run()), asyncio.create_task(process.run(stop))]
    sim = h.EsoSimulator(kube, vault)
    try:
        async with sim.running():
            k8s = await h.add_tenant(uow, state="active")
            vt = await h.add_tenant(uow, backend="vault", state="active")
            bad = await h.add_tenant(uow)
            _, foreign = generate_keypair()
            for tenant, key in ((k8s, seal(public, canaries["k8s"])), (vt, seal(public, canaries["vault"])),
                                (bad, seal(foreign, canaries["foreign"]))):
                await publish(bus, h.accepted(tenant, llm_key=ev.LlmKeySource(sealed=key)))
            for tenant, kind in ((k8s, "SecretsReady"), (vt, "SecretsReady"), (bad, "SecretsFailed")):
                await eventually(lambda t=tenant, k=kind: outbox_has(uow, k, t.id), timeout=20, what=kind)
            planted = await material(kube, vault, k8s) | await material(kube, vault, vt)

            new_llm = ev.LlmKeySource(sealed=seal(public, canaries["rot"]))
            for event in (ev.SecretRotationRequested(tenant_id=k8s.id, service="llm", new_llm_key=new_llm),
                          ev.SecretRotationRequested(tenant_id=k8s.id, service="wazuh"),
                          ev.SecretRotationRequested(tenant_id=vt.id, service="adapter", overlap_s=60)):
                await publish(bus, event)
                await eventually(lambda e=event: outbox_has(uow, "SecretRotated", e.tenant_id), timeout=20,
                                 what=f"rotation of {event.service}")
                async with uow.sessionmaker() as s:  # one at a time: the next waits for this one's row
                    await s.execute(select(m.Outbox).where(m.Outbox.event_type == "SecretRotated"))
            planted |= await material(kube, vault, k8s) | await material(kube, vault, vt)

            await h.set_state(uow, k8s.id, "decommissioning")
            await kube.delete_namespace(f"tenant-{k8s.slug}", wait=True)
            await publish(bus, ev.ChartRemoved(tenant_id=k8s.id, release=f"tenant-{k8s.slug}",
                                               namespace=f"tenant-{k8s.slug}"))
            await eventually(lambda: outbox_has(uow, "SecretsRemoved", k8s.id), timeout=20, what="cleanup")
            await eventually(lambda: all_published(uow), timeout=20, what="relay caught up")
    finally:
        stop.set()
        relay.stop()
        await asyncio.gather(*tasks)

    planted |= set(canaries.values())
    assert len(planted) >= 25  # sanity: 2 × 10 stored values, 4 more after rotation, the foreign canary
    logs = captured_logs.getvalue()
    assert "secrets.ready" in logs and "handler.retry" in logs  # the logs are real and saw a retry
    dump = await asyncio.to_thread(pg_dump, database_url)
    assert str(k8s.id) in dump and '"event_type":"SecretsReady"' in dump  # payloads were decoded
    streams = await stream_contents(bus)
    assert "SecretRotated" in streams and "SecretAuditEvent" in streams
    for where, text in (("logs", logs), ("postgres", dump), ("jetstream", streams)):
        leaked = [v[:6] + "…" for v in planted if v in text]
        assert leaked == [], f"material found in {where}: {leaked}"
    await kube.delete_namespace(f"tenant-{vt.slug}")
    await kube.delete_namespace(f"tenant-{bad.slug}")
