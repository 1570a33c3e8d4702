"""``POST /v1/heartbeat/{tenant_id}`` for adapters that cannot reach NATS.

Same header (``Authorization: Bearer <token>``), same JSON body as on the bus (``event_type`` and
``tenant_id`` may be omitted: they are taken from the URL), same verification and routing
(:class:`~soctalk_heartbeat.intake.Intake`). Answers:

* 202 accepted;
* 401 no valid credential (missing, malformed, unknown, wrong secret, revoked, expired) with
  ``WWW-Authenticate: Bearer`` and a generic body — the reason is only in the metrics;
* 403 a valid token not allowed here (another tenant's, or the tenant is not active / unknown);
* 400 invalid payload (the JSON paths at fault, never values); 413 body too large;
* 503 verification or recording unavailable right now (retry later).

No response ever contains the presented token.
"""

from __future__ import annotations

import json

from aiohttp import web

from soctalk_heartbeat import domain
from soctalk_heartbeat.intake import Incoming, Intake

_ERRORS = {401: "unauthorized", 403: "forbidden", 400: "invalid_payload", 413: "too_large"}


def routes(intake: Intake) -> list[web.RouteDef]:
    async def post_heartbeat(request: web.Request) -> web.Response:
        tenant = request.match_info["tenant_id"]
        body = await request.content.read(domain.MAX_BODY_BYTES + 1)
        item = Incoming(tenant=tenant, authorization=request.headers.get("Authorization"),
                        body=_with_defaults(body, tenant), transport="http")
        try:
            verdict = (await intake.verify([item]))[0]
        except Exception:  # noqa: BLE001 - the token cache could not be refreshed
            return _unavailable()
        if verdict.reason is not None:
            status = domain.http_status(verdict.reason)
            payload: dict[str, object] = {"error": _ERRORS.get(status, "refused")}
            if status == 400:
                payload["fields"] = list(verdict.errors)
            headers = {"WWW-Authenticate": 'Bearer realm="soctalk-adapter"'} if status == 401 else None
            return web.json_response(payload, status=status, headers=headers)
        if await intake.apply([verdict]):
            return _unavailable()
        return web.json_response({"status": "accepted"}, status=202)

    return [web.post("/v1/heartbeat/{tenant_id}", post_heartbeat)]


def _unavailable() -> web.Response:
    return web.json_response({"error": "unavailable"}, status=503, headers={"Retry-After": "5"})


def _with_defaults(body: bytes, tenant: str) -> bytes:
    """Fill ``event_type``/``tenant_id`` from the URL when the body leaves them out (bounded input)."""
    if len(body) > domain.MAX_BODY_BYTES:
        return body
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if not isinstance(data, dict):
        return body
    data.setdefault("event_type", "AdapterHeartbeat")
    data.setdefault("tenant_id", tenant)
    return json.dumps(data).encode()
