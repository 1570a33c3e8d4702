"""Generate the integration files upstream teams consume: JSON Schemas of every event and AsyncAPI.

``python -m soctalk_common.schemagen`` writes ``schemas/events/*.schema.json`` and
``schemas/asyncapi.json``; ``--check`` exits 1 and names the stale files instead (CI and a test use it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from soctalk_common import events as ev
from soctalk_common.settings import REPO_ROOT

SCHEMAS = REPO_ROOT / "schemas"

# Who consumes and who emits what (DESIGN §2). The AsyncAPI document is generated from FastStream
# brokers built from this map; tests check every service's routes against it.
CONSUMES: dict[str, list[str]] = {
    "provisioner": [
        "TenantRequested", "TenantUpgradeRequested", "TenantDecommissionRequested",
        "TenantDecommissionCancelRequested", "TenantRetryRequested", "TenantSuspendRequested",
        "TenantResumeRequested", "SecretsReady", "SecretsFailed", "SecretsRemoved", "ChartApplied", "ChartFailed",
        "ChartRemoved", "TenantActivated", "TenantDegraded", "TenantRecovered", "NamespaceMissing",
    ],
    "secrets": ["TenantAccepted", "SecretRotationRequested", "ChartRemoved", "PurgeDue"],
    "helm-runner": ["SecretsReady", "UpgradeApproved", "SuspendApproved", "ResumeApproved", "DecommissionDue"],
    "heartbeat": ["AdapterHeartbeat", "ChartApplied"],
}
EMITS: dict[str, list[str]] = {
    "provisioner": ["TenantAccepted", "TenantRejected", "UpgradeApproved", "UpgradeRejected", "SuspendApproved",
                    "ResumeApproved", "DecommissionDue", "PurgeDue", "SecretsReady", "TenantLifecycleEvent"],
    "secrets": ["SecretsReady", "SecretsFailed", "SecretRotated", "SecretsRemoved", "SecretAuditEvent",
                "TenantLifecycleEvent"],
    "helm-runner": ["ChartApplied", "ChartFailed", "ChartRemoved", "DriftDetected", "NamespaceMissing",
                    "TenantLifecycleEvent"],
    "heartbeat": ["TenantActivated", "TenantDegraded", "TenantRecovered", "TenantLifecycleEvent"],
}


def event_schemas() -> dict[str, dict[str, Any]]:
    out = {}
    for name, cls in sorted(ev.CATALOG.items()):
        schema = cls.model_json_schema(mode="serialization")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://soctalk.dev/schemas/events/{name}.schema.json"
        schema["x-subject"] = ev.subject_filter(name) if cls.family in ("tenant", "adapter") else {
            "lifecycle": "soctalk.lifecycle.<tenant_id>.<type>", "audit": "soctalk.audit.secrets.<tenant_id>"
        }[cls.family]
        out[name] = schema
    return out


def asyncapi_document() -> dict[str, Any]:
    from faststream.nats import NatsBroker
    from faststream.specification import AsyncAPI

    broker = NatsBroker("nats://soctalk-nats:4222")
    for service, consumed in CONSUMES.items():
        for name in consumed:
            cls = ev.CATALOG[name]
            # Doc-only handlers typed with the event model so FastStream derives the payload schema.
            fn = _typed_doc_handler(cls)
            broker.subscriber(ev.subject_filter(name), title=f"{service}:{name}",
                              description=(cls.__doc__ or name).strip().splitlines()[0])(fn)
    for service, emitted in EMITS.items():
        for name in emitted:
            cls = ev.CATALOG[name]
            subject = ev.subject_filter(name) if cls.family in ("tenant", "adapter") else (
                "soctalk.lifecycle.*.*" if cls.family == "lifecycle" else "soctalk.audit.secrets.*")
            broker.publisher(subject, title=f"{service}:{name}:publish", schema=cls)
    spec = AsyncAPI(broker, title="SocTalk tenant control plane", version="1.1.0",
                    description="Commands, step results, lifecycle and audit streams of the SocTalk control plane.")
    return json.loads(spec.to_specification().to_json())


def _typed_doc_handler(cls: type[ev.Event]) -> Any:
    async def handler(body: cls) -> None:  # type: ignore[valid-type]  # never run: documentation only
        return None

    handler.__name__ = f"on_{cls.__name__}"
    return handler


def rendered() -> dict[Path, str]:
    files = {SCHEMAS / "events" / f"{n}.schema.json": json.dumps(s, indent=2, sort_keys=True) + "\n"
             for n, s in event_schemas().items()}
    files[SCHEMAS / "asyncapi.json"] = json.dumps(asyncapi_document(), indent=2, sort_keys=True) + "\n"
    return files


def stale() -> list[Path]:
    return [p for p, text in rendered().items() if not p.exists() or p.read_text() != text]


def write() -> list[Path]:
    changed = stale()
    for p, text in rendered().items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return changed


def main(argv: list[str]) -> int:
    if "--check" in argv:
        bad = stale()
        for p in bad:
            print(f"stale: {p.relative_to(REPO_ROOT)} (run `make schemas`)")
        return 1 if bad else 0
    for p in write():
        print(f"wrote {p.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
