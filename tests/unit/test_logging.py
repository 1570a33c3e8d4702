"""Logs are JSON with correlation/causation ids, and secret material never reaches them."""

import io
import json
import uuid

import pytest
import structlog
from soctalk_common import events as ev
from soctalk_common.logging import bind_event_context, configure_logging, forget_secret, register_secret

pytestmark = pytest.mark.unit


@pytest.fixture
def captured():
    buf = io.StringIO()
    configure_logging("test", json_output=True, stream=buf)
    yield buf
    structlog.contextvars.clear_contextvars()


def lines(buf: io.StringIO) -> list[dict]:
    return [json.loads(x) for x in buf.getvalue().splitlines() if x.strip()]


def test_secret_fields_are_redacted(captured):
    structlog.get_logger().info("writing", password="hunter2-canary-pw", api_key="sk-canary-123456789",
                                name="wazuh-bootstrap")
    [line] = lines(captured)
    assert line["name"] == "wazuh-bootstrap"
    assert "hunter2-canary-pw" not in captured.getvalue()
    assert "sk-canary-123456789" not in captured.getvalue()


def test_registered_material_is_scrubbed_anywhere(captured):
    canary = "canary-" + uuid.uuid4().hex
    register_secret(canary)
    try:
        structlog.get_logger().warning(f"k8s said: secret {canary} rejected", detail=f"value={canary}")
    finally:
        forget_secret(canary)
    assert canary not in captured.getvalue()


def test_event_context_carries_correlation_and_causation(captured):
    parent = ev.TenantRetryRequested(tenant_id=uuid.uuid4())
    child = parent.caused(ev.TenantSuspendRequested)
    with bind_event_context(child, consumer="c1"):
        structlog.get_logger().info("handled")
    [line] = lines(captured)
    assert line["correlation_id"] == str(parent.correlation_id)
    assert line["causation_id"] == str(parent.event_id)
    assert line["tenant_id"] == str(parent.tenant_id)
    assert line["service"] == "test"
