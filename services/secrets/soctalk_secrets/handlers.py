"""Handlers of the secrets service: each one reads, does its side effects (idempotent by
postcondition, see :mod:`soctalk_secrets.steps`), then records everything in ONE transaction —
references, token hashes, the result event, the audit events and the lifecycle events.

=========================  ===================================================================
consumes                   records / emits
=========================  ===================================================================
TenantAccepted             namespace + inventory; ``tenant_secrets`` rows, adapter token hash;
                           ``SecretsReady``, ``SecretAuditEvent(write)``, lifecycle
SecretRotationRequested    new version under the tenant lease; new rows active, old rows retired
                           (adapter token: retiring until the overlap ends); ``SecretRotated``,
                           ``SecretAuditEvent(rotate|retire)``, lifecycle
ChartRemoved               (decommission only) delete Secrets / ExternalSecrets / Vault tree,
                           revoke tokens, rows retired; ``SecretsRemoved``, audit ``delete|revoke``
PurgeDue                   the same cleanup again (finds nothing after ChartRemoved), token hashes
                           deleted; audit + lifecycle only if something was left
timer ``secrets-retire``   overlapped versions ``retiring → retired``; audit ``retire``
=========================  ===================================================================

Failures: a ``TemporaryError`` (or anything unclassified) is re-raised for the runtime to retry with
backoff; on a ``PermanentError`` or from delivery ``max_deliver - 1`` on (one delivery kept in reserve
in case recording the failure itself fails), the failure is recorded instead — ``SecretsFailed`` for
provisioning (the provisioner marks the step failed), a ``SecretRotationFailed`` /
``SecretsCleanupFailed`` lifecycle event otherwise — with a reason scrubbed of every value held.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

import structlog
from soctalk_common import events as ev
from soctalk_common import lease, timers
from soctalk_common.clock import Clock
from soctalk_common.db import models as m
from soctalk_common.errors import PermanentError, TemporaryError
from soctalk_common.runtime import Ctx
from soctalk_common.uow import AlreadyProcessed, UnitOfWork, UnitOfWorkFactory

from soctalk_secrets import records, steps
from soctalk_secrets.deps import ACTOR, Deps
from soctalk_secrets.domain import (
    INITIAL_VERSION_LABEL,
    OVERLAPPED_PURPOSES,
    LlmSealed,
    LlmSource,
    SecretRef,
    llm_source,
    namespace_labels,
    next_version_label,
    rotation_purposes,
)
from soctalk_secrets.material import material_scope, scrub
from soctalk_secrets.records import TenantView, event_ref
from soctalk_secrets.stores import Placement

log = structlog.get_logger(__name__)

RETIRE_TIMER = "secrets-retire"
E = TypeVar("E", bound=ev.Event)
Handler = Callable[[E, Ctx[Deps]], Awaitable[None]]


# --------------------------------------------------------------------------------------------------
# Failure policy
# --------------------------------------------------------------------------------------------------


def reports_failure(step: str | Callable[[Any], str], *, lifecycle: str,
                    failed_event: bool = False) -> Callable[[Handler[E]], Handler[E]]:
    """Wrap a handler with the failure policy above and the material scope of :mod:`material`."""

    def wrap(fn: Handler[E]) -> Handler[E]:
        @functools.wraps(fn)
        async def handler(event: E, ctx: Ctx[Deps]) -> None:
            with material_scope():
                try:
                    return await fn(event, ctx)
                except AlreadyProcessed:
                    raise
                except Exception as exc:  # noqa: BLE001 - classified here, never dropped
                    reason = scrub(f"{type(exc).__name__}: {exc}")[:1000]
                    if not isinstance(exc, PermanentError) and ctx.attempt < ctx.deps.max_deliver - 1:
                        raise TemporaryError(reason, delay=getattr(exc, "delay", 0.0) or 0.0) from None
            name = step(event) if callable(step) else step
            log.error("secrets.failed", step=name, reason=reason, attempt=ctx.attempt)
            async with ctx.uow() as tx:
                if failed_event:
                    tx.emit(event.caused(ev.SecretsFailed, step=name, reason=reason))
                tx.lifecycle(event, lifecycle, slug=getattr(event, "slug", None), step=name, message=reason,
                             details={"attempt": ctx.attempt})
                await tx.commit()

        return handler

    return wrap


def _audit(tx: UnitOfWork, cause: ev.Event, action: str, refs: list[SecretRef]) -> None:
    if refs:
        tx.emit(cause.caused(ev.SecretAuditEvent, action=action, actor=ACTOR,
                             references=[event_ref(r) for r in refs]))


def _llm(d: Deps, at: Placement, src: ev.LlmKeySource | None) -> LlmSource | None:
    if src is None:
        return None
    ref = src.secret_ref
    return llm_source(sealed=src.sealed, secret_ref=(ref.namespace, ref.name, ref.key) if ref else None,
                      vault_path=src.vault_path, system_namespace=d.system_namespace, mount=d.vault_mount,
                      mssp_id=at.mssp_id, slug=at.slug)


async def _live_tenant(ctx: Ctx[Deps], tenant_id: uuid.UUID) -> TenantView:
    t = await records.tenant_view(ctx.uow, tenant_id)
    if t is None or t.torn_down:
        raise PermanentError(f"tenant {tenant_id} does not exist or is being decommissioned")
    return t


# --------------------------------------------------------------------------------------------------
# Handlers
# --------------------------------------------------------------------------------------------------


@reports_failure("secrets", lifecycle="SecretsFailed", failed_event=True)
async def on_tenant_accepted(event: ev.TenantAccepted, ctx: Ctx[Deps]) -> None:
    """Namespace ``tenant-<slug>`` + seed 000's inventory; a retry reads back, never regenerates."""
    d = ctx.deps
    t = await records.tenant_view(ctx.uow, event.tenant_id)
    if t is None:
        raise PermanentError(f"tenant {event.tenant_id} does not exist")
    if t.torn_down:  # a late or replayed acceptance must not bring a decommissioned tenant's secrets back
        log.warning("secrets.ignored", reason=f"tenant is {t.state}", slug=t.slug)
        return
    at = d.placement(event.tenant_id, event.slug, event.mssp_id)
    if event.namespace != at.tenant_namespace or t.slug != event.slug:
        raise PermanentError(f"namespace {event.namespace} does not match tenant slug {t.slug}")
    llm = _llm(d, at, event.llm_key)
    labels = namespace_labels(tenant_id=event.tenant_id, mssp_id=event.mssp_id, install_id=event.install_id)
    await d.kube.ensure_namespace(at.tenant_namespace, labels)
    known = records.latest_labels(await records.references(ctx.uow, t.id, statuses=records.ANY_STATUS))
    done = await steps.provision(d, at, backend=event.secrets_backend, llm=llm, known=known)
    async with ctx.uow() as tx:
        await _record_provisioning(tx, event, done, sealed=isinstance(llm, LlmSealed), d=d)
        await tx.commit()
    log.info("secrets.ready", slug=event.slug, created=done.created, reused=done.reused)


