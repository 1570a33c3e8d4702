"""One path for every heartbeat, whether it came over JetStream or HTTP: verify, then route.

``verify`` checks a whole batch with at most one token query and one tenant query (only for
prefixes/tenants the cache lacks or holds too long), then judges each message in memory: token
(prefix → keyed hash → constant-time compare → tenant binding → revoked → expired → tenant state),
size, payload, payload tenant = subject tenant, staleness. Refusals are counted by reason; the token
is never logged, only its public prefix when it parses.

``apply`` keeps the newest valid heartbeat per tenant and either buffers it (nothing can change:
activated, not degraded, same component statuses) or runs the transactional path for it, a few
tenants at a time. It returns the tenants whose transaction failed, so the transport can retry them.
Tenants this process holds no view of (after a start, or once a view was forgotten) get theirs from
the durable flags in one query per batch, so a restart does not send every tenant's next heartbeat
through a transaction of its own (10,000 tenants took ~30 s of catch-up that way).

Per message this is the hot path (tens of thousands per second): plain tuples, one clock reading and
one monotonic reading per batch, the keyed-hash state prepared once (``token_decision``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

import structlog
from pydantic import ValidationError
from soctalk_common import events as ev
from soctalk_common.errors import ValidationFailed
from soctalk_secrets.domain import Accept, Refuse, parse_token

from soctalk_heartbeat import domain, handlers, store
from soctalk_heartbeat.handlers import HeartbeatDeps
from soctalk_heartbeat.memory import Pending, View

log = structlog.get_logger(__name__)

LOG_EVERY_S = 10.0


class Incoming(NamedTuple):
    """A heartbeat as received: the tenant it claims to be about (subject or URL), the Authorization
    value, the raw body, and how long it waited before we read it (0 on core NATS and HTTP)."""

    tenant: str
    authorization: str | None
    body: bytes
    age_s: float = 0.0
    transport: str = "nats"


class Verdict(NamedTuple):
    heartbeat: ev.AdapterHeartbeat | None = None
    seen_at: datetime | None = None
    reason: str | None = None  # refusal reason (see domain.RefusalReason)
    stale: bool = False
    errors: tuple[str, ...] = ()  # JSON paths of an invalid payload (never values)
    body: bytes = b""  # the verified body (kept for the flush instead of the parsed model)

    @property
    def accepted(self) -> bool:
        return self.heartbeat is not None and not self.stale


class Intake:
    def __init__(self, deps: HeartbeatDeps, *, concurrency: int = 8) -> None:
        self.deps = deps
        self._slots = asyncio.Semaphore(concurrency)
        self._logged: dict[str, tuple[float, int]] = {}
        self._accepted: dict[str, Any] = {}  # labelled counters, looked up once (not per message)
        self._accepted_n: dict[str, int] = {}  # accepted in the batch being verified

    async def verify(self, items: Sequence[Incoming]) -> list[Verdict]:
        """Judge a batch. Raises only if the cache cannot be brought up to date (Postgres down)."""
        tokens = [domain.bearer_token(i.authorization) for i in items]
        prefixes = [_lookup_prefix(t) if t else None for t in tokens]
        await self.deps.tokens.ensure({p for p in prefixes if p})
        now = self.deps.clock.now()
        mono = time.monotonic()
        verdicts = [self._verify_one(item, token, prefix, now, mono)
                    for item, token, prefix in zip(items, tokens, prefixes, strict=True)]
        for transport, n in self._accepted_n.items():  # one locked increment per batch, not per message
            counter = self._accepted.get(transport)
            if counter is None:
                counter = self._accepted[transport] = self.deps.metrics.accepted.labels(transport)
            counter.inc(n)
        self._accepted_n.clear()
        return verdicts

    def _verify_one(self, item: Incoming, token: str | None, prefix: str | None, now: datetime,
                    mono: float) -> Verdict:
        tokens = self.deps.tokens
        record = tokens.record(prefix, mono) if prefix else None
        known, state = tokens.tenant(record.tenant_id, mono) if record else (False, None)
        decision = domain.judge(record, item.tenant, now, presented=token, key=self.deps.config.key,
                                tenant_known=known, tenant_state=state)
        if not isinstance(decision, Accept):
            return self._refuse(decision.reason if isinstance(decision, Refuse) else decision, item, prefix)
        body = item.body
        if len(body) > domain.MAX_BODY_BYTES:
            return self._refuse("too_large", item, prefix)
        try:
            hb = _parse(body)
        except ValidationError as exc:
            paths = tuple(".".join(str(p) for p in e["loc"]) or "$" for e in exc.errors())
            return self._refuse("invalid_payload", item, prefix, paths)
        except (ValueError, ev.UnknownEventType):
            return self._refuse("invalid_payload", item, prefix, ("$",))
        assert isinstance(hb, ev.AdapterHeartbeat)
        if str(hb.tenant_id) != decision.tenant_id:
            return self._refuse("wrong_tenant", item, prefix)
        cfg = self.deps.config
        if item.age_s and domain.is_stale(item.age_s, cfg.interval_s, cfg.missed_intervals):
            self.deps.metrics.stale.inc()
            return Verdict(hb, None, None, True)
        n = self._accepted_n
        n[item.transport] = n.get(item.transport, 0) + 1
        # Receipt time on our clock: monotonic per process, so the newest heartbeat wins ties. A message
        # that waited in the stream is at most one liveness window old (older ones are stale above).
        return Verdict(hb, now, None, False, (), body)

    def _refuse(self, reason: str, item: Incoming, lookup: str | None,
                errors: tuple[str, ...] = ()) -> Verdict:
        self.deps.metrics.refused.labels(reason).inc()
        # The prefix is logged only when the whole token is well-formed (never part of a malformed one).
        token = domain.bearer_token(item.authorization) if lookup else None
        prefix = _prefix(token) if token else None
        # One line per reason per LOG_EVERY_S (a flood of forged heartbeats must not flood the logs);
        # the metric counts every one. Only the public prefix is logged, never the token.
        now = time.monotonic()
        last, suppressed = self._logged.get(reason, (float("-inf"), 0))
        if now - last >= LOG_EVERY_S:
            log.info("heartbeat.refused", reason=reason, subject_tenant=item.tenant[:64], token_prefix=prefix,
                     transport=item.transport, fields=list(errors)[:10] or None, suppressed=suppressed)
            self._logged[reason] = (now, 0)
        else:
            self._logged[reason] = (last, suppressed + 1)
        return Verdict(reason=reason, errors=errors)

    async def apply(self, verdicts: Sequence[Verdict]) -> set[uuid.UUID]:
        """Buffer or record every accepted heartbeat; returns tenants whose transaction failed."""
        newest: dict[uuid.UUID, Verdict] = {}
        for v in verdicts:
            hb, seen_at = v.heartbeat, v.seen_at
            if hb is not None and seen_at is not None and not v.stale:
                cur = newest.get(hb.tenant_id)
                if cur is None or (cur.seen_at is not None and cur.seen_at <= seen_at):
                    newest[hb.tenant_id] = v
        views, buffer = self.deps.views, self.deps.buffer
        unknown = [t for t in newest if views.get(t) is None]
        if unknown:
            await self._prime(unknown)
        slow: list[Verdict] = []
        for tenant_id, v in newest.items():
            assert v.heartbeat is not None and v.seen_at is not None
            statuses = {name: c.status for name, c in v.heartbeat.components.items()}
            if views.fast_path(tenant_id, statuses):
                buffer.put(tenant_id, Pending(v.seen_at, v.body))
            else:
                slow.append(v)
        if not slow:
            return set()
        results = await asyncio.gather(*(self._observe(v) for v in slow), return_exceptions=True)
        failed: set[uuid.UUID] = set()
        for v, res in zip(slow, results, strict=True):
            if isinstance(res, BaseException):
                assert v.heartbeat is not None
                failed.add(v.heartbeat.tenant_id)
                log.warning("heartbeat.record_failed", tenant_id=str(v.heartbeat.tenant_id),
                            error=type(res).__name__, detail=str(res)[:200])
        return failed

    async def _prime(self, tenant_ids: list[uuid.UUID]) -> None:
        """Views of tenants we hold none of, from their durable flags (one query). The same trust as
        a view set by a transaction: the flush reports the durable flags of every tenant it writes
        and sends any disagreement back through the transactional path. If the query fails, these
        tenants simply take the transactional path."""
        try:
            rows = await store.view_flags(self.deps.uow.sessionmaker, tenant_ids)
        except Exception as exc:  # noqa: BLE001 - Postgres hiccup: the slow path decides (and retries)
            log.warning("heartbeat.views_unavailable", error=type(exc).__name__, detail=str(exc)[:200])
            return
        self.deps.views.prime((t, View(activated, degraded, comps)) for t, activated, degraded, comps in rows)

    async def _observe(self, v: Verdict) -> None:
        assert v.heartbeat is not None and v.seen_at is not None
        async with self._slots:
            await handlers.observe(v.heartbeat, v.seen_at, self.deps)


#: ``AdapterHeartbeat.model_validate_json`` without its wrapper (which only checks its keyword
#: arguments, none given here, and calls exactly this): same validator, same result, same errors.
_validate_json = ev.AdapterHeartbeat.__pydantic_validator__.validate_json


def _parse(body: bytes) -> ev.Event:
    """``parse_event(body, expected="AdapterHeartbeat")``: a valid body straight from JSON (no
    intermediate dict, half the cost); an invalid one through ``parse_event`` for its exact errors."""
    try:
        return _validate_json(body)
    except ValidationError:
        return ev.parse_event(body, expected="AdapterHeartbeat")


def _prefix(token: str) -> str | None:
    try:
        return parse_token(token)
    except ValidationFailed:
        return None


_TOKEN_LEN = len("sta_") + 12 + 1 + 64


def _lookup_prefix(token: str) -> str | None:
    """The cache key of a token: where a well-formed token carries its prefix ([a-z0-9]{12}), without
    the full regex (``judge`` → ``token_decision`` parses the whole token and compares the record's
    prefix in constant time; this only picks which row to look at). None when it cannot be one."""
    if len(token) != _TOKEN_LEN or not token.startswith("sta_") or token[16] != "_":
        return None
    p = token[4:16]
    return p if p.isascii() and p.isalnum() and p == p.lower() else None
