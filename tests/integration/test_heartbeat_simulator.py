"""The adapter simulator behind ``soctalk adapter simulate``, on a real NATS server (core subjects:
heartbeats carry the token, so no stream stores them)."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field

import pytest
from soctalk_common.bus import Bus
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


class Listener:
    """What a heartbeat service replica would receive on the adapter subjects."""

    def __init__(self) -> None:
        self.msgs: list = []
        self.sub = None

    async def start(self, bus: Bus) -> Listener:
        async def on_msg(msg) -> None:  # type: ignore[no-untyped-def]
            self.msgs.append(msg)

        self.sub = await bus.nc.subscribe("soctalk.adapter.*.heartbeat", cb=on_msg)
        await bus.nc.flush()
        return self

    async def received(self) -> list:
        return list(self.msgs)


async def test_simulator_heartbeats_on_its_interval_until_stopped(bus: Bus, nats_url: str) -> None:
    token, _ = mint_adapter_token()
    tenant = uuid.uuid4()
    listener = await Listener().start(bus)
    sim = AdapterSimulator(nats_url, tenant, token, interval_s=0.02,
                           components={"wazuh": "ok", "thehive": ("degraded", "cassandra slow"), "cortex": "ok"})
    stop = asyncio.Event()
    task = asyncio.create_task(sim.run(stop))
    msgs = await eventually(lambda: _at_least(listener.received(), 3), what="three heartbeats")
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
    listener = await Listener().start(bus)
    sim = AdapterSimulator(nats_url, uuid.uuid4(), token)  # its own connection
    assert (await sim.beat_once()).status == "ok"
    sim.set_component("cortex", "down", "oom")
    hb = await sim.beat_once()
    assert hb.status == "down" and hb.components["cortex"].message == "oom"
    await sim.close()
    await eventually(lambda: _at_least(listener.received(), 2), what="both heartbeats")


async def test_heartbeats_are_never_stored_in_a_stream(bus: Bus, nats_url: str) -> None:
    """They carry the bearer token: no JetStream stream may capture the adapter subjects."""
    from nats.js.errors import NotFoundError

    token, _ = mint_adapter_token()
    await AdapterSimulator(nats_url, uuid.uuid4(), token, bus=bus).beat_once()
    with pytest.raises(NotFoundError):
        await bus.js.find_stream_name_by_subject("soctalk.adapter.x.heartbeat")
    for name in [s.config.name for s in await bus.js.streams_info()]:
        info = await bus.js.stream_info(name)
        for seq in range(info.state.first_seq, info.state.last_seq + 1) if info.state.messages else []:
            msg = await bus.js.get_msg(name, seq)
            assert token.encode() not in (msg.data or b"") and token not in json.dumps(msg.headers or {})


async def _at_least(coro, n: int):  # type: ignore[no-untyped-def]
    items = await coro
    return items if len(items) >= n else None