async def _record_provisioning(tx: UnitOfWork, event: ev.TenantAccepted, done: steps.Provisioned, *,
                               sealed: bool, d: Deps) -> None:
    # Locks the tenant row; a sealed key's ciphertext did its job (tenant-<id>-llm holds the key), so
    # it is dropped in the same statement.
    await records.lock_tenant(tx, event.tenant_id, drop_sealed_key=sealed)
    _audit(tx, event, "write", await records.record_references(tx, event.tenant_id, done.references))
    # A Secret recreated after it was lost is a new version: older references of it are retired.
    _audit(tx, event, "retire", await records.supersede(tx, event.tenant_id, done.created, done.references,
                                                        now=d.clock.now(), retiring=False))
    await records.record_tokens(tx, done.tokens)
    tx.emit(event.caused(ev.SecretsReady, namespace=f"tenant-{event.slug}",
                         references=[event_ref(r) for r in done.references]))
    tx.lifecycle(event, "SecretsReady", slug=event.slug, step="secrets",
                 message=f"{len(done.created)} secrets written, {len(done.reused)} already present",
                 details={"backend": event.secrets_backend, "created": done.created, "reused": done.reused})


@reports_failure(lambda e: f"rotate-{e.service}", lifecycle="SecretRotationFailed")
async def on_rotation_requested(event: ev.SecretRotationRequested, ctx: Ctx[Deps]) -> None:
    """New version label → write → verify → restart readers → retire the old (overlap for tokens)."""
    d, purposes = ctx.deps, rotation_purposes(event.service)
    t = await _live_tenant(ctx, event.tenant_id)
    at = d.placement(t.id, t.slug, t.mssp_id)
    async with lease.held(ctx.uow, t.id, f"secrets:{event.event_id}", f"rotate-{event.service}",
                          ttl_s=d.lease_ttl_s, clock=d.clock):
        current = await records.references(ctx.uow, t.id, purposes=purposes)
        label = records.current_label(current, purposes[0])
        if label is None and event.service != "llm":
            raise PermanentError(f"tenant {t.slug} has no active {purposes[0]} secret to rotate")
        target = next_version_label(label) if label else INITIAL_VERSION_LABEL
        done = await steps.rotate(d, at, backend=t.backend, service=event.service, target=target,
                                  current=current, new_llm=_llm(d, at, event.new_llm_key))
        async with ctx.uow() as tx:
            await tx.tenant(t.id)
            await _record_rotation(tx, event, t, done, target, d)
            await tx.commit()
    log.info("secrets.rotated", slug=t.slug, service=event.service, version_label=target,
             restarted=done.restarted)


