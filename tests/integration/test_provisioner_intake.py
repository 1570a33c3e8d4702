"""TenantRequested end to end on real NATS and Postgres: accepted to ``pending``, every rejection reason,
duplicate requests."""

from __future__ import annotations

import json
import uuid

import pytest
from soctalk_common import events as ev
from soctalk_common.bus import EVENTS_STREAM
from soctalk_common.db import models as m
from soctalk_common.settings import SOCTALK_NS
from sqlalchemy import func, select

from tests.integration import test_provisioner_harness as harness
from tests.integration.test_provisioner_harness import SEALED, Provisioner, tenant_config
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

prov, idle = harness.prov, harness.idle  # the shared fixtures

PLAINTEXT = "sk-live-CANARY-intake-9f8e7d6c5b4a"


async def _on_bus(prov: Provisioner, subject: str) -> list[dict]:
    info = await prov.bus.js.stream_info(EVENTS_STREAM)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await prov.bus.js.get_msg(EVENTS_STREAM, seq)
        if msg.subject == subject:
            out.append(json.loads(msg.data))
    return out


async def test_happy_path_to_pending_with_tenant_accepted_on_the_bus(prov: Provisioner) -> None:
    rid = "req-acme-1"
    tid = uuid.uuid5(SOCTALK_NS, rid)  # what the HTTP API derives
    req = await prov.request(tenant_config("acme", chartVersion="v1.1.0"), request_id=rid, tenant_id=tid)

    tenant = await prov.wait_state(tid, "pending")
    assert tenant is not None
    assert (tenant.slug, tenant.request_id, tenant.profile) == ("acme", rid, "small-dev")
    assert tenant.chart_version == "v1.1.0"
    assert tenant.completed_steps == ["validate"]
    assert tenant.llm_key_source == {"sealed": SEALED}
    assert SEALED not in json.dumps(tenant.config) and tenant.config["llm"]["apiKeySource"] == "sealed"

    accepted = await eventually(lambda: _on_bus(prov, f"soctalk.tenant.{tid}.TenantAccepted"),
                                what="TenantAccepted published")
    assert len(accepted) == 1
    a = ev.TenantAccepted.model_validate(accepted[0])
    assert (a.slug, a.namespace, a.profile, a.resume) == ("acme", "tenant-acme", "small-dev", False)
    assert a.llm_key == ev.LlmKeySource(sealed=SEALED)
    assert (a.causation_id, a.correlation_id) == (req.event_id, req.correlation_id)
    [row] = await prov.lifecycle(tid, "TenantAccepted")
    assert (row.state_from, row.state_to, row.step) == ("requested", "pending", "validate")


async def test_the_same_request_twice_makes_one_tenant(prov: Provisioner) -> None:
    first = await prov.request(tenant_config("dup"), request_id="req-dup")
    await prov.wait_state(first.tenant_id, "pending")
    # Same request id, a new event and even another tenant id: nothing new.
    again = await prov.request(tenant_config("dup"), request_id="req-dup", tenant_id=uuid.uuid4())
    await prov.wait_lifecycle(first.tenant_id, "DuplicateRequest")
    async with prov.uow.sessionmaker() as s:
        assert (await s.execute(select(func.count()).select_from(m.Tenant))).scalar_one() == 1
    assert await prov.tenant(again.tenant_id) is None
    assert len(await prov.emitted(first.tenant_id, "TenantAccepted")) == 1
    assert await prov.emitted(again.tenant_id, "TenantRejected") == []


async def _rejected(prov: Provisioner, req: ev.TenantRequested) -> ev.TenantRejected:
    [rej] = await prov.wait_emitted(req.tenant_id, "TenantRejected")
    assert isinstance(rej, ev.TenantRejected)
    assert rej.request_id == req.request_id
    return rej


