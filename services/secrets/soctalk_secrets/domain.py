"""Pure rules of the secrets service: what exists where, how it is generated, how tokens are judged.

No I/O here. Handlers combine these rules with the Kubernetes / Vault gateways and the unit of work.

* :data:`INVENTORY` is seed 000's "Secret inventory" for one tenant, as data: where each Secret lives,
  its keys, how each key is generated, who reads it and which workloads must restart when it rotates.
* :func:`plan_inventory` turns it into the references stored in Postgres (never the material).
* :func:`generate` / :func:`generate_tenant_material` produce material following seed 000's
  generation conventions exactly (``token_urlsafe(32)`` for passwords, ``token_urlsafe(48)`` for the
  enrollment secret and API tokens).
* Adapter tokens follow the API-key pattern of seed 002: ``sta_<prefix>_<secret>``, public prefix
  indexes the row, only an HMAC-SHA256 of the token is stored, verified in constant time; rotation
  keeps the old token valid for an overlap window; revocation is immediate.
  :func:`token_decision` is the single place that says accept or refuse, with a closed set of reasons.

Material returned by these functions must never be logged, put on the bus or stored in Postgres.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal

from soctalk_common.errors import PermanentError, ValidationFailed

Backend = Literal["kubernetes", "vault"]
Location = Literal["system", "tenant"]

SYSTEM_NAMESPACE = "soctalk-system"
TENANT_NAMESPACE_PREFIX = "tenant-"
INITIAL_VERSION_LABEL = "v1"
DEFAULT_VAULT_MOUNT = "secret"

_SLUG_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,54}[a-z0-9])?$")  # tenant-<slug> stays a 63-char label
_MSSP_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_VERSION_RE = re.compile(r"^v([1-9][0-9]{0,8})$")


# --------------------------------------------------------------------------------------------------
# Inventory
# --------------------------------------------------------------------------------------------------


class Gen(StrEnum):
    """How a key's value comes to exist."""

    URLSAFE_32 = "token_urlsafe_32"  # administrative passwords, Cassandra (seed 000)
    URLSAFE_48 = "token_urlsafe_48"  # enrollment shared secret, API tokens (seed 000)
    FIXED = "fixed"  # a well-known non-secret value (usernames)
    COPY = "copy"  # the same value as another Secret's key (SocTalk's copy of a data-plane credential)
    SUPPLIED = "supplied"  # provided by the MSSP (the LLM key), never generated
    ADAPTER_TOKEN = "adapter_token"  # sta_<prefix>_<token_urlsafe(48)>, see mint_adapter_token


@dataclass(frozen=True)
class KeySpec:
    """One key of a Secret. ``value`` is set for FIXED keys, ``source`` ``(purpose, key)`` for COPY."""

    key: str
    gen: Gen
    value: str | None = None
    source: tuple[str, str] | None = None


@dataclass(frozen=True)
class Workload:
    """A workload in the tenant namespace that reads a Secret at startup (restarted on rotation)."""

    kind: Literal["Deployment", "StatefulSet"]
    name: str


@dataclass(frozen=True)
class SecretSpec:
    """One Secret of seed 000's inventory, per tenant.

    ``purpose`` is the stable identifier used in Vault paths and rotation commands. ``name_template``
    has a ``{tenant_id}`` placeholder for Secrets in ``soctalk-system`` (named by tenant UUID so the
    name never changes with a slug). ``restart`` lists the workloads that only read the value at
    startup; readers that re-read on every use (the orchestrator, the adapter) need none.
    """

    purpose: str
    location: Location
    name_template: str
    keys: tuple[KeySpec, ...]
    read_by: tuple[str, ...]
    restart: tuple[Workload, ...] = ()

    def secret_name(self, tenant_id: uuid.UUID | str) -> str:
        return self.name_template.format(tenant_id=_tenant_uuid(tenant_id))

    def namespace(self, slug: str) -> str:
        """The Kubernetes namespace the Secret lives in (or that ESO syncs it into)."""
        return SYSTEM_NAMESPACE if self.location == "system" else tenant_namespace(slug)

    def key_names(self) -> tuple[str, ...]:
        return tuple(k.key for k in self.keys)


_WAZUH_MANAGER = Workload("StatefulSet", "wazuh-manager")
_WAZUH_INDEXER = Workload("StatefulSet", "wazuh-indexer")
_WAZUH_DASHBOARD = Workload("Deployment", "wazuh-dashboard")
_THEHIVE = Workload("Deployment", "thehive")
_CORTEX = Workload("Deployment", "cortex")
_CASSANDRA = Workload("StatefulSet", "cassandra")

