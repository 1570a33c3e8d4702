"""The secrets service's ports and settings, built once by ``bootstrap`` and passed to every handler."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from soctalk_common.clock import Clock, SystemClock
from soctalk_common.errors import PermanentError
from soctalk_common.gateways.vault import VaultGateway

from soctalk_secrets.domain import DEFAULT_ROTATION_OVERLAP, DEFAULT_VAULT_MOUNT, SYSTEM_NAMESPACE
from soctalk_secrets.stores import ExternalSecrets, KubePort, Placement, SecretStore

ACTOR = "soctalk-secrets"


@dataclass
class Deps:
    kube: KubePort
    stores: Mapping[str, SecretStore]
    eso: ExternalSecrets
    sealing_key: str = field(repr=False)  # the install's X25519 private key (opens sealed LLM keys)
    token_key: bytes = field(repr=False)  # HMAC key of adapter token hashes
    clock: Clock = field(default_factory=SystemClock)
    vault: VaultGateway | None = None
    vault_admin: VaultGateway | None = None  # writes ACL policies; None = policies managed elsewhere
    system_namespace: str = SYSTEM_NAMESPACE
    vault_mount: str = DEFAULT_VAULT_MOUNT
    default_mssp_id: str = ""  # the install's MSSP, for a purge whose tenant row is already gone
    token_overlap_s: float = DEFAULT_ROTATION_OVERLAP.total_seconds()
    lease_ttl_s: float = 120.0
    max_deliver: int = 8

    def store(self, backend: str) -> SecretStore:
        try:
            return self.stores[backend]
        except KeyError:
            raise PermanentError(f"secrets backend {backend!r} is not configured in this install "
                                 "(the vault backend needs VAULT_ADDR and VAULT_TOKEN)") from None

    def placement(self, tenant_id: object, slug: str, mssp_id: object) -> Placement:
        return Placement(str(tenant_id), slug, str(mssp_id), self.system_namespace, self.vault_mount)
