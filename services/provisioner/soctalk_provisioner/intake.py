"""Intake of ``TenantRequested``: the checks that need the database and the two ways out.

Order of checks: a repeated ``request_id`` first (nothing is validated or created again); then the JSON
Schema and semantic rules (pure); only a config that passes them is checked against the compatibility
table (chart version) and the tenants table (slug per MSSP, tenant id). Every problem is reported at
once, each with its JSON path.

The tenants-table facts (same request id, same slug, same tenant id) come from ONE query made before
anything else (:func:`existing`): one round trip instead of three.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from soctalk_common import events as ev
from soctalk_common.db import models as m
from soctalk_common.uow import UnitOfWork
from sqlalchemy import and_, bindparam, or_, select

from soctalk_provisioner import domain
from soctalk_provisioner.compatibility import can_upgrade
from soctalk_provisioner.deps import Deps
from soctalk_provisioner.domain import State, Step, Trigger
from soctalk_provisioner.records import accepted_fields
from soctalk_provisioner.validation import FieldError, stored_form

_SLUG = re.compile(r"^[a-z0-9]([a-z0-9-]{0,54}[a-z0-9])?$")


_T = m.Tenant
_COLUMNS = (_T.id, _T.slug, _T.state, _T.request_id, _T.mssp_id)
_SAME = or_(_T.request_id == bindparam("request_id"), _T.id == bindparam("tenant_id"))
_EXISTING = select(*_COLUMNS).where(_SAME).order_by(_T.created_at)  # built once, not per message
_EXISTING_OR_SLUG = select(*_COLUMNS).where(or_(
    _SAME, and_(_T.mssp_id == bindparam("mssp_id"), _T.slug == bindparam("slug")))).order_by(_T.created_at)


@dataclass(frozen=True)
class Existing:
    """Tenants that already hold this request's request id, slug (in this MSSP) or tenant id."""

    by_request: Any | None = None  # row (id, slug, state) of the tenant created by the same request
    by_slug: Any | None = None  # row (id, slug, state) of the tenant holding the slug
    by_id: bool = False


async def existing(tx: UnitOfWork, event: ev.TenantRequested, deps: Deps) -> Existing:
    """One query for the three uniqueness facts (the slug only when the config has a string slug)."""
    slug = event.config.get("slug")
    params = {"request_id": event.request_id, "tenant_id": event.tenant_id}
    if isinstance(slug, str):
        params |= {"mssp_id": deps.settings.mssp_id, "slug": slug}
    rows = (await tx.session.execute(_EXISTING_OR_SLUG if isinstance(slug, str) else _EXISTING, params)).all()
    return Existing(
        by_request=next((r for r in rows if r.request_id == event.request_id), None),
        by_slug=next((r for r in rows if isinstance(slug, str) and r.slug == slug
                      and r.mssp_id == deps.settings.mssp_id), None),
        by_id=any(r.id == event.tenant_id for r in rows))


async def check(tx: UnitOfWork, event: ev.TenantRequested, deps: Deps,
                found: Existing) -> tuple[list[FieldError], str | None]:
    """(errors, compatibility warning). Errors empty = accept."""
    s = deps.settings
    errors = deps.validator.errors(event.config, system_namespace=s.system_namespace)
    if errors:
        return errors, None
    cfg = event.config
    version = cfg.get("chartVersion", s.default_tenant_chart_version)
    v = await can_upgrade(tx.session, s.system_version, version)
    if not v.allowed:
        errors.append(FieldError("$.chartVersion", f"chart version {version} cannot be installed on soctalk-"
                                                   f"system {s.system_version}: {v.notes or 'blocked'}"))
    if (taken := found.by_slug) is not None:
        errors.append(FieldError("$.slug", f"already used by tenant {taken.id} ({taken.state}); a slug is "
                                           "unique per MSSP and stays reserved until the tenant is purged"))
    if found.by_id:
        errors.append(FieldError("$.tenant_id", "already names another request's tenant"))
    return errors, (f"{v.tenant} is deprecated on {v.system}: {v.notes or ''}".strip() if v.warn else None)


def reject(tx: UnitOfWork, event: ev.TenantRequested, errors: list[FieldError]) -> None:
    reason = "invalid tenant request: " + "; ".join(f"{e.path}: {e.message}" for e in errors)
    slug = event.config.get("slug") if isinstance(event.config.get("slug"), str) else None
    slug = slug if slug and _SLUG.match(slug) else None
    tx.emit(event.caused(ev.TenantRejected, request_id=event.request_id, reason=reason[:2000],
                         errors=[e.as_event() for e in errors]))
    tx.lifecycle(event, "TenantRejected", slug=slug, state_from=State.REQUESTED, step=Step.VALIDATE,
                 message=reason[:2000],
                 details={"request_id": event.request_id,
                          "errors": [{"path": e.path, "message": e.message} for e in errors]})


def accept(tx: UnitOfWork, event: ev.TenantRequested, deps: Deps, *, warning: str | None) -> m.Tenant:
    """Create the tenant (``pending``, step ``validate`` done) and emit ``TenantAccepted``."""
    s, cfg = deps.settings, event.config
    state = domain.transition(State.REQUESTED, Trigger.ACCEPT)
    config, key = stored_form(cfg, tenant_id=event.tenant_id, system_namespace=s.system_namespace,
                              default_chart_version=s.default_tenant_chart_version,
                              default_profile=s.default_profile, default_secrets_backend=s.secrets_backend)
    now = deps.clock.now()
    tenant = m.Tenant(
        id=event.tenant_id, mssp_id=s.mssp_id, install_id=s.install_id, slug=cfg["slug"],
        request_id=event.request_id, display_name=cfg["displayName"], state=str(state),
        profile=config["profile"],
        chart_version=config["chartVersion"], secrets_backend=config["secretsBackend"], config=config,
        llm_key_source=key.model_dump(mode="json", exclude_none=True), completed_steps=[Step.VALIDATE.value],
        attempts=0, created_at=now, updated_at=now)
    tx.session.add(tenant)
    tx.emit(event.caused(ev.TenantAccepted, **accepted_fields(tenant), resume=False))
    tx.lifecycle(event, "TenantAccepted", slug=tenant.slug, state_from=State.REQUESTED, state_to=tenant.state,
                 step=Step.VALIDATE, message=f"accepted request {event.request_id}",
                 details={"request_id": event.request_id, "chart_version": tenant.chart_version,
                          "profile": tenant.profile, "llm_key": config["llm"]["apiKeySource"]})
    if warning:
        tx.lifecycle(event, "CompatibilityWarning", slug=tenant.slug, step=Step.VALIDATE, message=warning)
    return tenant
