"""Where secret material must never be: reading every place back and searching it for canaries.

Sources (each returns text, fully decoded so material inside an encoding would be found too):

* ``read_logs(workdir)``: every captured service log (JSON lines and tracebacks);
* ``pg_dump(url)``: a plain-text dump of the whole database, ``bytea`` columns (outbox payloads)
  hex-decoded and appended;
* ``stream_texts(bus)``: every stored message of every JetStream stream — subject, headers, body;
* ``helm_release_texts(kube, namespaces)``: every Helm release record (Secrets of type
  ``helm.sh/release.v1``: base64 → gzip → JSON), as its manifest, config (user values) and chart
  values, plus the whole decoded record;
* ``configmap_texts(kube)``: every ConfigMap in every namespace.

``CanaryIndex.hits(text)`` finds every canary in a text. Canaries are URL-safe strings; the text is
broken into maximal URL-safe runs (deduplicated: logs repeat), so the search costs one pass over the
text plus a substring search over the distinct runs, exact for any canary found inside a longer run.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from soctalk_common import stack
from soctalk_common.bus import STREAMS, Bus
from soctalk_common.gateways.kube import KubeGateway

URLSAFE = re.compile(r"[A-Za-z0-9_\-]+")
_RUN = re.compile(r"[A-Za-z0-9_\-]{12,}")
HELM_RELEASE_TYPE = "helm.sh/release.v1"


@dataclass
class CanaryIndex:
    """Named canary values: ``{value: what it is}``."""

    values: dict[str, str] = field(default_factory=dict)  # URL-safe values (the fast path)
    other: dict[str, str] = field(default_factory=dict)  # anything else (e.g. standard base64 keys)

    def add(self, value: str, what: str) -> None:
        value = value.strip()
        if len(value) < 12:
            return  # usernames and fixed values are not secrets
        target = self.values if URLSAFE.fullmatch(value) else self.other
        target.setdefault(value, what)

    def __len__(self) -> int:
        return len(self.values) + len(self.other)

    def hits(self, text: str) -> list[str]:
        """Descriptions (never the values) of every canary present in ``text``."""
        runs = set(_RUN.findall(text))
        found = [v for v in self.values if v in runs]
        rest = [v for v in self.values if v not in runs]
        if rest:
            joined = "\n".join(runs)
            found += [v for v in rest if v in joined]
        found += [v for v in self.other if v in text]
        described = {**self.values, **self.other}
        return sorted(f"{described[v]} ({v[:6]}…)" for v in found)


# --------------------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------------------


def read_logs(workdir: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted((workdir / "logs").glob("*.log")))


def pg_dump(database_url: str) -> str:
    url = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    out = subprocess.run([str(stack.postgres_bin_dir() / "pg_dump"), "--no-owner", url],  # noqa: S603
                         capture_output=True, text=True, check=True, timeout=120).stdout
    decoded = [bytes.fromhex(x).decode("utf-8", "replace") for x in re.findall(r"\\\\x([0-9a-f]+)", out)]
    return out + "\n" + "\n".join(decoded)


@dataclass(frozen=True)
class StoredMessage:
    seq: int
    subject: str
    headers: dict[str, str]
    data: bytes


async def read_stream(bus: Bus, name: str, batch: int = 1000) -> list[StoredMessage]:
    """Every message stored in stream ``name``, in order, read with an ephemeral pull consumer."""
    info = await bus.js.stream_info(name)
    remaining = info.state.messages
    out: list[StoredMessage] = []
    if not remaining:
        return out
    config = ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL,
                            inactive_threshold=30.0)
    sub = await bus.js.pull_subscribe(info.config.subjects[0], stream=name, config=config)
    try:
        while remaining > 0:
            msgs = await sub.fetch(min(batch, remaining), timeout=10)
            for msg in msgs:
                out.append(StoredMessage(msg.metadata.sequence.stream, msg.subject, dict(msg.headers or {}),
                                         msg.data or b""))
            remaining -= len(msgs)
    finally:
        await sub.unsubscribe()
    return out


async def stream_names(bus: Bus) -> list[str]:
    """Every stream the server has — the configured layout and anything else someone created."""
    return sorted({s.name for s in STREAMS} | {info.config.name for info in await bus.js.streams_info()})


async def stream_texts(bus: Bus) -> dict[str, str]:
    """Every stored message of every stream as text: ``{stream: subjects, headers and bodies}``."""
    out: dict[str, str] = {}
    for name in await stream_names(bus):
        out[name] = "\n".join(
            f"{m.subject}\n{json.dumps(m.headers)}\n{m.data.decode('utf-8', 'replace')}"
            for m in await read_stream(bus, name))
    return out


async def stream_count(bus: Bus, name: str) -> int:
    return int((await bus.js.stream_info(name)).state.messages)


def decode_helm_release(data_b64: str) -> dict[str, Any]:
    """A Helm release record as stored in its Secret's ``release`` key: base64(gzip(JSON))."""
    raw = base64.b64decode(data_b64)
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return json.loads(raw)