# Usernames are fixed, well-known, non-secret values; only passwords/tokens are generated.
WAZUH_ADMIN_USER = "admin"
THEHIVE_ADMIN_USER = "admin@thehive.local"  # TheHive logins are e-mail shaped
CORTEX_ADMIN_USER = "admin"
CASSANDRA_USER = "thehive"

#: Ordered so every COPY source precedes the Secret that copies it (generation walks this order).
INVENTORY: tuple[SecretSpec, ...] = (
    # --- data-plane bootstrap secrets in tenant-<slug> (seed 000 "Data plane bootstrap secrets") ---
    SecretSpec(
        "wazuh-bootstrap",
        "tenant",
        "wazuh-bootstrap",
        (KeySpec("admin_username", Gen.FIXED, WAZUH_ADMIN_USER), KeySpec("admin_password", Gen.URLSAFE_32)),
        read_by=("wazuh-manager", "wazuh-indexer", "wazuh-dashboard"),
        restart=(_WAZUH_MANAGER, _WAZUH_INDEXER, _WAZUH_DASHBOARD),
    ),
    SecretSpec(
        "thehive-bootstrap",
        "tenant",
        "thehive-bootstrap",
        (
            KeySpec("admin_username", Gen.FIXED, THEHIVE_ADMIN_USER),
            KeySpec("admin_password", Gen.URLSAFE_32),
            KeySpec("api_token", Gen.URLSAFE_48),
        ),
        read_by=("thehive",),
        restart=(_THEHIVE,),
    ),
    SecretSpec(
        "cortex-bootstrap",
        "tenant",
        "cortex-bootstrap",
        (
            KeySpec("admin_username", Gen.FIXED, CORTEX_ADMIN_USER),
            KeySpec("admin_password", Gen.URLSAFE_32),
            KeySpec("api_key", Gen.URLSAFE_48),
        ),
        read_by=("cortex",),
        restart=(_CORTEX,),
    ),
    SecretSpec(
        "cassandra-creds",
        "tenant",
        "cassandra-creds",
        (KeySpec("username", Gen.FIXED, CASSANDRA_USER), KeySpec("password", Gen.URLSAFE_32)),
        read_by=("cassandra", "thehive"),
        restart=(_CASSANDRA, _THEHIVE),
    ),
    SecretSpec(
        "wazuh-authd-secret",
        "tenant",
        "wazuh-authd-secret",
        (KeySpec("authd_pass", Gen.URLSAFE_48),),
        read_by=("wazuh-manager",),
        # Rotating it forces every customer endpoint agent to re-enroll (seed 000 runbook).
        restart=(_WAZUH_MANAGER,),
    ),
    SecretSpec(
        "adapter-token",
        "tenant",
        "adapter-token",
        (KeySpec("token", Gen.ADAPTER_TOKEN),),
        read_by=("soctalk-adapter",),  # re-reads its token file: rotation needs no restart
    ),
    # --- per-tenant integration secrets in soctalk-system, read by the orchestrator per job ---------
    SecretSpec(
        "llm",
        "system",
        "tenant-{tenant_id}-llm",
        (KeySpec("api_key", Gen.SUPPLIED),),
        read_by=("soctalk-orchestrator",),
    ),
    SecretSpec(
        "wazuh",
        "system",
        "tenant-{tenant_id}-wazuh",
        # The orchestrator talks to the tenant's Wazuh API as the bootstrap admin: same values, so a
        # wazuh rotation regenerates wazuh-bootstrap and re-copies them here in one step.
        (
            KeySpec("api_username", Gen.COPY, source=("wazuh-bootstrap", "admin_username")),
            KeySpec("api_password", Gen.COPY, source=("wazuh-bootstrap", "admin_password")),
        ),
        read_by=("soctalk-orchestrator",),
    ),
    SecretSpec(
        "thehive",
        "system",
        "tenant-{tenant_id}-thehive",
        (KeySpec("api_token", Gen.COPY, source=("thehive-bootstrap", "api_token")),),
        read_by=("soctalk-orchestrator",),
    ),
    SecretSpec(
        "cortex",
        "system",
        "tenant-{tenant_id}-cortex",
        (KeySpec("api_key", Gen.COPY, source=("cortex-bootstrap", "api_key")),),
        read_by=("soctalk-orchestrator",),
    ),
)