async def test_every_rejection_reason_names_its_json_paths(prov: Provisioner) -> None:
    taken = await prov.request(tenant_config("taken"))
    await prov.wait_state(taken.tenant_id, "pending")
    bad_schema = tenant_config("Bad_Slug", profile="huge")
    del bad_schema["wazuhIngress"], bad_schema["displayName"]
    cases = {
        "schema": (tenant_config("Bad_Slug", profile="huge",
                                 wazuhIngress={"mode": "x", "hostname": "h.example"}),
                   ["$.slug", "$.profile", "$.wazuhIngress.mode"]),
        "missing": (bad_schema, ["$.displayName", "$.profile", "$.slug", "$.wazuhIngress"]),
        "slug conflict": (tenant_config("taken"), ["$.slug"]),
        "unknown chart version": (tenant_config("newer", chartVersion="v9.9.9"), ["$.chartVersion"]),
        "older chart not in the matrix": (tenant_config("older", chartVersion="v0.1.0"), ["$.chartVersion"]),
        "slug and chart": (tenant_config("taken", chartVersion="v9.9.9"), ["$.chartVersion", "$.slug"]),
    }
    sent = {name: await prov.request(cfg) for name, (cfg, _) in cases.items()}
    for name, (_, paths) in cases.items():
        rej = await _rejected(prov, sent[name])
        assert sorted(e.path for e in rej.errors) == sorted(paths), name
        assert await prov.tenant(sent[name].tenant_id) is None, name
        [row] = await prov.lifecycle(sent[name].tenant_id, "TenantRejected")
        assert row.state_from == "requested" and row.state_to is None and row.step == "validate"
        assert sorted(e["path"] for e in row.details["errors"]) == sorted(paths)
    assert await prov.state(taken.tenant_id) == "pending"  # the conflict did not touch the first tenant


async def test_a_plaintext_key_is_rejected_and_lands_nowhere(prov: Provisioner) -> None:
    cfg = tenant_config("leaky")
    cfg["llm"]["apiKey"] = PLAINTEXT
    req = await prov.request(cfg)
    rej = await _rejected(prov, req)
    assert [e.path for e in rej.errors] == ["$.llm.apiKey"]
    assert "soctalk keys public" in rej.errors[0].message
    await prov.wait_lifecycle(req.tenant_id, "TenantRejected")
    async with prov.uow.sessionmaker() as s:  # nothing we wrote holds the key
        outbox = b"".join((await s.execute(select(m.Outbox.payload))).scalars())
        lifecycle = json.dumps([[r.message, r.details] for r in
                                (await s.execute(select(m.TenantLifecycleEvent))).scalars()])
    assert PLAINTEXT.encode() not in outbox and PLAINTEXT not in lifecycle


async def test_a_blocked_chart_version_is_rejected(idle: Provisioner) -> None:
    async with idle.uow() as tx:  # the matrix as synced, with one pair blocked
        row = await tx.session.get(m.ChartCompatibility, ("v1.1.0", "v1.0.1"))
        assert row is not None
        row.status, row.notes = "blocked", "CVE-2026-0001"
        await tx.commit()
    req = ev.TenantRequested(tenant_id=uuid.uuid4(), request_id="req-blocked",
                             config=tenant_config("blocked", chartVersion="v1.0.1"))
    await idle.handle(req)
    [rej] = await idle.emitted(req.tenant_id, "TenantRejected")
    assert isinstance(rej, ev.TenantRejected)
    assert [e.path for e in rej.errors] == ["$.chartVersion"] and "CVE-2026-0001" in rej.errors[0].message


async def test_a_deprecated_chart_version_is_accepted_with_a_warning(idle: Provisioner) -> None:
    req = ev.TenantRequested(tenant_id=uuid.uuid4(), request_id="req-old",
                             config=tenant_config("old", chartVersion="v1.0.0"))
    await idle.handle(req)
    assert await idle.state(req.tenant_id) == "pending"
    [warn] = await idle.lifecycle(req.tenant_id, "CompatibilityWarning")
    assert "deprecated" in warn.message


async def test_a_tenant_id_already_used_by_another_request_is_rejected(idle: Provisioner) -> None:
    first = ev.TenantRequested(tenant_id=uuid.uuid4(), request_id="req-a", config=tenant_config("first"))
    await idle.handle(first)
    clash = ev.TenantRequested(tenant_id=first.tenant_id, request_id="req-b", config=tenant_config("second"))
    await idle.handle(clash)
    [rej] = await idle.emitted(first.tenant_id, "TenantRejected")
    assert isinstance(rej, ev.TenantRejected) and [e.path for e in rej.errors] == ["$.tenant_id"]
    tenant = await idle.tenant(first.tenant_id)
    assert tenant is not None and tenant.slug == "first"
