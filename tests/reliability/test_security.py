"""Adapter tokens and secret leaks, on the whole control plane running as processes.

One stack for the module (``ReliabilityStack``: NATS, Postgres, the emulator + kubelet, every service as
a child process). A few tenants are onboarded with sealed canary LLM keys and simulated adapters until
they are ``active``; then the adapters stop and the tests present tokens to the heartbeat service the
two ways an adapter can — ``POST /v1/heartbeat/<tenant>`` (202 = accepted) and a message on
``soctalk.adapter.<tenant>.heartbeat`` (core NATS; accepted / refused counted by the service's own
metrics):

* forged tokens (unknown prefix, right prefix with a wrong secret, one character off, truncated,
  extended, the stored hash itself, another scheme, malformed, missing) → 0 accepted;
* another tenant's valid token (subject / URL of a different tenant, or a body naming another tenant)
  → 0 accepted;
* a token rotated out with a short overlap: accepted inside the overlap, then expired → 0 accepted;
* a token revoked in Postgres: refused once the heartbeat service's cache refreshes (the documented
  bound), 0 accepted after it;
* a tenant decommissioned through the API (uninstall, cleanup, tokens revoked): its token and its
  previously accepted heartbeats replayed byte for byte → 0 accepted;
* the compare path is ``hmac.compare_digest`` (the code and a wrapper around the real function).

The leak scan plants canaries — the sealed LLM keys' plaintexts (also after an LLM key rotation), every
generated password / key / token read back from the cluster Secrets (also after a Wazuh rotation and
the adapter token rotation), the install's private keys — and searches the captured service logs, a
``pg_dump``, every JetStream stream, every decoded Helm release record and every ConfigMap.
"""

from __future__ import annotations

import ast
import asyncio
import hmac
import inspect
import json
import os
import secrets
import shutil
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from soctalk_api.auth import issue_token
from soctalk_common import events as ev
from soctalk_common.bus import Bus
from soctalk_common.db import models as m
from soctalk_common.db.session import make_engine, make_sessionmaker
from soctalk_common.gateways.kube import KubeGateway
from soctalk_common.sealing import seal
from soctalk_heartbeat import domain as hb_domain
from soctalk_heartbeat.simulator import AdapterSimulator, token_from_cluster
from soctalk_heartbeat.tokens import TokenCache
from soctalk_secrets import domain as sec_domain
from soctalk_secrets import tokens as sec_tokens
from sqlalchemy import func, select, update

from tests.reliability.conftest import SIZES
from tests.reliability.results import record
from tests.support import reliability_scan as scan
from tests.support import reliability_tenants as rt
from tests.support.reliability_stack import FAST_RECOVERY_ENV, SIGNING_KEY, ReliabilityStack
from tests.support.waiting import eventually

pytestmark = pytest.mark.reliability

#: How long the heartbeat service may take to see a revocation or a tenant state change: its TokenCache
#: reloads every 1 s and never answers from an entry older than max_age = 3 s (heartbeat/tokens.py).
CACHE_BOUND_S = 3.0

# Figures of the token tests, accumulated across the module and recorded after each test.
TOKENS: dict[str, Any] = {"presented": {}, "accepted_wrongly": {}, "controls_accepted": {}}


def _record_tokens() -> None:
    TOKENS["tokens_accepted_wrongly"] = sum(TOKENS["accepted_wrongly"].values())
    TOKENS["tokens_presented"] = sum(TOKENS["presented"].values())
    record("adapter_tokens", TOKENS)


# ------------------------------------------------------------------------------------------------
# the stack and its tenants
# ------------------------------------------------------------------------------------------------


