"""Bulk tenant rows for the benchmarks (COPY, so seeding 10,000 tenants takes about a second).

Each seeded tenant is ``active`` and looks like one the pipeline produced: a tenant row with the
example config, an adapter token (prefix + keyed hash; the token itself is returned to the caller,
as the adapter would read it from its Secret), its secret references, a ``heartbeat_state`` row
(chart applied, activated, healthy) and a few lifecycle rows.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import yaml
from soctalk_common.settings import Settings
from soctalk_secrets.domain import new_token_record

EXAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "examples" / "tenant-acme.yaml"
COMPONENTS = ("wazuh", "thehive", "cortex")
SECRET_PURPOSES = ("wazuh-bootstrap", "thehive-bootstrap", "cortex-bootstrap", "cassandra-creds",
                   "wazuh-authd-secret", "adapter-token", "llm")


@dataclass(frozen=True)
class Seeded:
    tenant_id: uuid.UUID
    slug: str
    token: str


def dsn(database_url: str) -> str:
    return database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def seed_tenants(database_url: str, n: int, key: bytes, *, start: int = 0) -> list[Seeded]:
    settings = Settings()
    config = yaml.safe_load(EXAMPLE.read_text())["config"]
    now = datetime.now(UTC)
    seen = now - timedelta(seconds=5)
    out: list[Seeded] = []
    tenants, tokens, states, refs, lifecycle = [], [], [], [], []
    health = {"adapter_version": "bench-1.0.0", "status": "ok",
              "components": {c: {"status": "ok", "message": ""} for c in COMPONENTS}}
    comps = {c: "ok" for c in COMPONENTS}
    for i in range(start, start + n):
        tid = uuid.uuid4()
        slug = f"bench-{i:05d}"
        cfg = {**config, "slug": slug, "displayName": f"Bench {i}"}
        token, rec = new_token_record(tid, key, now)
        out.append(Seeded(tid, slug, token))
        tenants.append((tid, settings.mssp_id, settings.install_id, slug, f"bench-req-{tid}", f"Bench {i}",
                        "active", cfg["profile"], cfg["chartVersion"], "kubernetes", json.dumps(cfg),
                        json.dumps(["accepted", "secrets", "chart", "activated"]), 1, now, json.dumps(health),
                        now, now, now))
        tokens.append((rec.prefix, tid, rec.token_hash, rec.version_label, now))
        states.append((tid, now, uuid.uuid4(), now, uuid.uuid4(), now, False, seen, json.dumps(health),
                       json.dumps(comps)))
        for p in SECRET_PURPOSES:
            ns, name = (("soctalk-system", f"tenant-{tid}-llm") if p == "llm" else (f"tenant-{slug}", p))
            refs.append((tid, p, "kubernetes", ns, name, "token" if p == "adapter-token" else "password",
                         "v1", "active", now))
        corr = uuid.uuid4()
        for typ, frm, to in (("TenantAccepted", "requested", "pending"), ("SecretsReady", "pending", "provisioning"),
                             ("ChartApplied", None, None), ("TenantActivated", "provisioning", "active")):
            lifecycle.append((uuid.uuid4(), tid, slug, typ, frm, to, "bench", "", "{}", corr, None, now))
    conn = await asyncpg.connect(dsn(database_url))
    try:
        async with conn.transaction():
            await conn.copy_records_to_table(
                "tenants", records=tenants,
                columns=["id", "mssp_id", "install_id", "slug", "request_id", "display_name", "state", "profile",
                         "chart_version", "secrets_backend", "config", "completed_steps", "release_revision",
                         "last_heartbeat_at", "last_health", "activated_at", "created_at", "updated_at"])
            await conn.copy_records_to_table(
                "adapter_tokens", records=tokens,
                columns=["prefix", "tenant_id", "token_hash", "version_label", "created_at"])
            await conn.copy_records_to_table(
                "heartbeat_state", records=states,
                columns=["tenant_id", "chart_applied_at", "chart_correlation_id", "first_heartbeat_at",
                         "activated_event_id", "activated_at", "degraded", "last_seen", "last_health",
                         "components"])
            await conn.copy_records_to_table(
                "tenant_secrets", records=refs,
                columns=["tenant_id", "purpose", "backend", "namespace", "name", "key", "version_label",
                         "status", "created_at"])
            await conn.copy_records_to_table(
                "tenant_lifecycle_events", records=lifecycle,
                columns=["event_id", "tenant_id", "slug", "type", "state_from", "state_to", "step", "message",
                         "details", "correlation_id", "causation_id", "occurred_at"])
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return out