async def _record_rotation(tx: UnitOfWork, event: ev.SecretRotationRequested, t: TenantView,
                           done: steps.Rotated, target: str, d: Deps) -> None:
    now, purposes = d.clock.now(), rotation_purposes(event.service)
    overlap = timedelta(seconds=d.token_overlap_s if event.overlap_s is None else event.overlap_s)
    overlapped = bool(OVERLAPPED_PURPOSES.intersection(purposes)) and overlap > timedelta(0)
    await records.record_references(tx, t.id, done.references)
    old = await records.supersede(tx, t.id, purposes, done.references, now=now, retiring=overlapped)
    if done.tokens:
        await records.record_tokens(tx, done.tokens)
        await records.overlap_old_tokens(tx, t.id, [k.prefix for k in done.tokens], now=now, overlap=overlap)
    if overlapped and old:
        await timers.schedule(tx, t.id, RETIRE_TIMER, now + overlap,
                              {"correlation_id": str(event.correlation_id)})
    _audit(tx, event, "rotate", done.references)
    _audit(tx, event, "retire", [] if overlapped else old)
    tx.emit(event.caused(ev.SecretRotated, service=event.service, version_label=target,
                         references=[event_ref(r) for r in done.references], restarted=done.restarted))
    tx.lifecycle(event, "SecretRotated", slug=t.slug, step=f"rotate-{event.service}",
                 message=f"{event.service} secrets now at {target}",
                 details={"version_label": target, "restarted": done.restarted, "adopted": done.adopted,
                          "retiring_until": (now + overlap).isoformat() if overlapped and old else None,
                          "superseded": sorted({f"{r.name}@{r.version_label}" for r in old})})


@reports_failure("secrets-cleanup", lifecycle="SecretsCleanupFailed")
async def on_chart_removed(event: ev.ChartRemoved, ctx: Ctx[Deps]) -> None:
    """After the decommission uninstall: delete what we wrote, revoke tokens, retire references.

    A ChartRemoved outside a decommission (a failed install undone) keeps everything: the retry of
    the install reuses the secrets in ``soctalk-system`` and regenerates the namespace's."""
    d = ctx.deps
    t = await records.tenant_view(ctx.uow, event.tenant_id)
    if t is None or not t.torn_down:
        log.info("secrets.kept", reason="chart removed outside a decommission")
        return
    at = d.placement(t.id, t.slug, t.mssp_id)
    async with lease.held(ctx.uow, t.id, f"secrets:{event.event_id}", "secrets-cleanup",
                          ttl_s=d.lease_ttl_s, clock=d.clock):
        live = await records.references(ctx.uow, t.id, statuses=("active", "retiring"))
        removed = await steps.remove(d, at, backend=t.backend, refs=live)
        async with ctx.uow() as tx:
            await tx.tenant(t.id)
            retired = await _record_removal(tx, event, t.id, d)
            tx.emit(event.caused(ev.SecretsRemoved, references=[event_ref(r) for r in live]))
            tx.lifecycle(event, "SecretsRemoved", slug=t.slug, step="secrets-cleanup",
                         message=f"{len(removed)} objects deleted, {len(retired)} references retired",
                         details={"removed": removed})
            await tx.commit()
    log.info("secrets.removed", slug=t.slug, removed=len(removed))


