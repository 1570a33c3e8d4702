"""The committed JSON Schemas and AsyncAPI document match the event catalogue."""

import pytest
from soctalk_common import events as ev
from soctalk_common import schemagen

pytestmark = pytest.mark.unit


def test_generated_schemas_are_not_stale():
    assert schemagen.stale() == [], "run `make schemas` and commit the result"


def test_every_event_has_the_envelope():
    for name, cls in ev.CATALOG.items():
        fields = set(cls.model_fields)
        assert {"event_id", "event_type", "schema_version", "tenant_id", "correlation_id", "causation_id",
                "occurred_at"} <= fields, name


def test_no_event_field_is_named_like_secret_material():
    from soctalk_common.redact import is_secret_field

    allowed = {"sealed", "new_llm_key", "llm_key", "secrets_backend"}  # refs/ciphertext/names only
    for name, cls in ev.CATALOG.items():
        for field in cls.model_fields:
            assert field in allowed or not is_secret_field(field), f"{name}.{field}"


def test_every_consumed_and_emitted_event_is_in_the_catalogue():
    for table in (schemagen.CONSUMES, schemagen.EMITS):
        for service, names in table.items():
            for n in names:
                assert n in ev.CATALOG, f"{service}: {n}"