@dataclass
class Sec:
    ds: ReliabilityStack
    sm: Any
    bus: Bus
    kube: KubeGateway
    http: httpx.AsyncClient
    api: httpx.AsyncClient
    public: str
    key: bytes  # the install's adapter token HMAC key
    tenants: dict[str, rt.Requested] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)  # slug → current token
    canaries: scan.CanaryIndex = field(default_factory=scan.CanaryIndex)

    def tid(self, slug: str) -> uuid.UUID:
        return self.tenants[slug].tenant_id

    async def plant(self, slug: str) -> None:
        """Every value the tenant's Secrets hold right now becomes a canary (old versions stay planted)."""
        for value, where in (await scan.tenant_material(self.kube, self.tid(slug), slug)).items():
            self.canaries.add(value, where)

    # -- presenting tokens ---------------------------------------------------------------------------
    async def present_http(self, tenant: uuid.UUID | str, authorization: str | None,
                           body: dict[str, Any] | bytes | None = None) -> int:
        headers: dict[str, str | bytes] = {}
        if authorization is not None:  # non-ASCII values go as raw UTF-8 bytes, as a client could send
            headers["Authorization"] = authorization if authorization.isascii() else authorization.encode()
        if body is None:
            body = heartbeat_body(tenant)
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = await self.http.post(f"/v1/heartbeat/{tenant}", content=content,
                                 headers=headers | {"Content-Type": "application/json"})
        return r.status_code

    async def present_nats(self, tenant: uuid.UUID | str, authorization: str | None,
                           body: bytes | None = None, msg_id: str | None = None) -> None:
        headers = {"Authorization": authorization} if authorization is not None else {}
        data = body if body is not None else json.dumps(heartbeat_body(tenant)).encode()
        await self.bus.publish(f"soctalk.adapter.{tenant}.heartbeat", data, msg_id=msg_id or str(uuid.uuid4()),
                               headers=headers)

    async def metrics(self) -> dict[str, float]:
        text = (await self.http.get("/metrics")).text
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name in ("soctalk_heartbeat_refused_total", "soctalk_heartbeat_accepted_total",
                              "soctalk_heartbeat_stale_total"):
                    out[f"{s.name}:{','.join(s.labels.values())}"] = s.value
        return out


def heartbeat_body(tenant: uuid.UUID | str) -> dict[str, Any]:
    hb = ev.AdapterHeartbeat(tenant_id=uuid.UUID(str(tenant)), adapter_version="rel-1.0.0", status="ok",
                             components={"wazuh": ev.ComponentHealth(status="ok")})
    return json.loads(hb.model_dump_json())


def nats_accepted(before: dict[str, float], after: dict[str, float]) -> float:
    k = "soctalk_heartbeat_accepted_total:nats"
    return after.get(k, 0) - before.get(k, 0)


def nats_settled(before: dict[str, float], after: dict[str, float]) -> float:
    return sum(v - before.get(k, 0) for k, v in after.items())


@pytest.fixture(scope="module")
async def sec() -> AsyncIterator[Sec]:
    ds = ReliabilityStack(kubelet_delay_s=0.1,
                          extra_env=FAST_RECOVERY_ENV | {"SOCTALK_JWT_SIGNING_KEY": SIGNING_KEY})
    await ds.start()
    engine = make_engine(ds.database_url, pool_size=4)
    sm = make_sessionmaker(engine)
    bus = await Bus.connect(ds.nats_url, name="reliability-security")
    kube = await KubeGateway.from_kubeconfig(ds.kubeconfig_path)
    http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{ds.heartbeat_port}", timeout=10)
    api = httpx.AsyncClient(base_url=f"http://127.0.0.1:{ds.api_port}", timeout=10,
                            headers={"Authorization": f"Bearer {issue_token(SIGNING_KEY, 'reliability')}"})
    try:
        public = await eventually(lambda: rt.public_key(sm), timeout=60, what="the install's sealing key")
        s = Sec(ds, sm, bus, kube, http, api, public, ds.env()["SOCTALK_TOKEN_HASH_KEY"].encode())
        fleet = rt.AdapterFleet(ds.nats_url, ds.kubeconfig_path)
        for i in range(max(3, SIZES.security_tenants)):
            req = await rt.request(bus, public, f"s{i}")
            s.tenants[req.slug] = req
            fleet.add(req.tenant_id, req.slug)
            s.canaries.add(req.llm_key, f"LLM key of {req.slug}")
        stop = asyncio.Event()
        task = asyncio.create_task(fleet.run(stop))
        try:
            ids = [t.tenant_id for t in s.tenants.values()]
            await eventually(lambda: _all_active(sm, ids), timeout=120, what="the security tenants active")
        finally:
            stop.set()
            await task
        for slug in s.tenants:
            s.tokens[slug] = await token_from_cluster(kube, slug)
            await s.plant(slug)
        for value, where in (await scan.install_material(kube)).items():
            s.canaries.add(value, where)
        yield s
    finally:
        await http.aclose()
        await api.aclose()
        await kube.close()
        await bus.close()
        await engine.dispose()
        await ds.stop()
        if not os.environ.get("SOCTALK_RELIABILITY_KEEP"):
            shutil.rmtree(ds.workdir, ignore_errors=True)


