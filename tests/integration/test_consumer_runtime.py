"""Consumer runtime with inbox and DLQ, on real NATS JetStream and Postgres."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

import pytest
from soctalk_common import events as ev
from soctalk_common.bus import DLQ_STREAM, Bus
from soctalk_common.db import models as m
from soctalk_common.errors import PermanentError, TemporaryError
from soctalk_common.runtime import Ctx, ServiceRuntime
from sqlalchemy import func, select

from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


@dataclass
class Probe:
    calls: list[uuid.UUID] = field(default_factory=list)
    fail_times: int = 0
    permanent: bool = False


async def on_retry(event: ev.TenantRetryRequested, ctx: Ctx[Probe]) -> None:
    """A handler with a database effect: one lifecycle row per message."""
    ctx.deps.calls.append(event.event_id)
    if ctx.deps.permanent:
        raise PermanentError("tenant config can never be applied")
    if ctx.deps.fail_times > 0:
        ctx.deps.fail_times -= 1
        raise TemporaryError("api server busy", delay=0.05)
    async with ctx.uow() as tx:
        tx.lifecycle(event, "Retried", step="test")
        await tx.commit()


@pytest.fixture
async def runtime(bus: Bus, uow, nats_url):  # type: ignore[no-untyped-def]
    rt: ServiceRuntime[Probe] = ServiceRuntime("testsvc", bus=bus, uow=uow, deps=Probe(), max_deliver=4,
                                               ack_wait_s=5, retry_base_s=0.02, retry_cap_s=0.1,
                                               pull_timeout_s=0.2)
    rt.route("TenantRetryRequested", on_retry)
    await rt.start(nats_url)
    yield rt
    await rt.stop()


async def _lifecycle_rows(sessionmaker, type_: str) -> int:
    async with sessionmaker() as s:
        return int((await s.execute(select(func.count()).select_from(m.TenantLifecycleEvent)
                                    .where(m.TenantLifecycleEvent.type == type_))).scalar_one())


async def _dlq(bus: Bus) -> list[dict]:
    info = await bus.js.stream_info(DLQ_STREAM)
    out = []
    if info.state.messages:
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            out.append(json.loads((await bus.js.get_msg(DLQ_STREAM, seq)).data))
    return out


async def test_redelivered_message_has_no_second_effect(runtime, bus, sessionmaker):
    e = ev.TenantRetryRequested(tenant_id=uuid.uuid4())
    # Two copies with different Nats-Msg-Ids slip past JetStream dedupe: only the inbox stops the second.
    await bus.publish(e.subject, e.model_dump_json().encode(), msg_id="copy-1")
    await bus.publish(e.subject, e.model_dump_json().encode(), msg_id="copy-2")
    await eventually(lambda: _counter(runtime, "duplicates", 1), what="the duplicate skipped")
    assert await _lifecycle_rows(sessionmaker, "Retried") == 1
    assert runtime.counters["processed"] == 1


async def test_without_precheck_a_duplicate_runs_again_but_its_commit_writes_nothing(bus, uow, nats_url,
                                                                                    sessionmaker):
    rt: ServiceRuntime[Probe] = ServiceRuntime("nocheck", bus=bus, uow=uow, deps=Probe(), max_deliver=4,
                                               ack_wait_s=5, pull_timeout_s=0.2)
    rt.route("TenantRetryRequested", on_retry, precheck=False)
    await rt.start(nats_url)
    try:
        e = ev.TenantRetryRequested(tenant_id=uuid.uuid4())
        await bus.publish(e.subject, e.model_dump_json().encode(), msg_id="copy-1")
        await eventually(lambda: _counter(rt, "processed", 1), what="the first copy processed")
        await bus.publish(e.subject, e.model_dump_json().encode(), msg_id="copy-2")
        await eventually(lambda: _counter(rt, "duplicates", 1), what="the duplicate rolled back")
        assert rt.deps.calls == [e.event_id, e.event_id]  # decided twice …
        assert await _lifecycle_rows(sessionmaker, "Retried") == 1  # … recorded once
        assert rt.counters["processed"] == 1
    finally:
        await rt.stop()


async def test_temporary_errors_retry_with_backoff_then_succeed(runtime, bus, sessionmaker):
    runtime.deps.fail_times = 2
    e = ev.TenantRetryRequested(tenant_id=uuid.uuid4())
    await bus.publish(e.subject, e.model_dump_json().encode(), msg_id=str(e.event_id))
    await eventually(lambda: _counter(runtime, "processed", 1), what="processed after retries")
    assert runtime.counters["retried"] == 2
    assert len(runtime.deps.calls) == 3
    assert await _lifecycle_rows(sessionmaker, "Retried") == 1


async def test_permanent_error_dead_letters_with_reason_and_lifecycle_event(runtime, bus, sessionmaker):
    runtime.deps.permanent = True
    e = ev.TenantRetryRequested(tenant_id=uuid.uuid4())
    await bus.publish(e.subject, e.model_dump_json().encode(), msg_id=str(e.event_id))
    dlq = await eventually(lambda: _dlq(bus), what="a DLQ record")
    assert "can never be applied" in dlq[0]["reason"]
    assert dlq[0]["consumer"] == "testsvc--TenantRetryRequested"
    assert await _lifecycle_rows(sessionmaker, "MessageDeadLettered") == 1
    assert len(runtime.deps.calls) == 1  # not retried


async def test_poison_messages_go_to_dlq_and_consumer_keeps_going(runtime, bus, sessionmaker):
    tenant = uuid.uuid4()
    subject = f"soctalk.tenant.{tenant}.TenantRetryRequested"
    good = ev.TenantRetryRequested(tenant_id=tenant)
    wrong_version = json.loads(good.model_dump_json()) | {"schema_version": 99, "event_id": str(uuid.uuid4())}
    unknown = json.loads(good.model_dump_json()) | {"event_type": "NoSuchEvent", "event_id": str(uuid.uuid4())}
    huge = json.loads(good.model_dump_json()) | {"event_id": str(uuid.uuid4()), "pad": "x" * (1024 * 1024)}
    await bus.publish(subject, b"{not json", msg_id="bad-json")
    await bus.publish(subject, json.dumps(unknown).encode(), msg_id="unknown")
    await bus.publish(subject, json.dumps(wrong_version).encode(), msg_id="wrong-version")
    await bus.publish(subject, json.dumps(huge).encode(), msg_id="huge")
    await bus.publish(subject, good.model_dump_json().encode(), msg_id="good")

    dlq = await eventually(lambda: _at_least(_dlq(bus), 4), what="four DLQ records")
    reasons = " | ".join(d["reason"] for d in dlq)
    assert "malformed message" in reasons
    assert "unknown event_type 'NoSuchEvent'" in reasons
    assert "$.schema_version" in reasons
    assert "payload too large" in reasons
    await eventually(lambda: _counter(runtime, "processed", 1), what="the good message after the poison")
    # The wrong-version payload had a readable tenant id: its rejection names the field in the lifecycle.
    assert await _lifecycle_rows(sessionmaker, "EventRejected") == 1


async def _counter(rt: ServiceRuntime, name: str, n: int) -> bool:
    return rt.counters[name] >= n


async def _at_least(coro, n: int):  # type: ignore[no-untyped-def]
    items = await coro
    return items if len(items) >= n else None


async def test_a_slow_message_does_not_hold_back_the_others(bus, uow, nats_url):
    """Up to batch_size messages are in flight at any time: a finished one's slot is refilled while a
    slow one (a Helm install) is still running, instead of the next fetch waiting for the whole batch."""
    import asyncio

    release = asyncio.Event()
    slow_id: list[uuid.UUID] = []
    done: list[uuid.UUID] = []

    async def handler(event: ev.TenantRetryRequested, ctx: Ctx[Probe]) -> None:
        if not slow_id:
            slow_id.append(event.event_id)
            await release.wait()
        done.append(event.event_id)

    rt: ServiceRuntime[Probe] = ServiceRuntime("window", bus=bus, uow=uow, deps=Probe(), max_deliver=4,
                                               ack_wait_s=5, batch_size=2, pull_timeout_s=0.2)
    rt.route("TenantRetryRequested", handler)
    await rt.start(nats_url)
    try:
        first = ev.TenantRetryRequested(tenant_id=uuid.uuid4())
        await bus.publish(first.subject, first.model_dump_json().encode(), msg_id=str(first.event_id))
        async def started() -> bool:
            return bool(slow_id)

        async def handled(n: int) -> bool:
            return len(done) == n

        await eventually(started, what="the slow message started")
        rest = [ev.TenantRetryRequested(tenant_id=uuid.uuid4()) for _ in range(3)]
        for e in rest:
            await bus.publish(e.subject, e.model_dump_json().encode(), msg_id=str(e.event_id))
        # all three pass through the one free slot while the first is still running
        await eventually(lambda: handled(3), what="the others handled beside the slow one")
        assert slow_id[0] not in done
        release.set()
        await eventually(lambda: handled(4), what="the slow one finished too")
    finally:
        release.set()
        await rt.stop()