BY_PURPOSE: Mapping[str, SecretSpec] = {s.purpose: s for s in INVENTORY}

#: ``soctalk secrets rotate --service <name>`` → the purposes regenerated together, in order.
ROTATION_SERVICES: Mapping[str, tuple[str, ...]] = {
    "wazuh": ("wazuh-bootstrap", "wazuh"),
    "thehive": ("thehive-bootstrap", "thehive"),
    "cortex": ("cortex-bootstrap", "cortex"),
    "cassandra": ("cassandra-creds",),
    "authd": ("wazuh-authd-secret",),
    "adapter": ("adapter-token",),
    "llm": ("llm",),
}


def spec(purpose: str) -> SecretSpec:
    """The inventory entry for ``purpose``; ``ValidationFailed`` if there is none."""
    try:
        return BY_PURPOSE[purpose]
    except KeyError:
        raise ValidationFailed([("purpose", f"unknown secret purpose {purpose!r}")]) from None


def tenant_namespace(slug: str) -> str:
    return TENANT_NAMESPACE_PREFIX + _slug(slug)


def workloads_to_restart(purposes: Iterable[str]) -> tuple[Workload, ...]:
    """Workloads to restart after the given Secrets changed: each once, in inventory order."""
    wanted = {spec(p).purpose for p in purposes}
    seen: dict[Workload, None] = {}
    for s in INVENTORY:
        if s.purpose in wanted:
            seen.update(dict.fromkeys(s.restart))
    return tuple(seen)


def rotation_purposes(service: str) -> tuple[str, ...]:
    """Purposes a ``--service`` rotation regenerates; ``ValidationFailed`` for an unknown service."""
    try:
        return ROTATION_SERVICES[service]
    except KeyError:
        known = ", ".join(sorted(ROTATION_SERVICES))
        raise ValidationFailed([("service", f"unknown service {service!r}; one of {known}")]) from None


# --------------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SecretRef:
    """What Postgres records about one key of one Secret (``tenant_secrets``) — never material.

    ``namespace``/``name`` is the Kubernetes Secret that holds the value (backend ``kubernetes``) or
    that External Secrets Operator syncs it into (backend ``vault``); ``path`` is the Vault KV path
    including the mount (``secret/mssp-abc/tenants/acme/llm``), set for the vault backend only.
    """

    backend: Backend
    namespace: str
    name: str
    key: str
    version_label: str
    purpose: str
    path: str | None = None

    @property
    def location(self) -> str:
        """Where the material lives: the Vault path for the vault backend, else the namespace."""
        return self.path if self.path is not None else self.namespace


def vault_kv_path(mssp_id: str, slug: str, purpose: str) -> str:
    """KV path relative to the mount: ``<mssp>/tenants/<slug>/<purpose>`` (seed 000's ESO layout)."""
    return f"{_mssp(mssp_id)}/tenants/{_slug(slug)}/{spec(purpose).purpose}"


def plan_inventory(
    tenant_id: uuid.UUID | str,
    slug: str,
    *,
    backend: Backend,
    mssp_id: str | None = None,
    version_label: str = INITIAL_VERSION_LABEL,
    mount: str = DEFAULT_VAULT_MOUNT,
    purposes: Iterable[str] | None = None,
) -> list[SecretRef]:
    """References for every key of every inventory Secret (or of ``purposes``), in inventory order.

    Deterministic: the same inputs give the same list, so a retried provisioning step records the
    same rows. ``mssp_id`` is required for the vault backend. Raises ``ValidationFailed`` naming the
    bad field for a malformed tenant id, slug, mssp id, version label or purpose.
    """
    tid = _tenant_uuid(tenant_id)
    _slug(slug)
    _parse_version(version_label)
    if backend not in ("kubernetes", "vault"):
        raise ValidationFailed([("backend", f"unknown backend {backend!r}")])
    if backend == "vault" and mssp_id is None:
        raise ValidationFailed([("mssp_id", "required for the vault backend")])
    wanted = None if purposes is None else {spec(p).purpose for p in purposes}
    refs: list[SecretRef] = []
    for s in INVENTORY:
        if wanted is not None and s.purpose not in wanted:
            continue
        path = None
        if backend == "vault":
            assert mssp_id is not None
            path = f"{mount}/{vault_kv_path(mssp_id, slug, s.purpose)}"
        refs.extend(
            SecretRef(backend, s.namespace(slug), s.secret_name(tid), k.key, version_label, s.purpose, path)
            for k in s.keys
        )
    return refs