async def _all_active(sm: Any, ids: list[uuid.UUID]) -> bool:
    return (await rt.states(sm, ids)).get("active", 0) == len(ids)


# ------------------------------------------------------------------------------------------------
# constant time
# ------------------------------------------------------------------------------------------------


def _compares_with_eq(fn: Any) -> list[str]:
    """``==``/``!=`` comparisons in ``fn`` that involve a hash, a token, a prefix or a secret."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
            src = ast.unparse(node)
            if any(w in src for w in ("hash", "presented", "prefix", "secret", "token")):
                bad.append(src)
    return bad


async def test_token_verification_compares_with_hmac_compare_digest(sec: Sec,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # The code path: both verifiers go through token_decision → verify_token → hmac.compare_digest.
    assert "hmac.compare_digest(" in inspect.getsource(sec_domain.verify_token)
    assert "token_decision(" in inspect.getsource(sec_tokens.verify_adapter_token)
    assert "token_decision(" in inspect.getsource(hb_domain.judge)
    for fn in (sec_domain.verify_token, sec_domain.token_decision, hb_domain.judge):
        assert _compares_with_eq(fn) == [], f"{fn.__qualname__} compares secrets with ==/!="

    # The real function, wrapped: every judgement of a well-formed token with a known prefix runs the
    # full-length digest comparison, for the one-shot verifier and the heartbeat service's cached path.
    calls: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def counting(a: Any, b: Any) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    slug = next(iter(sec.tenants))
    token, tid = sec.tokens[slug], sec.tid(slug)
    prefix = sec_domain.parse_token(token)
    wrong = token[:-1] + ("A" if token[-1] != "A" else "B")
    now = datetime.now(UTC)
    one_shot = [await sec_tokens.verify_adapter_token(sec.sm, sec.key, t, tid, now) for t in (token, wrong)]
    cache = TokenCache(sec.sm)
    await cache.ensure({prefix})
    rec = cache.record(prefix)
    known, state = cache.tenant(str(tid))
    cached = [hb_domain.judge(rec, str(tid), now, presented=t, key=sec.key, tenant_known=known, tenant_state=state)
              for t in (token, wrong)]
    assert isinstance(one_shot[0], sec_domain.Accept) and one_shot[1] == sec_domain.Refuse("bad_secret")
    assert isinstance(cached[0], sec_domain.Accept) and cached[1] == "bad_secret"
    digest_compares = [c for c in calls if c == (64, 64)]  # hex HMAC-SHA256 against the stored hash
    assert len(digest_compares) >= 4, calls
    TOKENS["constant_time_compare"] = {"primitive": "hmac.compare_digest", "digest_compares_seen": len(digest_compares)}
    _record_tokens()


# ------------------------------------------------------------------------------------------------
# forged and cross-tenant
# ------------------------------------------------------------------------------------------------


def forgeries(token: str, stored_hash: str) -> dict[str, str | None]:
    """Authorization header values that must never be accepted for the token's tenant."""
    _, prefix, secret = token.split("_", 2)
    flip = secret[:10] + ("x" if secret[10] != "x" else "y") + secret[11:]
    other = sec_domain.mint_adapter_token()[0]
    return {
        "unknown prefix": f"Bearer {other}",
        "right prefix, random secret": f"Bearer sta_{prefix}_{secrets.token_urlsafe(48)}",
        "one character off": f"Bearer sta_{prefix}_{flip}",
        "truncated": f"Bearer {token[:-1]}",
        "extended": f"Bearer {token}A",
        "stored hash as token": f"Bearer {stored_hash}",
        "prefix only": f"Bearer sta_{prefix}_",
        "other scheme": f"Basic {token}",
        "no scheme": token,
        "empty bearer": "Bearer",
        "oversized": "Bearer " + "sta_" + "a" * 5000,
        "unicode": f"Bearer sta_{prefix}_{secret[:-1]}é",
        "missing": None,
    }


