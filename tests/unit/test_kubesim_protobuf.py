"""Decoding the protobuf request bodies client-go sends (Helm release Secrets)."""

from __future__ import annotations

import base64

import pytest
from soctalk_kubesim.protobuf import MAGIC, ProtobufError, decode

pytestmark = pytest.mark.unit


def varint(n: int) -> bytes:
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def field(number: int, value: bytes | int) -> bytes:
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    return varint(number << 3 | 2) + varint(len(value)) + value


def entry(number: int, key: str, value: bytes) -> bytes:
    return field(number, field(1, key.encode()) + field(2, value))


def envelope(api_version: str, kind: str, raw: bytes) -> bytes:
    type_meta = field(1, api_version.encode()) + field(2, kind.encode())
    return MAGIC + field(1, type_meta) + field(2, raw) + field(3, b"") + field(4, b"")


def test_decodes_a_helm_release_secret() -> None:
    meta = (field(1, b"sh.helm.release.v1.acme.v1") + field(2, b"") + field(3, b"tenant-acme")
            + entry(11, "owner", b"helm") + entry(11, "status", b"deployed")
            + entry(12, "note", b"x") + field(14, b"soctalk.io/keep") + field(7, 0))
    payload = bytes(range(256))  # binary data survives
    raw = field(1, meta) + entry(2, "release", payload) + field(3, b"helm.sh/release.v1") + field(5, 1)
    secret = decode(envelope("v1", "Secret", raw))
    assert secret["apiVersion"] == "v1" and secret["kind"] == "Secret"
    assert secret["metadata"] == {"name": "sh.helm.release.v1.acme.v1", "namespace": "tenant-acme",
                                  "labels": {"owner": "helm", "status": "deployed"},
                                  "annotations": {"note": "x"}, "finalizers": ["soctalk.io/keep"]}
    assert base64.b64decode(secret["data"]["release"]) == payload
    assert secret["type"] == "helm.sh/release.v1" and secret["immutable"] is True


def test_decodes_configmaps_and_namespaces() -> None:
    raw = field(1, field(1, b"cm")) + entry(2, "k", b"v") + entry(3, "bin", b"\x00\x01")
    cm = decode(envelope("v1", "ConfigMap", raw))
    assert cm["data"] == {"k": "v"} and cm["binaryData"] == {"bin": "AAE="}
    ns = decode(envelope("v1", "Namespace", field(1, field(1, b"tenant-acme"))))
    assert ns["metadata"] == {"name": "tenant-acme"}


@pytest.mark.parametrize("body", [
    b"not protobuf",
    MAGIC + b"\x0a\x05ab",  # truncated field
    envelope("apps/v1", "Deployment", b""),  # a kind we never receive as protobuf
])
def test_rejects_what_it_cannot_read(body: bytes) -> None:
    with pytest.raises(ProtobufError):
        decode(body)