def next_version_label(label: str) -> str:
    """``"v1"`` → ``"v2"``. ``ValidationFailed`` for anything that is not ``v<positive int>``."""
    return f"v{_parse_version(label) + 1}"


# --------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------


def generate(
    purpose: str,
    *,
    linked: Mapping[str, Mapping[str, str]] | None = None,
    supplied: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Fresh material for one Secret: ``{key: value}`` for every key of ``purpose``.

    COPY keys take their value from ``linked[source_purpose][source_key]`` (generate the source
    first); SUPPLIED keys (the LLM key) from ``supplied[key]``. A missing link or supplied value is a
    ``ValidationFailed`` naming the key, never showing a value. Each call draws new randomness.
    """
    s = spec(purpose)
    out: dict[str, str] = {}
    for k in s.keys:
        field = f"{s.purpose}.{k.key}"
        match k.gen:
            case Gen.URLSAFE_32:
                out[k.key] = secrets.token_urlsafe(32)
            case Gen.URLSAFE_48:
                out[k.key] = secrets.token_urlsafe(48)
            case Gen.FIXED:
                assert k.value is not None
                out[k.key] = k.value
            case Gen.ADAPTER_TOKEN:
                out[k.key] = mint_adapter_token()[0]
            case Gen.COPY:
                assert k.source is not None
                src_purpose, src_key = k.source
                value = (linked or {}).get(src_purpose, {}).get(src_key)
                if not value:
                    raise ValidationFailed(
                        [(field, f"copied from {src_purpose}.{src_key}; pass it as linked")]
                    )
                out[k.key] = value
            case Gen.SUPPLIED:
                value = (supplied or {}).get(k.key)
                if not value or not value.strip() or value != value.strip():
                    raise ValidationFailed(
                        [(field, "must be supplied, non-empty, without surrounding whitespace")]
                    )
                out[k.key] = value
    return out


def generate_tenant_material(*, llm_api_key: str | None = None) -> dict[str, dict[str, str]]:
    """Material for a whole tenant, ``{purpose: {key: value}}``, with copies consistent.

    The ``llm`` Secret is included only when ``llm_api_key`` is given (already unsealed).
    """
    material: dict[str, dict[str, str]] = {}
    for s in INVENTORY:
        if s.purpose == "llm" and llm_api_key is None:
            continue
        supplied = {"api_key": llm_api_key} if s.purpose == "llm" and llm_api_key is not None else None
        material[s.purpose] = generate(s.purpose, linked=material, supplied=supplied)
    return material


# --------------------------------------------------------------------------------------------------
# Adapter tokens
# --------------------------------------------------------------------------------------------------

ADAPTER_TOKEN_SCHEME = "sta"
PREFIX_LEN = 12
_PREFIX_ALPHABET = string.ascii_lowercase + string.digits
_SECRET_BYTES = 48  # token_urlsafe(48) → 64 URL-safe characters
_TOKEN_RE = re.compile(r"^sta_([a-z0-9]{12})_([A-Za-z0-9_-]{64})$")
_HASH_RE = re.compile(r"^[0-9a-f]{64}$")
_MAX_TOKEN_CHARS = 256  # refuse huge inputs before any regex or hashing work
_MIN_KEY_BYTES = 16
DEFAULT_ROTATION_OVERLAP = timedelta(minutes=15)  # ≫ kubelet Secret volume refresh (~1-2 min)

#: Tenant states in which an adapter token is honoured. An allow-list, so a new state refuses until
#: someone decides otherwise. Suspended / decommissioning / decommissioned / purged tenants are
#: switched off on purpose; ``failed`` tenants keep their adapter able to report while ops retry.
TOKEN_ACCEPTING_TENANT_STATES: frozenset[str] = frozenset(
    {"provisioning", "active", "degraded", "upgrading", "failed"}
)

RefuseReason = Literal[
    "malformed", "unknown_prefix", "bad_secret", "wrong_tenant", "revoked", "expired", "tenant_inactive"
]


def mint_adapter_token() -> tuple[str, str]:
    """A new adapter token and its public prefix: ``("sta_<prefix>_<secret>", prefix)``.

    The token is shown once (written only into the tenant's ``adapter-token`` Secret); Postgres keeps
    the prefix and :func:`hash_token` of the whole token.
    """
    prefix = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(PREFIX_LEN))
    return f"{ADAPTER_TOKEN_SCHEME}_{prefix}_{secrets.token_urlsafe(_SECRET_BYTES)}", prefix


def parse_token(presented: str) -> str:
    """The public prefix of a well-formed adapter token; ``ValidationFailed`` otherwise.

    The error never contains the presented value.
    """
    if isinstance(presented, str) and len(presented) <= _MAX_TOKEN_CHARS:
        m = _TOKEN_RE.fullmatch(presented)
        if m:
            return m.group(1)
    raise ValidationFailed([("token", "malformed adapter token")])


def hash_token(key: bytes, token: str) -> str:
    """HMAC-SHA256 of the whole token under the install's adapter signing key, lowercase hex.

    Keyed so a stolen table cannot be brute-forced offline without the key (which lives only in
    ``soctalk-adapter-signing-key``); the prefix is inside the MAC, binding it to the secret part.
    """
    if not isinstance(key, bytes) or len(key) < _MIN_KEY_BYTES:
        raise PermanentError(f"adapter signing key must be at least {_MIN_KEY_BYTES} bytes")
    return hmac.new(key, token.encode("utf-8"), hashlib.sha256).hexdigest()


def verify_token(key: bytes, presented: str, stored_hash: str) -> bool:
    """True when ``presented`` hashes to ``stored_hash``; constant-time compare, never raises on input."""
    if not isinstance(presented, str) or len(presented) > _MAX_TOKEN_CHARS:
        return False
    if not isinstance(stored_hash, str) or not _HASH_RE.fullmatch(stored_hash):
        return False
    return hmac.compare_digest(hash_token(key, presented).encode(), stored_hash.encode())


@dataclass(frozen=True, slots=True)
class AdapterTokenRecord:
    """A stored adapter token: public prefix, keyed hash, owner and lifetime. Holds no material.

    Slotted (the heartbeat service caches one per tenant). What :func:`token_decision` would otherwise
    work out on every message is worked out once here: whether ``token_hash`` is well-formed, and the
    owner's canonical id (``None`` if ``tenant_id`` is not a UUID: every message is then refused as
    ``wrong_tenant``, as before)."""

    prefix: str
    token_hash: str
    tenant_id: str
    created_at: datetime
    version_label: str = INITIAL_VERSION_LABEL
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    hash_ok: bool = field(init=False, repr=False, compare=False)
    owner: str | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ok = isinstance(self.token_hash, str) and _HASH_RE.fullmatch(self.token_hash) is not None
        object.__setattr__(self, "hash_ok", ok)
        try:
            owner: str | None = _tenant_uuid(self.tenant_id)
        except ValidationFailed:
            owner = None
        object.__setattr__(self, "owner", owner)


@dataclass(frozen=True)
class Accept:
    tenant_id: str
    prefix: str


@dataclass(frozen=True)
class Refuse:
    """Why a token was refused. For audit and metrics only: clients get one generic 401."""

    reason: RefuseReason


def new_token_record(
    tenant_id: uuid.UUID | str, key: bytes, now: datetime, *, version_label: str = INITIAL_VERSION_LABEL
) -> tuple[str, AdapterTokenRecord]:
    """Mint a token for a tenant: ``(token, record)``. Store the record, write the token to the Secret.

    On rotation pass ``next_version_label`` of the current record, so the record and the
    ``adapter-token`` Secret reference carry the same label.
    """
    _aware(now)
    _parse_version(version_label)
    token, prefix = mint_adapter_token()
    record = AdapterTokenRecord(prefix, hash_token(key, token), _tenant_uuid(tenant_id), now, version_label)
    return token, record


def retire_for_rotation(
    old: AdapterTokenRecord, now: datetime, *, overlap: timedelta = DEFAULT_ROTATION_OVERLAP
) -> AdapterTokenRecord:
    """The old record after a rotation: valid until ``now + overlap`` (never extended), then expired.

    Inside the window both the old and the new token are accepted, so the adapter can pick up the new
    file without a failed heartbeat.
    """
    _aware(now)
    if overlap < timedelta(0):
        raise ValidationFailed([("overlap", "must not be negative")])
    until = now + overlap
    if old.expires_at is not None and old.expires_at < until:
        until = old.expires_at
    return replace(old, expires_at=until)


def revoke(record: AdapterTokenRecord, now: datetime) -> AdapterTokenRecord:
    """Revoked from ``now`` on (idempotent: an earlier revocation time is kept)."""
    _aware(now)
    if record.revoked_at is not None and record.revoked_at <= now:
        return record
    return replace(record, revoked_at=now)


_KEYED: dict[bytes, hmac.HMAC] = {}  # signing key → HMAC-SHA256 state with the key absorbed (few keys)


def _keyed_hex(key: bytes, token: str) -> str:
    """``hash_token(key, token)``, from a copy of a per-key HMAC state (the key's pads are not
    recomputed per message). Same checks on the key, same digest."""
    base = _KEYED.get(key) if isinstance(key, bytes) else None
    if base is None:
        if not isinstance(key, bytes) or len(key) < _MIN_KEY_BYTES:
            raise PermanentError(f"adapter signing key must be at least {_MIN_KEY_BYTES} bytes")
        if len(_KEYED) >= 4:  # a key rotation leaves one stale entry; never grows beyond a few
            _KEYED.clear()
        base = _KEYED[key] = hmac.new(key, digestmod=hashlib.sha256)
    h = base.copy()
    h.update(token.encode("utf-8"))
    return h.hexdigest()


def token_decision(
    record: AdapterTokenRecord | None,
    subject_tenant_id: uuid.UUID | str,
    now: datetime,
    *,
    presented: str,
    key: bytes,
    tenant_state: str | None,
) -> Accept | Refuse:
    """Accept or refuse a presented adapter token for a message about ``subject_tenant_id``.

    ``record`` is the row found by the presented token's prefix (``None`` if none);
    ``tenant_state`` is the owning tenant's current state (``None`` if the tenant is gone). Checks run
    in a fixed order and the first failure is the reason: malformed → unknown_prefix → bad_secret →
    wrong_tenant → revoked → expired → tenant_inactive. The secret is checked before anything about
    the record is revealed, so a guessed prefix learns nothing.
    """
    _aware(now)
    try:
        prefix = parse_token(presented)
    except ValidationFailed:
        return Refuse("malformed")
    if record is None or not hmac.compare_digest(record.prefix, prefix):
        return Refuse("unknown_prefix")
    # verify_token's check, with what does not depend on the message worked out once: the stored
    # hash's shape (record.hash_ok) and the keyed HMAC state (_keyed_hex). Same HMAC-SHA256 hex,
    # same constant-time compare.
    if not (record.hash_ok and hmac.compare_digest(_keyed_hex(key, presented), record.token_hash)):
        return Refuse("bad_secret")
    if subject_tenant_id is not record.owner and subject_tenant_id != record.owner:
        try:  # not literally the owner's canonical id: canonicalise, then compare
            subject = _tenant_uuid(subject_tenant_id)
        except ValidationFailed:
            return Refuse("wrong_tenant")
        if record.owner is None or record.owner != subject:
            return Refuse("wrong_tenant")
    else:  # the owner's canonical id itself (what every heartbeat subject carries)
        subject = str(subject_tenant_id)
    if record.revoked_at is not None and record.revoked_at <= now:
        return Refuse("revoked")
    if record.expires_at is not None and now >= record.expires_at:
        return Refuse("expired")
    if tenant_state not in TOKEN_ACCEPTING_TENANT_STATES:
        return Refuse("tenant_inactive")
    return Accept(tenant_id=subject, prefix=prefix)


# --------------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------------


_CANONICAL_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _tenant_uuid(value: uuid.UUID | str) -> str:
    if isinstance(value, str) and _CANONICAL_UUID_RE.fullmatch(value):
        return value  # already what str(UUID(value)) gives (the heartbeat path checks two per message)
    try:
        return str(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))
    except ValueError:
        raise ValidationFailed([("tenant_id", "not a UUID")]) from None


def _slug(value: str) -> str:
    if not isinstance(value, str) or not _SLUG_RE.fullmatch(value):
        raise ValidationFailed([("slug", "must be a DNS label of at most 56 characters")])
    return value


def _mssp(value: str) -> str:
    if not isinstance(value, str) or not _MSSP_RE.fullmatch(value):
        raise ValidationFailed([("mssp_id", "must be a DNS label (lowercase letters, digits, '-')")])
    return value


def _parse_version(label: str) -> int:
    m = _VERSION_RE.fullmatch(label) if isinstance(label, str) else None
    if not m:
        raise ValidationFailed([("version_label", "must be v<positive integer>")])
    return int(m.group(1))


def _aware(now: datetime) -> None:
    # Naive datetimes would compare wrongly (or raise) against the UTC timestamps stored in Postgres.
    if now.tzinfo is None:
        raise ValidationFailed([("now", "must be timezone-aware")])


# --------------------------------------------------------------------------------------------------
# Kubernetes metadata (seed 001 ``namespaceLabels``) and External Secrets objects
# --------------------------------------------------------------------------------------------------

MANAGED_BY = "soctalk"
TENANT_ID_LABEL = "soctalk.io/tenant-id"
PURPOSE_LABEL = "soctalk.io/purpose"
VERSION_LABEL_ANNOTATION = "soctalk.io/version-label"  # same key as the Kubernetes gateway's
#: Reserved key inside a Vault KV secret holding the version label; never synced into a Secret.
VAULT_VERSION_KEY = "_soctalk_version_label"
ESO_GROUP = "external-secrets.io"
ESO_API_VERSIONS: tuple[str, ...] = (f"{ESO_GROUP}/v1", f"{ESO_GROUP}/v1beta1")  # preferred first
ESO_REFRESH_INTERVAL = "1h"


def namespace_labels(
    *, tenant_id: uuid.UUID | str, mssp_id: uuid.UUID | str, install_id: uuid.UUID | str
) -> dict[str, str]:
    """Labels of ``tenant-<slug>`` exactly as seed 001 ``namespaceLabels`` lists them."""
    return {
        "tenant": "true",
        "managed-by": MANAGED_BY,
        "mssp-id": str(mssp_id),
        "install-id": str(install_id),
        "tenant-id": _tenant_uuid(tenant_id),
    }


def secret_labels(tenant_id: uuid.UUID | str, purpose: str) -> dict[str, str]:
    """Labels on every Secret / ExternalSecret this service writes: cleanup finds them by tenant."""
    return {
        "managed-by": MANAGED_BY,
        TENANT_ID_LABEL: _tenant_uuid(tenant_id),
        PURPOSE_LABEL: spec(purpose).purpose,
    }


def external_secret(
    *,
    api_version: str,
    namespace: str,
    name: str,
    store: str,
    remote_key: str,
    properties: Mapping[str, str],
    version_label: str,
    labels: Mapping[str, str],
) -> dict[str, object]:
    """An ``ExternalSecret`` that makes ESO sync Vault KV ``remote_key`` into Secret ``namespace/name``.

    Each Secret key maps explicitly to one property of the Vault secret (``properties``: secret key →
    Vault property), so the reserved version-label property is never synced. The synced Secret carries
    the version label as the ``soctalk.io/version-label`` annotation, like a Secret written directly;
    a new label is a spec change, which ESO reconciles at once (no refresh interval to wait for).
    """
    _parse_version(version_label)
    if api_version not in ESO_API_VERSIONS:
        raise ValidationFailed([("api_version", f"unsupported External Secrets API {api_version!r}")])
    meta_labels = dict(labels)
    return {
        "apiVersion": api_version,
        "kind": "ExternalSecret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": meta_labels,
            "annotations": {VERSION_LABEL_ANNOTATION: version_label},
        },
        "spec": {
            "refreshInterval": ESO_REFRESH_INTERVAL,
            "secretStoreRef": {"kind": "ClusterSecretStore", "name": store},
            "target": {
                "name": name,
                "creationPolicy": "Owner",
                "deletionPolicy": "Delete",
                "template": {
                    "type": "Opaque",
                    "metadata": {
                        "labels": meta_labels,
                        "annotations": {VERSION_LABEL_ANNOTATION: version_label},
                    },
                },
            },
            "data": [
                {"secretKey": key, "remoteRef": {"key": remote_key, "property": prop}}
                for key, prop in properties.items()
            ],
        },
    }


# --------------------------------------------------------------------------------------------------
# Where a tenant's LLM key comes from
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LlmSealed:
    """The key sealed to the install's public key: opened here and written to ``tenant-<id>-llm``."""

    envelope: str = field(repr=False)


@dataclass(frozen=True)
class LlmSecretRef:
    """An existing Secret in the install namespace, *referenced* (not copied), so the MSSP's own
    rotation of that Secret reaches the orchestrator without SocTalk in the loop."""

    namespace: str
    name: str
    key: str


@dataclass(frozen=True)
class LlmVaultPath:
    """A Vault KV v2 secret (``path`` relative to ``mount``), referenced: ESO syncs its ``api_key``
    property into ``tenant-<id>-llm``; this service never reads it."""

    mount: str
    path: str
    remote_property: str = "api_key"

    @property
    def full_path(self) -> str:
        return f"{self.mount}/{self.path}"


LlmSource = LlmSealed | LlmSecretRef | LlmVaultPath

_K8S_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")
_K8S_KEY_RE = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")
_VAULT_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
#: Secrets in the install namespace a tenant's LLM reference may never point at: the install's own
#: keys (``soctalk-*``) and every tenant's managed Secrets (``tenant-<id>-*``).
_RESERVED_SECRET_PREFIXES = ("soctalk-", TENANT_NAMESPACE_PREFIX)


def llm_source(
    *,
    sealed: str | None,
    secret_ref: tuple[str, str, str] | None,
    vault_path: str | None,
    system_namespace: str,
    mount: str,
    mssp_id: str,
    slug: str,
) -> LlmSource:
    """Classify and check an ``LlmKeySource`` (exactly one of its three forms).

    Refused (``ValidationFailed`` naming the field, never a value): a Secret outside the install
    namespace or one of SocTalk's own / another tenant's Secrets (a tenant must not borrow a key it
    was not given); a Vault path on another mount than the ClusterSecretStore's, or inside another
    tenant's managed tree ``<mssp>/tenants/<other>/``.
    """
    given = [x is not None for x in (sealed, secret_ref, vault_path)]
    if sum(given) != 1:
        raise ValidationFailed([("llm_key", "exactly one of sealed, secret_ref, vault_path")])
    if sealed is not None:
        return LlmSealed(sealed)
    if secret_ref is not None:
        namespace, name, key = secret_ref
        if namespace != system_namespace:
            raise ValidationFailed(
                [("llm_key.secret_ref.namespace", f"must be {system_namespace} (the install namespace)")]
            )
        if not _K8S_NAME_RE.fullmatch(name) or name.startswith(_RESERVED_SECRET_PREFIXES):
            raise ValidationFailed(
                [("llm_key.secret_ref.name", "must name an MSSP-provided Secret, not soctalk-* or tenant-*")]
            )
        if not _K8S_KEY_RE.fullmatch(key):
            raise ValidationFailed([("llm_key.secret_ref.key", "not a valid Secret key")])
        return LlmSecretRef(namespace, name, key)
    assert vault_path is not None
    head, _, rest = vault_path.partition("/")
    segments = rest.split("/") if rest else []
    if head != mount or not segments or not all(
        s not in (".", "..") and _VAULT_SEGMENT_RE.fullmatch(s) for s in segments
    ):
        raise ValidationFailed([("llm_key.vault_path", f"must be a KV path under the {mount}/ mount")])
    tree = f"{_mssp(mssp_id)}/tenants/"
    if rest.startswith(tree) and not rest.startswith(f"{tree}{_slug(slug)}/"):
        raise ValidationFailed([("llm_key.vault_path", "points into another tenant's secrets")])
    return LlmVaultPath(mount, rest)


# --------------------------------------------------------------------------------------------------
# Rotation bookkeeping
# --------------------------------------------------------------------------------------------------

#: Purposes whose old version stays valid for an overlap window after a rotation (the adapter
#: re-reads its token file; heartbeats must not fail meanwhile). Everything else retires at once.
OVERLAPPED_PURPOSES: frozenset[str] = frozenset({"adapter-token"})


def latest_version_label(labels: Iterable[str]) -> str | None:
    """The highest ``v<n>`` of ``labels`` (numerically: v10 > v9), ``None`` if there are none."""
    best: tuple[int, str] | None = None
    for label in labels:
        n = _parse_version(label)
        if best is None or n > best[0]:
            best = (n, label)
    return None if best is None else best[1]


def copies_of(purpose: str) -> tuple[str, ...]:
    """Purposes holding COPY keys of ``purpose`` (``wazuh-bootstrap`` → ``("wazuh",)``)."""
    source = spec(purpose).purpose
    return tuple(
        s.purpose
        for s in INVENTORY
        if any(k.gen == Gen.COPY and k.source and k.source[0] == source for k in s.keys)
    )


def expected_copies(purpose: str, linked: Mapping[str, Mapping[str, str]]) -> dict[str, str] | None:
    """For a purpose made only of COPY/FIXED keys, the values it must hold given its sources; else None."""
    s = spec(purpose)
    if not any(k.gen == Gen.COPY for k in s.keys):
        return None
    return generate(purpose, linked=linked)