async def _record_removal(tx: UnitOfWork, cause: ev.Event, tenant_id: uuid.UUID, d: Deps) -> list[SecretRef]:
    now = d.clock.now()
    retired = await records.retire_all(tx, tenant_id, now)
    revoked = await records.revoke_tokens(tx, tenant_id, now)
    await timers.cancel(tx, tenant_id, RETIRE_TIMER, at=now)
    _audit(tx, cause, "delete", retired)
    if revoked:
        adapter = [r for r in retired if r.purpose == steps.ADAPTER]
        _audit(tx, cause, "revoke", adapter or await records.all_references(tx, tenant_id, steps.ADAPTER))
    return retired


@reports_failure("secrets-purge", lifecycle="SecretsCleanupFailed")
async def on_purge_due(event: ev.PurgeDue, ctx: Ctx[Deps]) -> None:
    """Retention over: the ChartRemoved cleanup again (idempotent; normally nothing is left), and the
    token hashes go. Records something only if something was still there."""
    d = ctx.deps
    t = await records.tenant_view(ctx.uow, event.tenant_id)
    at = d.placement(event.tenant_id, event.slug, t.mssp_id if t else d.default_mssp_id)  # "" = no Vault tree
    live = await records.references(ctx.uow, event.tenant_id, statuses=("active", "retiring"))
    removed = await steps.remove(d, at, backend=t.backend if t else "kubernetes", refs=live)
    async with ctx.uow() as tx:
        retired = await _record_removal(tx, event, event.tenant_id, d) if t else []
        tokens = await records.delete_tokens(tx, event.tenant_id)
        if removed or retired:
            tx.lifecycle(event, "SecretsPurged", slug=event.slug, step="secrets-purge",
                         message=f"{len(removed)} objects were still present and are deleted",
                         details={"removed": removed, "token_records_deleted": tokens})
        await tx.commit()


# --------------------------------------------------------------------------------------------------
# Timer: end of the overlap window
# --------------------------------------------------------------------------------------------------


async def retire_overlapped(tx: UnitOfWork, timer: m.Timer) -> None:
    """``retiring → retired`` for the tenant's overlapped secrets (their tokens expired meanwhile)."""
    now = timer.fired_at or timer.due_at
    refs = await records.finish_retiring(tx, timer.tenant_id, OVERLAPPED_PURPOSES, now)
    if not refs:
        return
    correlation = timer.payload.get("correlation_id")
    audit = ev.SecretAuditEvent(tenant_id=timer.tenant_id, action="retire", actor=ACTOR,
                                references=[event_ref(r) for r in refs],
                                **({"correlation_id": uuid.UUID(correlation)} if correlation else {}))
    tx.emit(audit)
    tx.lifecycle(audit, "SecretRetired", step="rotate-adapter", message="overlap window over",
                 details={"retired": sorted({f"{r.name}@{r.version_label}" for r in refs})})


async def retire_due(uow: UnitOfWorkFactory, clock: Clock) -> int:
    """Fire due ``secrets-retire`` timers (a periodic task; exactly once across replicas)."""
    return await timers.fire_due(uow, clock, {RETIRE_TIMER: retire_overlapped})


ROUTES: dict[str, Handler[Any]] = {
    "TenantAccepted": on_tenant_accepted,
    "SecretRotationRequested": on_rotation_requested,
    "ChartRemoved": on_chart_removed,
    "PurgeDue": on_purge_due,
}
