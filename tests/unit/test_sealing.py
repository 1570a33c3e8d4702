"""Sealed values: round trip, tamper detection, wrong key, malformed input — and no echo of content."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from soctalk_common.errors import PermanentError
from soctalk_common.sealing import (
    SealingError,
    UnsealFailed,
    generate_keypair,
    is_sealed,
    public_key_from_private,
    seal,
    unseal,
)

pytestmark = pytest.mark.unit

PRIV, PUB = generate_keypair()
PLAINTEXT = "sk-canary-" + "Zq9" * 12


def _body(envelope: str) -> bytes:
    body = envelope.split(":", 2)[2]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


def _envelope(raw: bytes) -> str:
    return "sealed:v1:" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _assert_no_echo(exc: BaseException, *secrets_: str) -> None:
    text = str(exc) + repr(exc.args)
    for s in secrets_:
        assert s not in text
    assert exc.__cause__ is None and exc.__suppress_context__


def test_keypair_is_raw_32_byte_base64_and_public_derivable() -> None:
    assert len(base64.b64decode(PRIV)) == 32
    assert len(base64.b64decode(PUB)) == 32
    assert public_key_from_private(PRIV) == PUB
    assert generate_keypair()[0] != PRIV


def test_round_trip() -> None:
    envelope = seal(PUB, PLAINTEXT)
    assert envelope.startswith("sealed:v1:")
    assert is_sealed(envelope)
    assert PLAINTEXT not in envelope
    assert unseal(PRIV, envelope) == PLAINTEXT


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=300))
def test_round_trip_any_unicode(text: str) -> None:
    assert unseal(PRIV, seal(PUB, text)) == text


def test_sealing_is_randomised() -> None:
    assert seal(PUB, PLAINTEXT) != seal(PUB, PLAINTEXT)


def test_wrong_key_refused_without_echo() -> None:
    other_priv, _ = generate_keypair()
    envelope = seal(PUB, PLAINTEXT)
    with pytest.raises(UnsealFailed) as ei:
        unseal(other_priv, envelope)
    assert isinstance(ei.value, PermanentError)
    _assert_no_echo(ei.value, PLAINTEXT, envelope, other_priv)


@pytest.mark.parametrize("region", ["ephemeral_key", "nonce", "ciphertext", "tag"])
def test_any_flipped_bit_is_detected(region: str) -> None:
    envelope = seal(PUB, PLAINTEXT)
    raw = bytearray(_body(envelope))
    index = {"ephemeral_key": 5, "nonce": 33, "ciphertext": 46, "tag": len(raw) - 1}[region]
    raw[index] ^= 0x01
    tampered = _envelope(bytes(raw))
    with pytest.raises(UnsealFailed, match="wrong key or tampered") as ei:
        unseal(PRIV, tampered)
    _assert_no_echo(ei.value, PLAINTEXT, tampered)


def test_truncated_and_extended_envelopes_are_detected() -> None:
    envelope = seal(PUB, PLAINTEXT)
    raw = _body(envelope)
    for bad in (_envelope(raw[:-1]), _envelope(raw + b"\x00")):
        with pytest.raises(UnsealFailed):
            unseal(PRIV, bad)


def test_trailing_garbage_is_refused() -> None:
    envelope = seal(PUB, PLAINTEXT)
    for bad in (envelope + "\n", envelope + "=", envelope + " "):
        with pytest.raises(UnsealFailed, match="malformed"):
            unseal(PRIV, bad)


def test_version_label_is_authenticated() -> None:
    # A v1 body relabelled as another version is refused before any crypto.
    envelope = seal(PUB, PLAINTEXT)
    with pytest.raises(UnsealFailed, match="unsupported envelope version"):
        unseal(PRIV, envelope.replace("sealed:v1:", "sealed:v2:"))


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "sk-plaintext-not-sealed",
        "sealed:",
        "sealed:v1:",
        "sealed:v1:not base64!",
        "sealed:v1:" + "A" * 10,  # decodes, too short for key + nonce + tag
        "sealed:v1:" + "A" * (64 * 1024),  # over the size cap
        "sealed:v9:" + "A" * 80,
    ],
)
def test_malformed_envelopes_are_permanent_errors(bad: str) -> None:
    with pytest.raises(UnsealFailed) as ei:
        unseal(PRIV, bad)
    assert isinstance(ei.value, PermanentError)
    if len(bad) > 12:
        assert bad[10:] not in str(ei.value)


def test_low_order_ephemeral_point_is_refused() -> None:
    # All-zero public point gives an all-zero shared secret; cryptography refuses, we report tamper.
    raw = bytes(32) + bytes(12) + bytes(40)
    with pytest.raises(UnsealFailed, match="wrong key or tampered"):
        unseal(PRIV, _envelope(raw))


@pytest.mark.parametrize("bad_key", ["", "not-base64!!", base64.b64encode(b"short").decode(), None])
def test_malformed_keys(bad_key: str) -> None:
    with pytest.raises(SealingError, match="key malformed"):
        seal(bad_key, PLAINTEXT)
    envelope = seal(PUB, PLAINTEXT)
    with pytest.raises(SealingError, match="private key malformed"):
        unseal(bad_key, envelope)
