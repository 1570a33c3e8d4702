"""The adapter simulator behind ``soctalk adapter simulate``, on a real NATS JetStream."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field

import pytest

from soctalk_common.bus import ADAPTER_STREAM, Bus
from soctalk_common.errors import NotFound, ValidationFailed
from soctalk_heartbeat.simulator import AdapterSimulator, token_from_cluster
from soctalk_secrets.domain import mint_adapter_token
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Secret:
    data: dict[str, str]


@dataclass
class SecretsOnly:
    """A fake of the one KubeGateway call the simulator makes (``read_secret``)."""

    secrets: dict[tuple[str, str], Secret] = field(default_factory=dict)
    reads: list[tuple[str, str]] = field(default_factory=list)

    async def read_secret(self, namespace: str, name: str) -> Secret | None:
        self.reads.append((namespace, name))
        return self.secrets.get((namespace, name))


async def test_token_from_cluster_reads_the_tenant_adapter_token_secret() -> None:
    token, _ = mint_adapter_token()
    kube = SecretsOnly({("tenant-acme", "adapter-token"): Secret({"token": token + "\n"}),
                        ("tenant-empty", "adapter-token"): Secret({"other": "x"})})
    assert await token_from_cluster(kube, "acme") == token
    assert kube.reads == [("tenant-acme", "adapter-token")]
    with pytest.raises(NotFound, match="tenant-ghost/adapter-token not found"):
        await token_from_cluster(kube, "ghost")
    with pytest.raises(NotFound, match="no key 'token'") as err:
        await token_from_cluster(kube, "empty")
    assert token not in str(err.value)
    with pytest.raises(ValidationFailed):
        await token_from_cluster(kube, "Not A Slug")


async def _stream_messages(bus: Bus) -> list:
    info = await bus.js.stream_info(ADAPTER_STREAM)
    if not info.state.messages:
        return []
    return [await bus.js.get_msg(ADAPTER_STREAM, seq) for seq in range(info.state.first_seq, info.state.last_seq + 1)]


async def test_simulator_heartbeats_on_its_interval_until_stopped(bus: Bus, nats_url: str) -> None:
    token, _ = mint_adapter_token()
    tenant = uuid.uuid4()
    sim = AdapterSimulator(nats_url, tenant, token, interval_s=0.02,
                           components={"wazuh": "ok", "thehive": ("degraded", "cassandra slow"), "cortex": "ok"})
    stop = asyncio.Event()
    task = asyncio.create_task(sim.run(stop))
    msgs = await eventually(lambda: _at_least(_stream_messages(bus), 3), what="three heartbeats")
    stop.set()
    await asyncio.wait_for(task, 5)
    assert sim.failures == 0 and sim.sent >= 3

    msg = msgs[0]
    assert msg.subject == f"soctalk.adapter.{tenant}.heartbeat"
    assert msg.headers["Authorization"] == f"Bearer {token}"
    assert token not in msg.data.decode()  # the token travels only in the header
    body = json.loads(msg.data)
    assert body["event_type"] == "AdapterHeartbeat" and body["tenant_id"] == str(tenant)
    assert body["status"] == "degraded"
    assert body["components"]["thehive"] == {"status": "degraded", "message": "cassandra slow"}
    assert len({json.loads(m.data)["event_id"] for m in msgs}) == len(msgs)


async def test_beat_once_reports_the_worst_component(bus: Bus, nats_url: str) -> None:
    token, _ = mint_adapter_token()
    sim = AdapterSimulator(nats_url, uuid.uuid4(), token)  # its own connection
    assert (await sim.beat_once()).status == "ok"
    sim.set_component("cortex", "down", "oom")
    hb = await sim.beat_once()
    assert hb.status == "down" and hb.components["cortex"].message == "oom"
    await sim.close()
    assert len(await _stream_messages(bus)) == 2


async def _at_least(coro, n: int):  # type: ignore[no-untyped-def]
    items = await coro
    return items if len(items) >= n else None
