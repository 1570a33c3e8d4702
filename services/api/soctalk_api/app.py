"""The thin HTTP API: publishes commands and reads state. OpenAPI at ``/openapi.json``.

Every write returns ``202 Accepted`` with the event id once JetStream has acknowledged the command;
progress is visible in ``GET /api/mssp/tenants/{id}/lifecycle`` (or ``soctalk events tail``).
Bad requests get a 4xx whose body names each offending field as a JSON path.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from soctalk_common import events as ev
from soctalk_common.bus import Bus
from soctalk_common.db import models as m
from soctalk_common.errors import ValidationFailed
from soctalk_common.settings import Settings
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from soctalk_api import commands
from soctalk_api.auth import AuthError, Principal, verify_bearer, verify_proxy

PREFIX = "/api/mssp/tenants"


@dataclass
class ApiDeps:
    settings: Settings
    bus: Bus
    sessionmaker: async_sessionmaker[AsyncSession]


class TenantRequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requestId: str | None = Field(None, min_length=1, max_length=128)  # noqa: N815 - JSON API casing
    config: dict[str, Any]


class UpgradeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    targetChartVersion: str = Field(pattern=r"^v?\d+\.\d+\.\d+$")  # noqa: N815


class DecommissionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gracePeriodSeconds: float | None = Field(None, ge=0)  # noqa: N815
    force: bool = False
    reason: str = Field("", max_length=500)


class SuspendBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field("", max_length=500)


class Accepted(BaseModel):
    tenantId: uuid.UUID  # noqa: N815
    eventId: uuid.UUID  # noqa: N815
    eventType: str  # noqa: N815


def _path(loc: tuple[Any, ...]) -> str:
    parts = [p for p in loc if p != "body"]
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


async def principal(request: Request) -> Principal:
    """Who is calling, per the install's auth mode (seed 001 ``auth`` block)."""
    s: Settings = request.app.state.deps.settings
    try:
        if s.auth_mode == "proxy":
            return verify_proxy(request.client.host if request.client else None,
                                {k.lower(): v for k, v in request.headers.items()},
                                cidrs=s.trusted_proxy_cidrs, user_header=s.auth_trusted_header_user,
                                email_header=s.auth_trusted_header_email,
                                groups_header=s.auth_trusted_header_groups)
        return verify_bearer(s.jwt_signing_key, request.headers.get("authorization"))
    except AuthError as exc:
        raise HTTPException(exc.status, str(exc)) from exc


Auth = Annotated[Principal, Depends(principal)]