async def test_forged_tokens_are_never_accepted(sec: Sec) -> None:
    slug = next(iter(sec.tenants))
    tid, token = sec.tid(slug), sec.tokens[slug]
    async with sec.sm() as s:
        stored = (await s.execute(select(m.AdapterToken.token_hash).where(m.AdapterToken.tenant_id == tid))).scalar()
    assert await sec.present_http(tid, f"Bearer {token}") == 202  # control: the real token works
    before = await sec.metrics()
    statuses: Counter[str] = Counter()
    cases = forgeries(token, stored)
    for _round in range(max(1, SIZES.fuzz_examples // 20)):
        for auth in cases.values():
            statuses[str(await sec.present_http(tid, auth))] += 1
            await sec.present_nats(tid, auth)
    sent_nats = len(cases) * max(1, SIZES.fuzz_examples // 20)

    async def settled() -> dict[str, float] | None:
        after = await sec.metrics()
        return after if nats_settled(before, after) >= sent_nats else None

    after = await eventually(settled, timeout=30, what="the forged heartbeats judged")
    wrong = statuses.get("202", 0) + int(nats_accepted(before, after))
    TOKENS["presented"]["forged"] = sum(statuses.values()) + sent_nats
    TOKENS["accepted_wrongly"]["forged"] = wrong
    TOKENS["controls_accepted"]["valid token"] = 1
    TOKENS["forged_http_statuses"] = dict(statuses)
    _record_tokens()
    assert wrong == 0, statuses
    assert set(statuses) <= {"401", "403"}, statuses


async def test_another_tenants_token_is_never_accepted(sec: Sec) -> None:
    a, b = list(sec.tenants)[:2]
    ta, tb = sec.tid(a), sec.tid(b)
    token_a = f"Bearer {sec.tokens[a]}"
    before = await sec.metrics()
    statuses: Counter[str] = Counter()
    rounds = max(1, SIZES.fuzz_examples // 10)
    for _ in range(rounds):
        statuses[str(await sec.present_http(tb, token_a))] += 1  # A's token on B's endpoint
        statuses[str(await sec.present_http(ta, token_a, heartbeat_body(tb)))] += 1  # body names B
        await sec.present_nats(tb, token_a)  # A's token on B's subject
        await sec.present_nats(ta, token_a, json.dumps(heartbeat_body(tb)).encode())  # B in A's subject

    async def settled() -> dict[str, float] | None:
        after = await sec.metrics()
        return after if nats_settled(before, after) >= 2 * rounds else None

    after = await eventually(settled, timeout=30, what="the cross-tenant heartbeats judged")
    wrong = statuses.get("202", 0) + int(nats_accepted(before, after))
    refused = after.get("soctalk_heartbeat_refused_total:wrong_tenant", 0) - \
        before.get("soctalk_heartbeat_refused_total:wrong_tenant", 0)
    TOKENS["presented"]["cross_tenant"] = 4 * rounds
    TOKENS["accepted_wrongly"]["cross_tenant"] = wrong
    _record_tokens()
    assert wrong == 0 and set(statuses) == {"403"}, statuses
    assert refused >= 2 * rounds


# ------------------------------------------------------------------------------------------------
# expired, revoked, decommissioned
# ------------------------------------------------------------------------------------------------


async def _token_rows(sm: Any, tid: uuid.UUID) -> list[m.AdapterToken]:
    async with sm() as s:
        return list((await s.execute(select(m.AdapterToken).where(m.AdapterToken.tenant_id == tid)
                                     .order_by(m.AdapterToken.created_at))).scalars())


async def test_a_rotated_out_token_expires_after_its_overlap(sec: Sec) -> None:
    slug = list(sec.tenants)[0]
    tid, old = sec.tid(slug), sec.tokens[slug]
    overlap_s = 4.0
    rotation = ev.SecretRotationRequested(tenant_id=tid, service="adapter", overlap_s=overlap_s)
    await sec.bus.publish(*_command(rotation), msg_id=str(rotation.event_id))

    async def rotated() -> list[m.AdapterToken] | None:
        rows = await _token_rows(sec.sm, tid)
        return rows if len(rows) == 2 and rows[0].expires_at is not None else None

    rows = await eventually(rotated, timeout=30, what="the adapter token rotated")
    new = await eventually(lambda: _new_token(sec, slug, old), timeout=30, what="the new token in its Secret")
    sec.tokens[slug] = new
    await sec.plant(slug)
    controls = [await sec.present_http(tid, f"Bearer {new}"), await sec.present_http(tid, f"Bearer {old}")]
    expires_at = rows[0].expires_at
    assert expires_at is not None

    async def expired_by_db_clock() -> bool:
        async with sec.sm() as s:
            return bool((await s.execute(select(func.now()))).scalar() > expires_at)

    await eventually(expired_by_db_clock, timeout=overlap_s + 10, what="the overlap to end")
    before = await sec.metrics()
    statuses: Counter[str] = Counter()
    rounds = max(5, SIZES.fuzz_examples // 4)
    for _ in range(rounds):
        statuses[str(await sec.present_http(tid, f"Bearer {old}"))] += 1
        await sec.present_nats(tid, f"Bearer {old}")
    after = await eventually(lambda: _settled_after(sec, before, rounds), timeout=30, what="expired tokens judged")
    wrong = statuses.get("202", 0) + int(nats_accepted(before, after))
    TOKENS["presented"]["expired"] = 2 * rounds
    TOKENS["accepted_wrongly"]["expired"] = wrong
    TOKENS["controls_accepted"]["new token after rotation"] = int(controls[0] == 202)
    TOKENS["controls_accepted"]["old token inside the overlap"] = int(controls[1] == 202)
    _record_tokens()
    assert controls == [202, 202], "inside the overlap both tokens are valid"
    assert wrong == 0, statuses
    expired_key = "soctalk_heartbeat_refused_total:expired"
    assert after.get(expired_key, 0) > before.get(expired_key, 0)


async def _refused(sec: Sec, tid: uuid.UUID, token: str, body: bytes) -> bool:
    return await sec.present_http(tid, f"Bearer {token}", body) in (401, 403)


async def _settled_after(sec: Sec, before: dict[str, float], n: int) -> dict[str, float] | None:
    after = await sec.metrics()
    return after if nats_settled(before, after) >= n else None


async def _new_token(sec: Sec, slug: str, old: str) -> str | None:
    token = await token_from_cluster(sec.kube, slug)
    return token if token != old else None


def _command(event: ev.Event) -> tuple[str, bytes]:
    return event.subject, event.model_dump_json().encode()


async def test_a_revoked_token_is_refused_within_the_cache_bound(sec: Sec) -> None:
    slug = list(sec.tenants)[1]
    tid, token = sec.tid(slug), sec.tokens[slug]
    assert await sec.present_http(tid, f"Bearer {token}") == 202
    bound_s = CACHE_BOUND_S
    async with sec.sm() as s, s.begin():  # what an operator's emergency revocation does: revoked_at = now
        await s.execute(update(m.AdapterToken).where(m.AdapterToken.tenant_id == tid)
                        .values(revoked_at=datetime.now(UTC)))
    revoked_at = time.monotonic()
    statuses: list[tuple[float, int]] = []

    async def refused() -> bool:
        code = await sec.present_http(tid, f"Bearer {token}")
        statuses.append((time.monotonic() - revoked_at, code))
        return code == 401

    await eventually(refused, timeout=10, what="the revoked token refused")
    propagation = statuses[-1][0]
    before = await sec.metrics()
    rounds = max(5, SIZES.fuzz_examples // 4)
    for _ in range(rounds):
        statuses.append((time.monotonic() - revoked_at, await sec.present_http(tid, f"Bearer {token}")))
        await sec.present_nats(tid, f"Bearer {token}")
    after = await eventually(lambda: _settled_after(sec, before, rounds), timeout=30, what="revoked tokens judged")
    first_refusal = next(i for i, (_, c) in enumerate(statuses) if c == 401)
    # Accepted before the first refusal and within the bound: the documented cache staleness. Any
    # acceptance after the first refusal or after the bound is wrong.
    within = sum(1 for i, (t, c) in enumerate(statuses) if c == 202 and i < first_refusal and t <= bound_s)
    wrong = sum(1 for i, (t, c) in enumerate(statuses) if c == 202 and (i > first_refusal or t > bound_s)) \
        + int(nats_accepted(before, after))
    TOKENS["presented"]["revoked"] = len(statuses) + rounds
    TOKENS["accepted_wrongly"]["revoked"] = wrong
    TOKENS["revocation_seen_after_s"] = round(propagation, 3)
    TOKENS["revoked_accepted_within_documented_cache_bound"] = within
    _record_tokens()
    assert propagation <= bound_s
    assert wrong == 0, statuses


async def test_tokens_and_heartbeats_replayed_after_decommission_are_refused(sec: Sec) -> None:
    slug = list(sec.tenants)[2]
    tid, token = sec.tid(slug), sec.tokens[slug]
    # Capture what a live adapter sends (accepted now): the exact body and header, on both transports.
    body = json.dumps(heartbeat_body(tid)).encode()
    assert await sec.present_http(tid, f"Bearer {token}", body) == 202
    sim = AdapterSimulator(sec.ds.nats_url, tid, token, bus=sec.bus)
    before = await sec.metrics()
    captured = await sim.beat_once()
    await eventually(lambda: _settled_after(sec, before, 1), timeout=30, what="the captured heartbeat judged")

    r = await sec.api.post(f"/api/mssp/tenants/{tid}:decommission",
                           json={"gracePeriodSeconds": 0, "reason": "reliability: replay after decommission"})
    assert r.status_code == 202, r.text

    async def decommissioned() -> bool:
        async with sec.sm() as s:
            t = await s.get(m.Tenant, tid)
            revoked = (await s.execute(select(m.AdapterToken.revoked_at).where(m.AdapterToken.tenant_id == tid)))
            return bool(t and t.state == "decommissioned" and all(x is not None for x in revoked.scalars()))

    await eventually(decommissioned, timeout=120, what=f"tenant {slug} decommissioned, its tokens revoked")
    # The heartbeat service sees a revocation or decommission within its token cache's bound (as in the
    # revocation test); from its first refusal on, nothing may be accepted.
    t_done = time.monotonic()
    await eventually(lambda: _refused(sec, tid, token, body), timeout=CACHE_BOUND_S, what="the first refusal")
    TOKENS["decommission_seen_after_s"] = round(time.monotonic() - t_done, 3)
    async with sec.sm() as s:
        lifecycle_before = await s.scalar(select(func.count()).select_from(m.TenantLifecycleEvent)
                                          .where(m.TenantLifecycleEvent.tenant_id == tid))
    before = await sec.metrics()
    statuses: Counter[str] = Counter()
    rounds = max(5, SIZES.fuzz_examples // 4)
    replay = captured.model_dump_json().encode()
    for _ in range(rounds):
        statuses[str(await sec.present_http(tid, f"Bearer {token}", body))] += 1  # the exact HTTP request
        await sec.present_nats(tid, f"Bearer {token}", replay)  # the captured message: same bytes and header
    after = await eventually(lambda: _settled_after(sec, before, rounds), timeout=30, what="replays judged")
    wrong = statuses.get("202", 0) + int(nats_accepted(before, after))
    async with sec.sm() as s:
        t = await s.get(m.Tenant, tid)
        lifecycle_after = await s.scalar(select(func.count()).select_from(m.TenantLifecycleEvent)
                                         .where(m.TenantLifecycleEvent.tenant_id == tid))
    assert t is not None and t.state == "decommissioned" and lifecycle_after == lifecycle_before
    TOKENS["presented"]["replayed_after_decommission"] = 2 * rounds
    TOKENS["accepted_wrongly"]["replayed_after_decommission"] = wrong
    _record_tokens()
    assert wrong == 0, statuses
    assert set(statuses) <= {"401", "403"}, statuses


# ------------------------------------------------------------------------------------------------
# tokens on the bus (minimal reproduction of a design bug) and the leak scan
# ------------------------------------------------------------------------------------------------


async def test_adapter_token_is_never_stored_on_the_bus(bus: Bus, nats_url: str) -> None:
    """An adapter's heartbeat must not leave its bearer token in JetStream storage: heartbeats travel on
    core NATS (libs/common/soctalk_common/bus.py ``EPHEMERAL_PREFIXES``) and no stream captures
    ``soctalk.adapter.>``; every stored message of every stream is free of the token."""
    from nats.js.errors import NotFoundError

    token = sec_domain.mint_adapter_token()[0]
    await AdapterSimulator(nats_url, uuid.uuid4(), token, bus=bus).beat_once()
    with pytest.raises(NotFoundError):
        await bus.js.find_stream_name_by_subject(f"soctalk.adapter.{uuid.uuid4()}.heartbeat")
    for info in await bus.js.streams_info():
        stored = await scan.read_stream(bus, info.config.name)
        found = [msg.seq for msg in stored if token in json.dumps(msg.headers) or token.encode() in msg.data]
        assert found == [], f"the adapter token is stored in {info.config.name} (messages {found})"


async def test_no_secret_material_anywhere(sec: Sec) -> None:
    # More paths first: rotate one tenant's LLM key (a new sealed canary) and its Wazuh passwords.
    slug = list(sec.tenants)[0]
    tid = sec.tid(slug)
    new_llm = rt.canary("llm-rotated")
    sec.canaries.add(new_llm, f"rotated LLM key of {slug}")
    for event in (ev.SecretRotationRequested(tenant_id=tid, service="llm",
                                             new_llm_key=ev.LlmKeySource(sealed=seal(sec.public, new_llm))),
                  ev.SecretRotationRequested(tenant_id=tid, service="wazuh")):
        await sec.bus.publish(*_command(event), msg_id=str(event.event_id))
        await eventually(lambda e=event: _rotated(sec, e), timeout=60, what=f"{event.service} rotated")
    await sec.plant(slug)
    await eventually(lambda: _drained(sec), timeout=30, what="the outbox drained")

    report = await scan.scan(sec.canaries, workdir=sec.ds.workdir, database_url=sec.ds.database_url,
                             bus=sec.bus, kube=sec.kube)
    record("leak_scan", {
        "canaries": report.canaries, "canary_hits": report.total_hits, "security_tenants": len(sec.tenants),
        "canary_hits_by_source": {k: len(v) for k, v in report.hits.items()},
        "searched_chars": report.sources, "helm_releases": report.releases, "configmaps": report.configmaps,
    })
    assert report.canaries >= 9 * len(sec.tenants)  # ~10 distinct values per tenant + rotations
    assert report.releases >= len(sec.tenants) - 1 and report.sources["logs"] > 0
    assert report.hits == {}, f"secret material found: {report.hits}"


async def _rotated(sec: Sec, event: ev.SecretRotationRequested) -> bool:
    async with sec.sm() as s:
        rows = (await s.execute(select(m.TenantLifecycleEvent.type).where(
            m.TenantLifecycleEvent.causation_id == event.event_id))).scalars().all()
    if "SecretRotationFailed" in rows:
        raise AssertionError(f"rotation of {event.service} failed")
    return "SecretRotated" in rows


async def _drained(sec: Sec) -> bool:
    async with sec.sm() as s:
        return not (await s.execute(select(m.Outbox.id).where(m.Outbox.published_at.is_(None)).limit(1))).first()

