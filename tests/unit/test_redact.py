"""Redaction: secret-named fields at any depth, secret-shaped strings anywhere, registered values."""

from __future__ import annotations

import copy
import secrets

import pytest
from hypothesis import given
from hypothesis import strategies as st
from soctalk_common.redact import (
    REDACTED,
    SECRET_FIELD_NAMES,
    is_secret_field,
    redact,
    scrub_text,
)

pytestmark = pytest.mark.unit

CANARY = "canary-" + secrets.token_urlsafe(32)


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "admin_password",
        "PASSWORD",
        "api_key",
        "X-Api-Key",
        "apiKey",
        "token",
        "api_token",
        "authd_pass",
        "private_key",
        "privateKey",
        "sealed_llm_key",
        "Authorization",
        "client_secret",
        "cassandra-creds-password",
        "credentials",
    ],
)
def test_secret_field_names_match_case_insensitive_substring(key: str) -> None:
    assert is_secret_field(key)
    assert redact({key: CANARY}) == {key: REDACTED}


@pytest.mark.parametrize(
    "key", ["tenant_id", "slug", "namespace", "version_label", "secret_name", "token_prefix", "event_type"]
)
def test_reference_and_ordinary_fields_keep_their_value(key: str) -> None:
    assert not is_secret_field(key)
    assert redact({key: "acme"}) == {key: "acme"}


def test_every_listed_name_is_itself_a_secret_field() -> None:
    assert all(is_secret_field(name) for name in SECRET_FIELD_NAMES)


def test_recursive_and_non_mutating() -> None:
    event = {
        "event": "secret written",
        "tenant_id": "7d1e",
        "secret_refs": [
            {"name": "wazuh-bootstrap", "key": "admin_password", "version_label": "v1"},
        ],
        "payload": {"data": {"admin_password": CANARY, "admin_username": "admin"}},
        "headers": ({"Authorization": "Bearer " + CANARY},),
        "tags": {"ok"},
    }
    before = copy.deepcopy(event)
    out = redact(event)
    assert event == before  # input untouched
    assert out["payload"]["data"] == {"admin_password": REDACTED, "admin_username": "admin"}
    assert out["secret_refs"][0]["key"] == "admin_password"  # a key *name* is a reference, not material
    assert out["headers"] == ({"Authorization": REDACTED},)
    assert out["tags"] == {"ok"}
    assert CANARY not in repr(out)


def test_whole_subtree_under_secret_key_is_replaced() -> None:
    assert redact({"secret": {"nested": [1, 2]}}) == {"secret": REDACTED}


def test_non_string_keys_and_leaves_pass_through() -> None:
    assert redact({1: "x", "n": 5, "f": None}) == {1: "x", "n": 5, "f": None}
    assert redact(42) == 42


def test_secret_shapes_are_scrubbed_under_any_key() -> None:
    adapter_token = "sta_abcdefghij12_" + secrets.token_urlsafe(48)
    envelope = "sealed:v1:" + secrets.token_urlsafe(60)
    out = redact(
        {
            "msg": f"adapter presented {adapter_token} ok",
            "detail": f"llm key {envelope}",
            "header": "got bearer " + CANARY,
            "pem": "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----",
        }
    )
    assert out["msg"] == f"adapter presented {REDACTED} ok"
    assert out["detail"] == f"llm key {REDACTED}"
    assert CANARY not in out["header"]
    assert out["pem"] == REDACTED


def test_scrub_text_replaces_registered_values_longest_first() -> None:
    short = secrets.token_urlsafe(8)
    long = short + secrets.token_urlsafe(8)
    text = f"error: bad value {long} and {short}; again {long}"
    out = scrub_text(text, [short, long, ""])
    assert short not in out
    assert out == f"error: bad value {REDACTED} and {REDACTED}; again {REDACTED}"


def test_scrub_text_without_values_leaves_plain_text() -> None:
    assert scrub_text("tenant acme provisioned", []) == "tenant acme provisioned"


# Values share no character with the marker, so a hit can only be a leftover, never the marker itself.
_NO_MARKER_CHARS = st.characters(blacklist_characters="[]REDACT")


@given(st.text(_NO_MARKER_CHARS, min_size=1, max_size=40), st.text(_NO_MARKER_CHARS, max_size=40))
def test_scrub_text_never_leaves_a_registered_value(value: str, around: str) -> None:
    assert value not in scrub_text(around + value + around, [value])
