"""Fuzzing the bus: ``TenantRequested`` and ``AdapterHeartbeat`` messages against the running services.

The provisioner, secrets, heartbeat, relay and API run as processes (``ReliabilityStack``; no
helm-runner: nothing here installs a chart). Hypothesis generates messages that are invalid by
construction and each is published as a client would:

* ``TenantRequested`` with a broken tenant config → the provisioner's ``TenantRejected`` (lifecycle)
  names the field; with a broken envelope, not JSON, not an object or an unknown type → the runtime
  dead-letters it (``SOCTALK_DLQ``) with a reason naming the field. No tenant, namespace, Secret or
  ``TenantAccepted`` ever results.
* ``AdapterHeartbeat`` with a valid token but a broken payload → over HTTP a 400 listing the field
  (413 when too large); over NATS (core, heartbeats are never stored) refused as ``invalid_payload`` /
  ``too_large`` by the service's own count. The tenant's state, heartbeat record and lifecycle do not change.

Afterwards every service process is still alive and still does its job (a valid request is accepted,
a valid heartbeat is taken).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from soctalk_api import commands as cmds
from soctalk_common import events as ev
from soctalk_common.bus import DLQ_STREAM, Bus
from soctalk_common.db import models as m
from soctalk_common.db.session import make_engine, make_sessionmaker
from soctalk_common.gateways.kube import KubeGateway
from soctalk_heartbeat.simulator import token_from_cluster
from sqlalchemy import func, select

from tests.reliability.conftest import SIZES
from tests.reliability.results import record
from tests.support import reliability_fuzz as fz
from tests.support import reliability_scan as scan
from tests.support import reliability_tenants as rt
from tests.support.reliability_stack import FAST_RECOVERY_ENV, ReliabilityStack
from tests.support.waiting import eventually

pytestmark = pytest.mark.reliability

FUZZ: dict[str, dict[str, Any]] = {}


def _record(surface: str, tried: Counter[str], rejected: Counter[str]) -> None:
    FUZZ[surface] = {"tried": sum(tried.values()), "rejected": sum(rejected.values()),
                     "by_kind": dict(sorted(tried.items()))}
    record("fuzz_messages", {"surfaces": FUZZ, "fuzz_tried": sum(s["tried"] for s in FUZZ.values()),
                             "fuzz_rejected": sum(s["rejected"] for s in FUZZ.values())})


@dataclass
class Bed:
    ds: ReliabilityStack
    sm: Any
    bus: Bus
    kube: KubeGateway
    tenant: rt.Requested
    token: str


@pytest.fixture(scope="module")
async def bed() -> AsyncIterator[Bed]:
    ds = ReliabilityStack(skip=frozenset({"helm-runner"}), kubelet_delay_s=0.1, extra_env=dict(FAST_RECOVERY_ENV))
    await ds.start()
    engine = make_engine(ds.database_url, pool_size=4)
    sm = make_sessionmaker(engine)
    bus = await Bus.connect(ds.nats_url, name="reliability-fuzz")
    kube = await KubeGateway.from_kubeconfig(ds.kubeconfig_path)
    try:
        public = await eventually(lambda: rt.public_key(sm), timeout=60, what="the sealing key")
        tenant = await rt.request(bus, public, "fuzzed")
        # Without a helm-runner the tenant waits in ``provisioning`` with its token issued: a state in which
        # its adapter's token is honoured, so payloads are judged, not the token.
        await eventually(lambda: _state_is(sm, tenant.tenant_id, "provisioning"), timeout=60, what="provisioning")
        token = await eventually(lambda: _token(kube, tenant.slug), timeout=30, what="the adapter token")
        yield Bed(ds, sm, bus, kube, tenant, token)
    finally:
        await kube.close()
        await bus.close()
        await engine.dispose()
        await ds.stop()
        dead = {n: p.returncode for n, p in ds.procs.items() if p.returncode not in (0, -15, None)}
        if not os.environ.get("SOCTALK_RELIABILITY_KEEP"):
            shutil.rmtree(ds.workdir, ignore_errors=True)
        assert not dead, f"services exited abnormally: {dead}"


async def _state_is(sm: Any, tid: uuid.UUID, state: str) -> bool:
    return (await rt.states(sm, [tid])).get(state, 0) == 1


async def _token(kube: KubeGateway, slug: str) -> str | None:
    try:
        return await token_from_cluster(kube, slug)
    except Exception:  # noqa: BLE001 - not written yet
        return None


async def _side_effects(bed: Bed) -> dict[str, Any]:
    """What a refused message must not change."""
    async with bed.sm() as s:
        tenants = await s.scalar(select(func.count()).select_from(m.Tenant))
        accepted = await s.scalar(select(func.count()).select_from(m.Outbox)
                                  .where(m.Outbox.event_type == "TenantAccepted"))
        refs = await s.scalar(select(func.count()).select_from(m.TenantSecret))
        hb = await s.get(m.HeartbeatState, bed.tenant.tenant_id)
        t = await s.get(m.Tenant, bed.tenant.tenant_id)
        lifecycle = await s.scalar(select(func.count()).select_from(m.TenantLifecycleEvent).where(
            m.TenantLifecycleEvent.tenant_id == bed.tenant.tenant_id))
    return {"tenants": tenants, "accepted": accepted, "secret_refs": refs,
            "namespaces": await scan.tenant_namespaces(bed.kube), "tenant_state": t.state if t else None,
            "last_seen": hb.last_seen if hb else None, "tenant_lifecycle": lifecycle}


# ------------------------------------------------------------------------------------------------
# TenantRequested
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    case: fz.Case
    seq: int
    request_id: str | None  # set when the envelope is valid (the provisioner judges the config)


async def test_every_invalid_tenant_request_on_the_bus_is_rejected_naming_its_field(bed: Bed) -> None:
    valid = json.loads(ev.TenantRequested(tenant_id=uuid.uuid4(), request_id="x", config={}).model_dump_json())
    config_case = fz.config_cases().map(lambda c: ("config", c))
    envelope_case = fz.envelope_cases(valid).map(lambda c: ("envelope", c))
    malformed = fz.malformed_bodies().map(lambda c: ("malformed", c))
    baseline = await _side_effects(bed)
    sent: list[Sent] = []

    async def publish(item: tuple[str, fz.Case]) -> None:
        family, case = item
        tid = uuid.uuid4()
        rid: str | None = None
        if family == "config":
            rid = f"fuzz-{uuid.uuid4().hex[:12]}"
            event = ev.TenantRequested(tenant_id=cmds.tenant_id_for(rid), request_id=rid, config=case.doc)
            body, tid = event.model_dump_json().encode(), event.tenant_id
        elif family == "envelope":
            doc = dict(case.doc)
            if case.path != "$.event_id":
                doc["event_id"] = str(uuid.uuid4())
            body = json.dumps(doc).encode()
        else:
            body = case.doc
        seq = await bed.bus.publish(f"soctalk.tenant.{tid}.TenantRequested", body, msg_id=str(uuid.uuid4()))
        sent.append(Sent(case, seq, rid))

    await fz.explore(fz.st.one_of(config_case, envelope_case, malformed), publish, max_examples=SIZES.fuzz_examples)

    async def verdicts() -> dict[int, list[str]] | None:
        """Per published message: the paths/reason its rejection names, once every one has one."""
        found: dict[int, list[str]] = {}
        async with bed.sm() as s:
            rows = (await s.execute(select(m.TenantLifecycleEvent.details).where(
                m.TenantLifecycleEvent.type == "TenantRejected"))).scalars().all()
        by_rid = {d.get("request_id"): [e["path"] for e in d.get("errors", [])] for d in rows}
        for x in sent:
            if x.request_id is not None and x.request_id in by_rid:
                found[x.seq] = by_rid[x.request_id]
        for msg in await scan.read_stream(bed.bus, DLQ_STREAM):
            rec = json.loads(msg.data)
            if rec.get("consumer") == "provisioner--TenantRequested":
                found[int(rec["stream_sequence"])] = [rec["reason"]]
        return found if all(x.seq in found for x in sent) else None

    found = await eventually(verdicts, timeout=60, what="a rejection for every fuzzed TenantRequested")
    tried: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    unclear = []
    for x in sent:
        tried[x.case.kind] += 1
        said = found[x.seq]
        if x.request_id is not None:  # paths reported by the provisioner's validator
            ok = fz.names_path(said, x.case.path)
        elif x.case.path == "$":
            ok = "malformed" in said[0] or "not a JSON object" in said[0]
        else:  # "invalid payload: $.tenant_id: ..." or "unknown event_type ..."
            ok = f"{x.case.path}:" in said[0] or x.case.path.removeprefix("$.") in said[0]
        if ok:
            rejected[x.case.kind] += 1
        else:
            unclear.append((x.case.kind, x.case.path, said))
    _record("tenant_requested", tried, rejected)
    assert unclear == [], unclear[:5]
    after = await _side_effects(bed)
    assert after == baseline, "a rejected request had an effect"
    assert all(bed.ds.alive().values()), bed.ds.alive()

    # Still doing its job: a valid request is accepted (a tenant row appears).
    public = await rt.public_key(bed.sm)
    assert public is not None
    ok = await rt.request(bed.bus, public, "fuzz-control")
    await eventually(lambda: _state_is(bed.sm, ok.tenant_id, "provisioning"), timeout=60, what="the control tenant")


# ------------------------------------------------------------------------------------------------
# AdapterHeartbeat
# ------------------------------------------------------------------------------------------------


async def _metrics(client: httpx.AsyncClient) -> Counter[str]:
    out: Counter[str] = Counter()
    for family in text_string_to_metric_families((await client.get("/metrics")).text):
        for s in family.samples:
            if s.name in ("soctalk_heartbeat_refused_total", "soctalk_heartbeat_accepted_total"):
                out[f"{s.name}:{','.join(s.labels.values())}"] = int(s.value)
    return out


async def test_every_invalid_heartbeat_is_refused_naming_its_field(bed: Bed) -> None:
    tid = bed.tenant.tenant_id
    valid = json.loads(ev.AdapterHeartbeat(tenant_id=tid, adapter_version="1.0.0", status="ok").model_dump_json())
    auth = {"Authorization": f"Bearer {bed.token}"}
    huge = fz.Case({**valid, "adapter_version": "v", "padding": "x" * 70_000}, "", "too large")
    cases = fz.st.one_of(fz.heartbeat_cases(valid), fz.malformed_bodies().map(lambda c: fz.Case(c.doc, "$", c.kind)))
    baseline = await _side_effects(bed)
    tried: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    published = 0
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{bed.ds.heartbeat_port}", timeout=10) as client:
        before = await _metrics(client)

        async def check(case: fz.Case) -> None:
            nonlocal published
            body = case.doc if isinstance(case.doc, bytes) else json.dumps(case.doc).encode()
            r = await client.post(f"/v1/heartbeat/{tid}", content=body, headers=auth)
            tried[f"http: {case.kind}"] += 1
            if case.kind == "too large":
                assert r.status_code == 413, (case.kind, r.status_code, r.text)
            else:
                assert r.status_code == 400, (case, r.status_code, r.text)
                fields = r.json().get("fields") or []
                assert fz.names_path(fields, case.path) or (case.path == "$" and fields), (case.path, fields)
            rejected[f"http: {case.kind}"] += 1
            await bed.bus.publish(f"soctalk.adapter.{tid}.heartbeat", body, msg_id=str(uuid.uuid4()), headers=auth)
            published += 1

        await check(huge)  # bigger than any heartbeat may be (64 KiB)
        await fz.explore(cases, check, max_examples=SIZES.fuzz_examples)

        async def judged() -> Counter[str] | None:
            now = await _metrics(client)
            delta = sum(now.values()) - sum(before.values())
            return now if delta >= 2 * published else None  # every HTTP post and every message counted

        after = await eventually(judged, timeout=30, what="every fuzzed heartbeat judged")
        accepted = sum(v - before[k] for k, v in after.items() if "accepted" in k)
        refused_payload = sum(after[k] - before[k] for k in after
                              if k.endswith(":invalid_payload") or k.endswith(":too_large"))
        # The service counts HTTP and NATS refusals together; one HTTP post per example.
        tried["nats: all kinds"] += published
        rejected["nats: all kinds"] += refused_payload - published
        _record("adapter_heartbeat", tried, rejected)
        assert accepted == 0, f"{accepted} invalid heartbeats were accepted"
        assert refused_payload == 2 * published
        assert await _side_effects(bed) == baseline, "a refused heartbeat had an effect"
        assert all(bed.ds.alive().values()), bed.ds.alive()
        # Still doing its job: a valid heartbeat is taken.
        ok = await client.post(f"/v1/heartbeat/{tid}", content=json.dumps(valid).encode(), headers=auth)
        assert ok.status_code == 202, ok.text
