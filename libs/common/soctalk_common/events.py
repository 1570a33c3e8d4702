"""The event catalogue: every message on the bus is one of these pydantic models.

Every message carries the envelope (``event_id``, ``event_type``, ``schema_version``, ``tenant_id``,
``correlation_id``, ``causation_id``, ``occurred_at``). Subjects carry the tenant. JSON Schemas for all of
them are generated into ``schemas/events/`` (``make schemas``) and a test fails when they are stale.

Rule: no field of any model here may hold secret material. The LLM key travels only as a reference or
sealed to the install's public key (``LlmKeySource``), and adapter tokens only in a message header.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

SCHEMA_VERSION = 1

E = TypeVar("E", bound="Event")

Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([a-z0-9-]{0,54}[a-z0-9])?$")]
VersionLabel = Annotated[str, StringConstraints(pattern=r"^v\d+$")]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    """Envelope shared by every message."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Which stream family the event belongs to; decides the subject.
    family: ClassVar[str] = "tenant"

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    event_type: str
    schema_version: Literal[1] = SCHEMA_VERSION
    tenant_id: uuid.UUID
    correlation_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    causation_id: uuid.UUID | None = None
    occurred_at: datetime = Field(default_factory=utcnow)

    def caused(self, cls: type[E], **fields: Any) -> E:
        """A new event caused by this one: same tenant and correlation, causation = this event."""
        fields.setdefault("tenant_id", self.tenant_id)
        return cls(correlation_id=self.correlation_id, causation_id=self.event_id, **fields)

    @property
    def subject(self) -> str:
        return subject_for(self)



# ---------------------------------------------------------------------------------------------------
# Shared value objects
# ---------------------------------------------------------------------------------------------------