async def helm_releases(kube: KubeGateway, namespaces: Iterable[str]) -> list[tuple[str, dict[str, Any]]]:
    """``(secret name, decoded record)`` for every Helm release Secret in ``namespaces``.

    The Secret's ``data.release`` is base64 (Kubernetes) of base64(gzip(JSON)) (Helm)."""
    out = []
    for ns in namespaces:
        for obj in await kube.list("v1", "Secret", ns):
            if obj.get("type") != HELM_RELEASE_TYPE:
                continue
            inner = base64.b64decode((obj.get("data") or {}).get("release", "")).decode()
            out.append((f"{ns}/{obj['metadata']['name']}", decode_helm_release(inner)))
    return out


def helm_release_text(record: dict[str, Any]) -> str:
    chart = record.get("chart") or {}
    return "\n".join([
        str(record.get("manifest") or ""),
        json.dumps(record.get("config") or {}),  # the user-supplied values
        json.dumps(chart.get("values") or {}),  # the chart's defaults
        json.dumps(record),  # everything else (hooks, notes, templates)
    ])


async def configmap_texts(kube: KubeGateway) -> str:
    return "\n".join(json.dumps(cm.get("data") or {}) + json.dumps(cm.get("binaryData") or {}) +
                     json.dumps((cm.get("metadata") or {}).get("annotations") or {})
                     for cm in await kube.list("v1", "ConfigMap"))


async def tenant_namespaces(kube: KubeGateway) -> list[str]:
    return sorted(ns["metadata"]["name"] for ns in await kube.list("v1", "Namespace")
                  if ns["metadata"]["name"].startswith("tenant-"))


async def tenant_material(kube: KubeGateway, tenant_id: Any, slug: str) -> dict[str, str]:
    """Every generated or supplied value of one tenant as its Secrets hold it now (read back from the
    cluster, never guessed): ``{value: "ns/name.key"}``; an adapter token also by its secret part."""
    from soctalk_secrets.domain import INVENTORY, Gen

    out: dict[str, str] = {}
    for spec in INVENTORY:
        ns, name = spec.namespace(slug), spec.secret_name(tenant_id)
        rec = await kube.read_secret(ns, name)
        for key in (k.key for k in spec.keys if k.gen != Gen.FIXED):
            value = (rec.data.get(key) or "").strip() if rec else ""
            if value:
                out.setdefault(value, f"{ns}/{name}.{key}")
                if value.startswith("sta_"):
                    out.setdefault(value.split("_", 2)[2], f"{ns}/{name}.{key} (secret part)")
    return out


async def install_material(kube: KubeGateway, namespace: str = "soctalk-system") -> dict[str, str]:
    """The install's own keys the secrets service keeps in ``soctalk-system`` (sealing private key)."""
    out: dict[str, str] = {}
    for rec in await kube.list_secrets(namespace):
        if rec.name.startswith("tenant-") or rec.type == HELM_RELEASE_TYPE:
            continue
        for key, value in rec.data.items():
            if "public" not in key and len(value.strip()) >= 16:  # public keys are published on purpose
                out.setdefault(value.strip(), f"{namespace}/{rec.name}.{key}")
    return out


@dataclass
class ScanReport:
    canaries: int
    sources: dict[str, int]  # where → characters searched
    hits: dict[str, list[str]]  # where → canaries found there (descriptions)
    releases: int
    configmaps: int

    @property
    def total_hits(self) -> int:
        return sum(len(v) for v in self.hits.values())


async def scan(canaries: CanaryIndex, *, workdir: Path, database_url: str, bus: Bus,
               kube: KubeGateway) -> ScanReport:
    import asyncio

    texts: dict[str, str] = {"logs": read_logs(workdir),
                             "postgres": await asyncio.to_thread(pg_dump, database_url)}
    for name, text in (await stream_texts(bus)).items():
        texts[f"jetstream:{name}"] = text
    namespaces = ["soctalk-system", *await tenant_namespaces(kube)]
    releases = await helm_releases(kube, namespaces)
    texts["helm-releases"] = "\n".join(helm_release_text(r) for _, r in releases)
    cms = await kube.list("v1", "ConfigMap")
    texts["configmaps"] = await configmap_texts(kube)
    hits = {where: found for where, text in texts.items() if (found := canaries.hits(text))}
    return ScanReport(len(canaries), {k: len(v) for k, v in texts.items()}, hits, len(releases), len(cms))