def create_app(deps: ApiDeps) -> FastAPI:
    app = FastAPI(title="SocTalk MSSP API", version="1.1.0",
                  description="Tenant onboarding and lifecycle for the SocTalk control plane.")
    app.state.deps = deps

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"path": _path(tuple(e["loc"])), "message": e["msg"]} for e in exc.errors()]
        return JSONResponse({"error": "invalid request", "errors": errors}, status_code=422)

    @app.exception_handler(ValidationFailed)
    async def _failed(_: Request, exc: ValidationFailed) -> JSONResponse:
        errors = [{"path": p, "message": msg} for p, msg in exc.errors]
        return JSONResponse({"error": "invalid tenant config", "errors": errors}, status_code=422)

    async def tenant_or_404(tenant_id: uuid.UUID) -> m.Tenant:
        async with deps.sessionmaker() as session:
            t = await session.get(m.Tenant, tenant_id)
        if t is None:
            raise HTTPException(404, f"no tenant {tenant_id}")
        return t

    async def send(event: ev.Event) -> Accepted:
        await commands.send(deps.bus, event)
        return Accepted(tenantId=event.tenant_id, eventId=event.event_id, eventType=event.event_type)

    @app.post(PREFIX, status_code=202, response_model=Accepted)
    async def request_tenant(body: TenantRequestBody, who: Auth) -> Accepted:
        return await send(commands.tenant_requested(body.config, body.requestId))

    @app.post(PREFIX + "/{tenant_id:uuid}:upgrade", status_code=202, response_model=Accepted)
    async def upgrade(tenant_id: uuid.UUID, body: UpgradeBody, who: Auth) -> Accepted:
        await tenant_or_404(tenant_id)
        return await send(ev.TenantUpgradeRequested(tenant_id=tenant_id, target_chart_version=body.targetChartVersion))

    @app.post(PREFIX + "/{tenant_id:uuid}:decommission", status_code=202, response_model=Accepted)
    async def decommission(tenant_id: uuid.UUID, body: DecommissionBody, who: Auth) -> Accepted:
        await tenant_or_404(tenant_id)
        return await send(ev.TenantDecommissionRequested(tenant_id=tenant_id, grace_period_s=body.gracePeriodSeconds,
                                                         force=body.force, reason=body.reason))

    @app.post(PREFIX + "/{tenant_id:uuid}:cancel", status_code=202, response_model=Accepted)
    async def cancel(tenant_id: uuid.UUID, who: Auth) -> Accepted:
        await tenant_or_404(tenant_id)
        return await send(ev.TenantDecommissionCancelRequested(tenant_id=tenant_id))

    @app.post(PREFIX + "/{tenant_id:uuid}:retry", status_code=202, response_model=Accepted)
    async def retry(tenant_id: uuid.UUID, who: Auth) -> Accepted:
        await tenant_or_404(tenant_id)
        return await send(ev.TenantRetryRequested(tenant_id=tenant_id))

    @app.post(PREFIX + "/{tenant_id:uuid}:suspend", status_code=202, response_model=Accepted)
    async def suspend(tenant_id: uuid.UUID, who: Auth, body: SuspendBody | None = None) -> Accepted:
        await tenant_or_404(tenant_id)
        return await send(ev.TenantSuspendRequested(tenant_id=tenant_id, reason=body.reason if body else ""))

    @app.post(PREFIX + "/{tenant_id:uuid}:resume", status_code=202, response_model=Accepted)
    async def resume(tenant_id: uuid.UUID, who: Auth) -> Accepted:
        await tenant_or_404(tenant_id)
        return await send(ev.TenantResumeRequested(tenant_id=tenant_id))

    @app.get(PREFIX)
    async def list_tenants(who: Auth, state: str | None = None, include_deleted: bool = False) -> list[dict[str, Any]]:
        async with deps.sessionmaker() as session:
            stmt = select(m.Tenant).order_by(m.Tenant.created_at)
            if state:
                stmt = stmt.where(m.Tenant.state == state)
            if not include_deleted:
                stmt = stmt.where(m.Tenant.deleted_at.is_(None))
            return [tenant_view(t) for t in (await session.execute(stmt)).scalars()]

    @app.get(PREFIX + "/{tenant_id:uuid}")
    async def show(tenant_id: uuid.UUID, who: Auth) -> dict[str, Any]:
        return tenant_view(await tenant_or_404(tenant_id))

    @app.get(PREFIX + "/{tenant_id:uuid}/lifecycle")
    async def lifecycle(tenant_id: uuid.UUID, who: Auth, limit: int = 500) -> list[dict[str, Any]]:
        async with deps.sessionmaker() as session:
            rows = (await session.execute(
                select(m.TenantLifecycleEvent).where(m.TenantLifecycleEvent.tenant_id == tenant_id)
                .order_by(m.TenantLifecycleEvent.id).limit(min(limit, 5000)))).scalars()
            return [lifecycle_view(r) for r in rows]

    return app


def tenant_view(t: m.Tenant) -> dict[str, Any]:
    """``lastHeartbeatAt``: at most ``SOCTALK_HEARTBEAT_TENANT_TOUCH_S`` (30 s) + one flush older than
    the newest heartbeat the heartbeat service received (it refreshes the column that rarely)."""
    return {"id": str(t.id), "slug": t.slug, "displayName": t.display_name, "state": t.state,
            "profile": t.profile, "chartVersion": t.chart_version, "namespace": f"tenant-{t.slug}",
            "releaseRevision": t.release_revision, "completedSteps": t.completed_steps,
            "failedStep": t.failed_step, "lastError": t.last_error, "lastHeartbeatAt": t.last_heartbeat_at,
            "createdAt": t.created_at, "updatedAt": t.updated_at, "deletedAt": t.deleted_at}


def lifecycle_view(r: m.TenantLifecycleEvent) -> dict[str, Any]:
    return {"eventId": str(r.event_id), "type": r.type, "stateFrom": r.state_from, "stateTo": r.state_to,
            "step": r.step, "message": r.message, "details": r.details, "occurredAt": r.occurred_at,
            "correlationId": str(r.correlation_id)}
