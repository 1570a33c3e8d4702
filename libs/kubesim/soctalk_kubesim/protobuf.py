"""Just enough Kubernetes protobuf to accept the request bodies client-go sends.

client-go (and so Helm's release storage) may send core objects as
``application/vnd.kubernetes.protobuf``: the bytes ``k8s\\x00`` followed by a ``runtime.Unknown``
envelope whose ``raw`` field is the object. The emulator always *answers* in JSON, which client-go
accepts, so only decoding is needed, and only for the kinds client-go sends that way to us: Secret,
ConfigMap and Namespace. Anything else raises ``ProtobufError`` (the emulator answers 400).
Field numbers follow k8s.io/api ``generated.proto``.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

CONTENT_TYPE = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"


class ProtobufError(ValueError):
    pass


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ProtobufError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """Yield ``(field number, value)``: ints for varints, bytes for length-delimited fields."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, value
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise ProtobufError("truncated field")
            yield number, buf[pos:pos + length]
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ProtobufError(f"unsupported wire type {wire}")


def _str(value: int | bytes) -> str:
    if not isinstance(value, bytes):
        raise ProtobufError("expected a string field")
    return value.decode()


def _entry(value: int | bytes) -> tuple[str, bytes]:
    if not isinstance(value, bytes):
        raise ProtobufError("expected a map entry")
    key, val = "", b""
    for number, item in _fields(value):
        if number == 1:
            key = _str(item)
        elif number == 2 and isinstance(item, bytes):
            val = item
    return key, val


def _meta(buf: bytes) -> dict:
    meta: dict = {}
    names = {1: "name", 2: "generateName", 3: "namespace", 5: "uid", 6: "resourceVersion"}
    for number, value in _fields(buf):
        if number in names and value:
            meta[names[number]] = _str(value)
        elif number == 7 and isinstance(value, int) and value:
            meta["generation"] = value
        elif number in (11, 12):
            key, val = _entry(value)
            meta.setdefault("labels" if number == 11 else "annotations", {})[key] = val.decode()
        elif number == 14:
            meta.setdefault("finalizers", []).append(_str(value))
    return meta


def _secret(raw: bytes) -> dict:
    obj: dict = {"metadata": {}}
    for number, value in _fields(raw):
        if number == 1 and isinstance(value, bytes):
            obj["metadata"] = _meta(value)
        elif number == 2:
            key, val = _entry(value)
            obj.setdefault("data", {})[key] = base64.b64encode(val).decode()
        elif number == 3 and value:
            obj["type"] = _str(value)
        elif number == 4:
            key, val = _entry(value)
            obj.setdefault("stringData", {})[key] = val.decode()
        elif number == 5:
            obj["immutable"] = bool(value)
    return obj


def _configmap(raw: bytes) -> dict:
    obj: dict = {"metadata": {}}
    for number, value in _fields(raw):
        if number == 1 and isinstance(value, bytes):
            obj["metadata"] = _meta(value)
        elif number == 2:
            key, val = _entry(value)
            obj.setdefault("data", {})[key] = val.decode()
        elif number == 3:
            key, val = _entry(value)
            obj.setdefault("binaryData", {})[key] = base64.b64encode(val).decode()
        elif number == 4:
            obj["immutable"] = bool(value)
    return obj


def _namespace(raw: bytes) -> dict:
    obj: dict = {"metadata": {}}
    for number, value in _fields(raw):
        if number == 1 and isinstance(value, bytes):
            obj["metadata"] = _meta(value)
    return obj


_DECODERS = {("v1", "Secret"): _secret, ("v1", "ConfigMap"): _configmap, ("v1", "Namespace"): _namespace}


def type_meta(body: bytes) -> dict:
    """Only ``apiVersion`` and ``kind`` from the envelope (enough for access reviews)."""
    _, api_version, kind = _envelope(body)
    return {"apiVersion": api_version, "kind": kind}


def _envelope(body: bytes) -> tuple[bytes, str, str]:
    if not body.startswith(MAGIC):
        raise ProtobufError("missing k8s protobuf magic prefix")
    api_version = kind = ""
    raw = b""
    for number, value in _fields(body[len(MAGIC):]):
        if number == 1 and isinstance(value, bytes):
            for sub, item in _fields(value):
                if sub == 1:
                    api_version = _str(item)
                elif sub == 2:
                    kind = _str(item)
        elif number == 2 and isinstance(value, bytes):
            raw = value
    return raw, api_version, kind


def decode(body: bytes) -> dict:
    raw, api_version, kind = _envelope(body)
    decoder = _DECODERS.get((api_version, kind))
    if decoder is None:
        raise ProtobufError(f"protobuf bodies for {api_version}/{kind} are not supported; send JSON")
    obj = decoder(raw)
    obj["apiVersion"], obj["kind"] = api_version, kind
    return obj
