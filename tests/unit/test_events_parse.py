"""``parse_as`` (the consumers' fast path) gives the same events and the same errors as ``parse_event``."""

from __future__ import annotations

import json
import uuid

import pytest
from pydantic import ValidationError
from soctalk_common import events as ev

TENANT = uuid.uuid4()
VALID = [
    ev.TenantRequested(tenant_id=TENANT, request_id="r-1", config={"slug": "acme", "nested": {"a": [1, None]}}),
    ev.SecretsReady(tenant_id=TENANT, namespace="tenant-acme", references=[
        ev.SecretRef(backend="kubernetes", namespace="tenant-acme", name="wazuh-bootstrap", key="admin_password",
                     purpose="wazuh-bootstrap")]),
    ev.ChartApplied(tenant_id=TENANT, operation="install", release="soctalk-tenant", namespace="tenant-acme",
                    revision=1, chart_version="v0.1.0"),
    ev.TenantRetryRequested(tenant_id=TENANT, causation_id=uuid.uuid4()),
]


@pytest.mark.parametrize("event", VALID, ids=lambda e: e.event_type)
def test_valid_events_parse_to_the_same_model(event: ev.Event) -> None:
    body = event.model_dump_json().encode()
    fast = ev.parse_as(body, event.event_type)
    assert type(fast) is type(event)
    assert fast == ev.parse_event(body, expected=event.event_type) == event


def _error(fn, *args, **kw):  # type: ignore[no-untyped-def]
    with pytest.raises(Exception) as info:
        fn(*args, **kw)
    exc = info.value
    return type(exc), (exc.errors(include_url=False) if isinstance(exc, ValidationError) else str(exc))


def _body(**changes: object) -> bytes:
    doc = json.loads(VALID[2].model_dump_json())
    doc.update(changes)
    return json.dumps(doc).encode()


@pytest.mark.parametrize("body, expected", [
    (_body(revision="not a number"), "ChartApplied"),  # a field error: same paths and messages
    (_body(extra_field=1), "ChartApplied"),
    (_body(operation=None, tenant_id="x"), "ChartApplied"),
    (_body(), "SecretsReady"),  # a type on the wrong subject
    (_body(event_type="NoSuchEvent"), "ChartApplied"),
    (b"[1, 2]", "ChartApplied"),  # not an object
    (b"{not json", "ChartApplied"),
])
def test_invalid_bodies_fail_exactly_as_parse_event_does(body: bytes, expected: str) -> None:
    assert _error(ev.parse_as, body, expected) == _error(ev.parse_event, body, expected=expected)
