"""Settings for every process, from the environment (pydantic-settings).

The three server addresses also accept their conventional unprefixed names (``NATS_URL``,
``DATABASE_URL``, ``VAULT_ADDR``/``VAULT_TOKEN``) so external servers are one export away.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[3]

# A fixed namespace for deriving stable UUIDs (tenant ids from request ids) across replicas.
SOCTALK_NS = uuid.UUID("6f1c1b0e-2f7a-4c55-9a61-5d0b8f1f2a10")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SOCTALK_", extra="ignore")

    nats_url: str = Field("nats://127.0.0.1:4222", validation_alias=AliasChoices("SOCTALK_NATS_URL", "NATS_URL"))
    database_url: str = Field(
        "postgresql+asyncpg://soctalk@127.0.0.1:5432/soctalk",
        validation_alias=AliasChoices("SOCTALK_DATABASE_URL", "DATABASE_URL"),
    )
    vault_addr: str | None = Field(None, validation_alias=AliasChoices("SOCTALK_VAULT_ADDR", "VAULT_ADDR"))
    vault_token: str | None = Field(None, validation_alias=AliasChoices("SOCTALK_VAULT_TOKEN", "VAULT_TOKEN"))
    kubeconfig: str | None = Field(None, validation_alias=AliasChoices("SOCTALK_KUBECONFIG", "KUBECONFIG"))

    # Install identity (the soctalk-system chart's `install` block).
    mssp_id: uuid.UUID = uuid.UUID("11111111-1111-4111-8111-111111111111")
    install_id: uuid.UUID = uuid.UUID("22222222-2222-4222-8222-222222222222")
    system_namespace: str = "soctalk-system"
    system_version: str = "v1.1.0"
    default_tenant_chart_version: str = "v1.1.0"
    default_profile: str = "pilot-prod"
    charts_dir: Path = REPO_ROOT / "charts"
    compatibility_file: Path = REPO_ROOT / "compatibility.yaml"

    # Bus behaviour (see docs/operations.md "Delivery guarantees" for how these relate).
    ack_wait_s: float = 30.0
    max_deliver: int = 8
    duplicate_window_s: float = 120.0
    retry_base_delay_s: float = 0.5
    retry_max_delay_s: float = 30.0

    # Timers
    timer_poll_s: float = 1.0
    decommission_grace_s: float | None = None  # None = the profile's default
    retention_s: float | None = None
    decommission_rate_limit_per_hour: int = 10

    # Helm / readiness
    readiness_timeout_s: float | None = None  # None = the profile's default
    helm_timeout_s: float = 300.0
    lease_ttl_s: float = 120.0

    # Heartbeat
    heartbeat_interval_s: float = 30.0
    heartbeat_missed_intervals: int = 3
    heartbeat_flush_s: float = 1.0
    # tenants.last_heartbeat_at (API, CLI) is refreshed at most this often per tenant (state changes
    # always write it); heartbeat_state.last_seen, which liveness reads, follows every heartbeat.
    heartbeat_tenant_touch_s: float = 30.0

    # Secrets
    secrets_backend: str = "kubernetes"  # kubernetes | vault
    token_hash_key: str | None = None  # HMAC key for adapter token hashes; from soctalk-adapter-signing-key
    token_overlap_s: float = 3600.0
    vault_mount: str = "secret"  # KV v2 mount holding tenant secrets (the ClusterSecretStore's path)
    vault_secret_store: str = "soctalk-vault"  # ClusterSecretStore every ExternalSecret references
    vault_admin_token: str | None = None  # when set, the secrets service writes the seed-004 policies
    eso_sync_timeout_s: float = 60.0  # a vault-backend rotation waits this long for ESO to sync

    # HTTP API (seed 001 `auth` block)
    auth_mode: str = "internal"  # internal | proxy
    jwt_signing_key: str | None = None  # internal mode; from the soctalk-jwt-signing-key Secret
    auth_trusted_header_user: str = "X-Forwarded-User"
    auth_trusted_header_email: str = "X-Forwarded-Email"
    auth_trusted_header_groups: str = "X-Forwarded-Groups"
    auth_trusted_proxy_cidrs: str = "127.0.0.1/32"  # comma-separated, as the system chart renders it

    log_level: str = "INFO"
    log_json: bool = True
    http_port: int = 0  # /healthz /readyz /metrics (and the API / heartbeat endpoints); 0 = any free port

    @property
    def trusted_proxy_cidrs(self) -> list[str]:
        return [c.strip() for c in self.auth_trusted_proxy_cidrs.split(",") if c.strip()]


PROFILES: dict[str, dict[str, float]] = {
    # Seed 001: readiness timeout 15 min pilot-prod, 30 min small-dev.
    "pilot-prod": {"readiness_timeout_s": 15 * 60, "decommission_grace_s": 7 * 86400, "retention_s": 90 * 86400},
    "small-dev": {"readiness_timeout_s": 30 * 60, "decommission_grace_s": 3600, "retention_s": 7 * 86400},
}


def profile_value(settings: Settings, profile: str, key: str) -> float:
    override = getattr(settings, key)
    if override is not None:
        return float(override)
    return PROFILES.get(profile, PROFILES["pilot-prod"])[key]