class FieldError(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    path: str
    message: str


class SecretRef(BaseModel):
    """Where a secret lives — never what it is."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    backend: Literal["kubernetes", "vault"]
    namespace: str | None = None
    path: str | None = None
    name: str
    key: str
    version_label: VersionLabel = "v1"
    purpose: str | None = None


class KubeSecretKeyRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    namespace: str
    name: str
    key: str = "api_key"


class LlmKeySource(BaseModel):
    """Exactly one of: an existing Secret, a Vault path, or the key sealed to the install's public key."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    secret_ref: KubeSecretKeyRef | None = None
    vault_path: str | None = None
    sealed: Annotated[str, StringConstraints(pattern=r"^sealed:v1:[A-Za-z0-9_\-=]+$", max_length=8192)] | None = None


# ---------------------------------------------------------------------------------------------------
# Commands from upstream systems (consumed by the provisioner unless noted)
# ---------------------------------------------------------------------------------------------------


class TenantRequested(Event):
    event_type: Literal["TenantRequested"] = "TenantRequested"
    request_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    # Validated against schemas/tenant-config.schema.json by the provisioner so errors carry JSON paths.
    config: dict[str, Any]


class TenantUpgradeRequested(Event):
    event_type: Literal["TenantUpgradeRequested"] = "TenantUpgradeRequested"
    target_chart_version: Annotated[str, StringConstraints(pattern=r"^v?\d+\.\d+\.\d+$")]


class TenantDecommissionRequested(Event):
    event_type: Literal["TenantDecommissionRequested"] = "TenantDecommissionRequested"
    grace_period_s: Annotated[float, Field(ge=0)] | None = None
    force: bool = False
    reason: Annotated[str, StringConstraints(max_length=500)] = ""


class TenantDecommissionCancelRequested(Event):
    event_type: Literal["TenantDecommissionCancelRequested"] = "TenantDecommissionCancelRequested"


class TenantRetryRequested(Event):
    event_type: Literal["TenantRetryRequested"] = "TenantRetryRequested"


class TenantSuspendRequested(Event):
    event_type: Literal["TenantSuspendRequested"] = "TenantSuspendRequested"
    reason: Annotated[str, StringConstraints(max_length=500)] = ""


class TenantResumeRequested(Event):
    event_type: Literal["TenantResumeRequested"] = "TenantResumeRequested"


RotatableService = Literal["wazuh", "thehive", "cortex", "cassandra", "authd", "adapter", "llm"]


class SecretRotationRequested(Event):
    """Consumed by the secrets service."""

    event_type: Literal["SecretRotationRequested"] = "SecretRotationRequested"
    service: RotatableService
    overlap_s: Annotated[float, Field(ge=0)] | None = None
    new_llm_key: LlmKeySource | None = None


class ComponentHealth(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    status: Literal["ok", "degraded", "down", "unknown"]
    message: Annotated[str, StringConstraints(max_length=300)] = ""


class AdapterHeartbeat(Event):
    """From a tenant adapter on ``soctalk.adapter.<tenant_id>.heartbeat``; the token is in a header."""

    family: ClassVar[str] = "adapter"
    event_type: Literal["AdapterHeartbeat"] = "AdapterHeartbeat"
    adapter_version: Annotated[str, StringConstraints(max_length=64)]
    status: Literal["ok", "degraded", "down"]
    components: dict[Annotated[str, StringConstraints(max_length=64)], ComponentHealth] = Field(
        default_factory=dict, max_length=32
    )


# ---------------------------------------------------------------------------------------------------
# Provisioner results
# ---------------------------------------------------------------------------------------------------


class TenantAccepted(Event):
    event_type: Literal["TenantAccepted"] = "TenantAccepted"
    slug: Slug
    namespace: str
    mssp_id: uuid.UUID
    install_id: uuid.UUID
    chart_version: str
    profile: str
    secrets_backend: Literal["kubernetes", "vault"] = "kubernetes"
    llm_key: LlmKeySource | None = None
    # True when this acceptance resumes a tenant whose earlier steps are already done (retry).
    resume: bool = False


class TenantRejected(Event):
    event_type: Literal["TenantRejected"] = "TenantRejected"
    request_id: str | None = None
    reason: str
    errors: list[FieldError] = Field(default_factory=list)


class UpgradeApproved(Event):
    event_type: Literal["UpgradeApproved"] = "UpgradeApproved"
    from_version: str
    to_version: str
    verdict: Literal["supported", "deprecated"]
    notes: str = ""


class UpgradeRejected(Event):
    event_type: Literal["UpgradeRejected"] = "UpgradeRejected"
    to_version: str
    verdict: str
    reason: str


class SuspendApproved(Event):
    event_type: Literal["SuspendApproved"] = "SuspendApproved"


class ResumeApproved(Event):
    event_type: Literal["ResumeApproved"] = "ResumeApproved"


class DecommissionDue(Event):
    event_type: Literal["DecommissionDue"] = "DecommissionDue"
    slug: Slug


class PurgeDue(Event):
    event_type: Literal["PurgeDue"] = "PurgeDue"
    slug: Slug


class StepRetryDue(Event):
    """A durable retry timer fired: re-run ``step`` for the tenant."""

    event_type: Literal["StepRetryDue"] = "StepRetryDue"
    step: str
    attempt: int


# ---------------------------------------------------------------------------------------------------
# Secrets service results
# ---------------------------------------------------------------------------------------------------


class SecretsReady(Event):
    event_type: Literal["SecretsReady"] = "SecretsReady"
    namespace: str
    references: list[SecretRef]


class SecretRotated(Event):
    event_type: Literal["SecretRotated"] = "SecretRotated"
    service: RotatableService
    version_label: VersionLabel
    references: list[SecretRef]
    restarted: list[str] = Field(default_factory=list)


class SecretsFailed(Event):
    event_type: Literal["SecretsFailed"] = "SecretsFailed"
    step: str
    reason: str


class SecretsRemoved(Event):
    event_type: Literal["SecretsRemoved"] = "SecretsRemoved"
    references: list[SecretRef] = Field(default_factory=list)


# ---------------------------------------------------------------------------------------------------
# Helm-runner results
# ---------------------------------------------------------------------------------------------------

ChartOperation = Literal["install", "upgrade", "suspend", "resume", "rollback", "uninstall"]


class ChartApplied(Event):
    event_type: Literal["ChartApplied"] = "ChartApplied"
    operation: ChartOperation
    release: str
    namespace: str
    revision: int
    chart_version: str


class ChartFailed(Event):
    event_type: Literal["ChartFailed"] = "ChartFailed"
    operation: ChartOperation
    step: str
    reason: str
    rolled_back_to: int | None = None
    undone: bool = False


class ChartRemoved(Event):
    event_type: Literal["ChartRemoved"] = "ChartRemoved"
    release: str
    namespace: str


class DriftDetected(Event):
    event_type: Literal["DriftDetected"] = "DriftDetected"
    object: str
    field: str
    expected: str | None = None
    actual: str | None = None
    source: Literal["live", "release", "namespace"] = "live"


class NamespaceMissing(Event):
    event_type: Literal["NamespaceMissing"] = "NamespaceMissing"
    namespace: str


# ---------------------------------------------------------------------------------------------------
# Heartbeat service results
# ---------------------------------------------------------------------------------------------------


class TenantActivated(Event):
    event_type: Literal["TenantActivated"] = "TenantActivated"
    adapter_version: str


class TenantDegraded(Event):
    event_type: Literal["TenantDegraded"] = "TenantDegraded"
    reason: str
    last_health: dict[str, Any] = Field(default_factory=dict)


class TenantRecovered(Event):
    event_type: Literal["TenantRecovered"] = "TenantRecovered"


# ---------------------------------------------------------------------------------------------------
# Observation streams
# ---------------------------------------------------------------------------------------------------


class TenantLifecycleEvent(Event):
    """One row of ``tenant_lifecycle_events``, mirrored on ``soctalk.lifecycle.<tenant_id>.<type>``."""

    family: ClassVar[str] = "lifecycle"
    event_type: Literal["TenantLifecycleEvent"] = "TenantLifecycleEvent"
    type: str
    slug: str | None = None
    state_from: str | None = None
    state_to: str | None = None
    step: str | None = None
    message: str = ""
    details: dict[str, Any] = Field(default_factory=dict)


class SecretAuditEvent(Event):
    """Every secret write, rotation and deletion, references only, on ``soctalk.audit.secrets.<tenant_id>``."""

    family: ClassVar[str] = "audit"
    event_type: Literal["SecretAuditEvent"] = "SecretAuditEvent"
    action: Literal["write", "rotate", "retire", "delete", "read", "revoke"]
    actor: str
    references: list[SecretRef]


CATALOG: dict[str, type[Event]] = {
    cls.model_fields["event_type"].default: cls
    for cls in [
        TenantRequested, TenantUpgradeRequested, TenantDecommissionRequested, TenantDecommissionCancelRequested,
        TenantRetryRequested, TenantSuspendRequested, TenantResumeRequested, SecretRotationRequested,
        AdapterHeartbeat, TenantAccepted, TenantRejected, UpgradeApproved, UpgradeRejected, SuspendApproved,
        ResumeApproved, DecommissionDue, PurgeDue, StepRetryDue, SecretsReady, SecretRotated, SecretsFailed,
        SecretsRemoved, ChartApplied, ChartFailed, ChartRemoved, DriftDetected, NamespaceMissing,
        TenantActivated, TenantDegraded, TenantRecovered, TenantLifecycleEvent, SecretAuditEvent,
    ]
}


def subject_for(event: Event) -> str:
    if event.family == "adapter":
        return f"soctalk.adapter.{event.tenant_id}.heartbeat"
    if event.family == "lifecycle":
        assert isinstance(event, TenantLifecycleEvent)
        return f"soctalk.lifecycle.{event.tenant_id}.{event.type}"
    if event.family == "audit":
        return f"soctalk.audit.secrets.{event.tenant_id}"
    return f"soctalk.tenant.{event.tenant_id}.{event.event_type}"


def subject_filter(event_type: str) -> str:
    """The subject filter a consumer of ``event_type`` subscribes to (any tenant)."""
    cls = CATALOG[event_type]
    if cls.family == "adapter":
        return "soctalk.adapter.*.heartbeat"
    return f"soctalk.tenant.*.{event_type}"


class UnknownEventType(ValueError):
    pass


def parse_as(raw: bytes, expected: str) -> Event:
    """``parse_event(raw, expected=expected)`` for a consumer that knows the type: validated straight
    from the JSON bytes (no intermediate dict, ~2× cheaper). A body this rejects goes through
    ``parse_event``, so every error (unknown or mismatched type, field paths) is exactly the same."""
    from pydantic import ValidationError

    cls = CATALOG.get(expected)
    if cls is not None:
        try:
            return cls.model_validate_json(raw)
        except ValidationError:
            pass
    return parse_event(raw, expected=expected)


def parse_event(raw: bytes | str | dict[str, Any], *, expected: str | None = None) -> Event:
    """Parse one message. Raises ``UnknownEventType`` or pydantic ``ValidationError`` (with field paths)."""
    import json

    data = json.loads(raw) if isinstance(raw, bytes | str) else raw
    if not isinstance(data, dict):
        raise ValueError("message body is not a JSON object")
    event_type = data.get("event_type")
    if not isinstance(event_type, str) or event_type not in CATALOG:
        raise UnknownEventType(f"unknown event_type {event_type!r}")
    if expected is not None and event_type != expected:
        raise UnknownEventType(f"event_type {event_type!r} on a subject for {expected!r}")
    return CATALOG[event_type].model_validate(data)
