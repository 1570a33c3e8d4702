"""The secrets service's composition root: keys, stores, routes and the retire timer loop.

``bootstrap`` is async because the service's first duty on start is I/O: make sure the install's
sealing keypair and adapter signing key exist (idempotent across replicas) and, when a Vault admin
token is configured, that the seed-004 policies are written. Nothing connects at import time.
"""

from __future__ import annotations

from soctalk_common.bus import Bus
from soctalk_common.clock import Clock, SystemClock
from soctalk_common.db import models as m
from soctalk_common.gateways.vault import VaultGateway, vault_policies
from soctalk_common.runtime import ServiceRuntime
from soctalk_common.service import PeriodicTask, ServiceProcess
from soctalk_common.settings import Settings
from soctalk_common.uow import UnitOfWorkFactory
from sqlalchemy import select

from soctalk_secrets import handlers, keys
from soctalk_secrets.deps import Deps
from soctalk_secrets.stores import ExternalSecrets, KubePort, KubernetesStore, SecretStore, VaultStore

SERVICE = "secrets"


async def bootstrap(settings: Settings, *, uow: UnitOfWorkFactory, bus: Bus, kube: KubePort,
                    vault: VaultGateway | None = None, clock: Clock | None = None,
                    vault_admin: VaultGateway | None = None) -> ServiceProcess:
    """Build the service. ``vault`` enables the vault backend; ``vault_admin`` (default: one built
    from ``settings.vault_admin_token``) writes ACL policies — without it they are managed elsewhere."""
    clock = clock or SystemClock()
    ns = settings.system_namespace
    sealing_key = await keys.ensure_sealing_key(kube, uow, ns)
    token_key = await keys.adapter_signing_key(settings.token_hash_key, kube, ns)
    if vault_admin is None and settings.vault_admin_token and settings.vault_addr:
        vault_admin = VaultGateway(settings.vault_addr, settings.vault_admin_token,
                                   mount=settings.vault_mount)
    if vault_admin is not None:
        await write_policies(vault_admin, uow, str(settings.mssp_id), settings.vault_mount)
    eso = ExternalSecrets(kube, store=settings.vault_secret_store)
    stores: dict[str, SecretStore] = {"kubernetes": KubernetesStore(kube)}
    if vault is not None:
        stores["vault"] = VaultStore(vault, eso, sync_timeout_s=settings.eso_sync_timeout_s)
    deps = Deps(kube=kube, stores=stores, eso=eso, sealing_key=sealing_key, token_key=token_key, clock=clock,
                vault=vault, vault_admin=vault_admin, system_namespace=ns, vault_mount=settings.vault_mount,
                default_mssp_id=str(settings.mssp_id), token_overlap_s=settings.token_overlap_s,
                lease_ttl_s=settings.lease_ttl_s, max_deliver=settings.max_deliver)
    runtime = ServiceRuntime(SERVICE, bus=bus, uow=uow, deps=deps, max_deliver=settings.max_deliver,
                             ack_wait_s=settings.ack_wait_s, retry_base_s=settings.retry_base_delay_s,
                             retry_cap_s=settings.retry_max_delay_s)
    for event_type, handler in handlers.ROUTES.items():
        runtime.route(event_type, handler)
    retire = PeriodicTask("secrets-retire", lambda: handlers.retire_due(uow, clock), settings.timer_poll_s)
    return ServiceProcess(SERVICE, runtime, settings.nats_url, tasks=[retire], http_port=settings.http_port)


async def write_policies(admin: VaultGateway, uow: UnitOfWorkFactory, mssp_id: str, mount: str) -> list[str]:
    """Seed-004 policies: the install-wide ones plus one ESO reader per vault-backed tenant."""
    async with uow.sessionmaker() as s:
        slugs = (await s.execute(select(m.Tenant.slug).where(m.Tenant.secrets_backend == "vault",
                                                             m.Tenant.deleted_at.is_(None)))).scalars().all()
    docs = vault_policies(mssp_id, slugs, mount=mount)
    for name, hcl in docs.items():
        await admin.policy_write(name, hcl)
    return sorted(docs)
