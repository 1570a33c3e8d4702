"""Sealed values: how a tenant's LLM API key travels to the secrets service without being readable.

The install owns an X25519 keypair (the private half in a Kubernetes Secret only the secrets service
mounts; the public half printed by ``soctalk keys public``). Upstream systems seal a value to the public
key; the envelope can sit on the bus, in Postgres or in logs without revealing anything, and only the
private key opens it.

Envelope ``sealed:v1:<body>`` where ``body`` is unpadded URL-safe base64 of
``ephemeral_public(32) || nonce(12) || ChaCha20-Poly1305 ciphertext+tag``. The AEAD key is
HKDF-SHA256 over the X25519 shared secret, salted with both public keys and bound to the version
label, and the version label is the AEAD associated data, so neither keys nor header can be swapped.

What callers can rely on:

* :func:`seal` is randomised (fresh ephemeral key per call): sealing the same value twice gives
  different envelopes.
* :func:`unseal` either returns exactly the sealed text or raises :class:`UnsealFailed` (a
  ``PermanentError``) whose message never contains the envelope, the key or any plaintext.
"""

from __future__ import annotations

import base64
import binascii
import os
import re

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from soctalk_common.errors import PermanentError

ENVELOPE_PREFIX = "sealed:"
_VERSION = "v1"
_HEADER = f"{ENVELOPE_PREFIX}{_VERSION}:"
_KEY_LEN = 32
_NONCE_LEN = 12
_TAG_LEN = 16
# An LLM key is < 1 KiB; the cap keeps a hostile envelope from costing real memory or CPU.
MAX_ENVELOPE_CHARS = 64 * 1024
_BODY_RE = re.compile(r"^[A-Za-z0-9_-]+$")


class SealingError(PermanentError):
    """A sealing key is malformed (not base64 of 32 raw bytes)."""


class UnsealFailed(SealingError):
    """The envelope is malformed, of an unknown version, tampered with or sealed to another key."""


def generate_keypair() -> tuple[str, str]:
    """Return ``(private_b64, public_b64)``: raw 32-byte X25519 keys in standard base64."""
    private = X25519PrivateKey.generate()
    return _b64(_raw_private(private)), _b64(_raw_public(private.public_key()))


def public_key_from_private(private_key_b64: str) -> str:
    """Derive the public half (standard base64) from a private key as stored by the install."""
    return _b64(_raw_public(_load_private(private_key_b64).public_key()))


def is_sealed(value: str) -> bool:
    """True when ``value`` looks like an envelope (any version); says nothing about validity."""
    return value.startswith(ENVELOPE_PREFIX)


def seal(public_key_b64: str, plaintext: str) -> str:
    """Seal UTF-8 ``plaintext`` to the install's public key; returns ``sealed:v1:<body>``.

    Raises :class:`SealingError` (a ``PermanentError``) when the public key is malformed.
    """
    recipient = _load_public(public_key_b64)
    ephemeral = X25519PrivateKey.generate()
    eph_pub = _raw_public(ephemeral.public_key())
    key = _derive(ephemeral.exchange(recipient), eph_pub, _raw_public(recipient))
    nonce = os.urandom(_NONCE_LEN)
    ciphertext = ChaCha20Poly1305(key).encrypt(nonce, plaintext.encode("utf-8"), _HEADER.encode())
    body = base64.urlsafe_b64encode(eph_pub + nonce + ciphertext).rstrip(b"=").decode("ascii")
    return _HEADER + body


def unseal(private_key_b64: str, envelope: str) -> str:
    """Open an envelope made by :func:`seal` with the matching private key.

    Raises :class:`UnsealFailed` for a malformed or oversized envelope, an unknown version, a wrong
    key or any tampering, and :class:`SealingError` for a malformed private key; both are
    ``PermanentError`` and their messages name the failure class only.
    """
    private = _load_private(private_key_b64)
    if not isinstance(envelope, str) or len(envelope) > MAX_ENVELOPE_CHARS:
        raise UnsealFailed("sealed value malformed: not a string or too long")
    if not envelope.startswith(ENVELOPE_PREFIX):
        raise UnsealFailed("sealed value malformed: missing 'sealed:' prefix")
    if not envelope.startswith(_HEADER):
        raise UnsealFailed(f"sealed value uses an unsupported envelope version (expected {_VERSION})")
    body = envelope[len(_HEADER) :]
    if not _BODY_RE.fullmatch(body):
        raise UnsealFailed("sealed value malformed: body is not URL-safe base64")
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise UnsealFailed("sealed value malformed: body is not URL-safe base64") from None
    if len(raw) < _KEY_LEN + _NONCE_LEN + _TAG_LEN:
        raise UnsealFailed("sealed value malformed: body too short")
    eph_pub, nonce = raw[:_KEY_LEN], raw[_KEY_LEN : _KEY_LEN + _NONCE_LEN]
    ciphertext = raw[_KEY_LEN + _NONCE_LEN :]
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(eph_pub))
        key = _derive(shared, eph_pub, _raw_public(private.public_key()))
        plaintext = ChaCha20Poly1305(key).decrypt(nonce, ciphertext, _HEADER.encode())
        return plaintext.decode("utf-8")
    except (InvalidTag, ValueError, UnicodeDecodeError):
        # ValueError: low-order ephemeral point (all-zero shared secret). Same message on purpose:
        # an attacker learns nothing about which check failed.
        raise UnsealFailed("sealed value could not be opened: wrong key or tampered envelope") from None


# --- helpers ---------------------------------------------------------------------------------------


def _derive(shared: bytes, eph_pub: bytes, recipient_pub: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=_KEY_LEN,
        salt=eph_pub + recipient_pub,
        info=b"soctalk-sealed-" + _VERSION.encode(),
    ).derive(shared)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _decode_key(value: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError, AttributeError):
        raise SealingError(f"{what} key malformed: not base64") from None
    if len(raw) != _KEY_LEN:
        raise SealingError(f"{what} key malformed: expected {_KEY_LEN} bytes")
    return raw


def _load_private(value: str) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(_decode_key(value, "private"))


def _load_public(value: str) -> X25519PublicKey:
    return X25519PublicKey.from_public_bytes(_decode_key(value, "public"))


def _raw_private(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def _raw_public(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
