"""Where tenant secret material lives: the ``SecretStore`` port and its two implementations.

* :class:`KubernetesStore` (default backend) — the material *is* the Kubernetes Secret, written by
  this service where seed 000 places it; the version label is the ``soctalk.io/version-label``
  annotation.
* :class:`VaultStore` — the material lives in Vault / OpenBao KV v2 at
  ``<mount>/<mssp>/tenants/<slug>/<purpose>`` (the label in a reserved property), and an
  ``ExternalSecret`` referencing the ClusterSecretStore makes External Secrets Operator sync it into
  the same Secret name and namespace the Kubernetes backend would use. Charts cannot tell the two apart.

What callers can rely on (both stores):

* ``ensure`` is idempotent by postcondition: if the secret exists it is read back and returned
  (``created=False``) and ``make`` is never called, so a retry never regenerates; otherwise ``make()``
  is written at ``label`` (``v1``, or the next label when a lost secret is recreated). A
  concurrent writer that wins the race is detected (409 / check-and-set) and its value is read back.
  With ``create_first`` (the caller expects the secret to be absent: nothing was ever recorded for
  the tenant) the Kubernetes store skips the read: ``make()`` is written right away and a 409 means
  it existed after all — it is read back and returned exactly as above, and the freshly made
  material, never written anywhere, is dropped. One API call per Secret instead of two on a first
  provisioning; the same two on a retry.
* ``write`` replaces the material with a new version label (creating the secret if it is missing).
* ``verify`` reads back and raises ``TemporaryError`` until the stored label and values are the
  expected ones (for Vault, until ESO has synced the labelled version into the cluster).
* Errors are the gateways' typed errors; no message carries a value.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from soctalk_common.errors import Conflict, NotFound, PermanentError, TemporaryError
from soctalk_common.gateways.kube import SecretRecord
from soctalk_common.gateways.vault import KvSecret, VaultGateway

from soctalk_secrets.domain import (
    DEFAULT_VAULT_MOUNT,
    ESO_API_VERSIONS,
    INITIAL_VERSION_LABEL,
    SYSTEM_NAMESPACE,
    VAULT_VERSION_KEY,
    VERSION_LABEL_ANNOTATION,
    Backend,
    SecretRef,
    external_secret,
    plan_inventory,
    secret_labels,
    spec,
    tenant_namespace,
    vault_kv_path,
)


class KubePort(Protocol):
    """The part of ``KubeGateway`` this service uses (tests wrap the real gateway to inject faults)."""

    async def ensure_namespace(self, name: str, labels: dict[str, str]) -> None: ...
    async def namespace_exists(self, name: str) -> bool: ...
    async def create_secret(self, namespace: str, name: str, data: dict[str, str], *,
                            labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
                            version_label: str = "v1") -> None: ...
    async def read_secret(self, namespace: str, name: str) -> SecretRecord | None: ...
    async def patch_secret(self, namespace: str, name: str, data: dict[str, str], *, version_label: str,
                           annotations: dict[str, str] | None = None) -> None: ...
    async def delete_secret(self, namespace: str, name: str) -> None: ...
    async def list_secrets(self, namespace: str, label_selector: str | None = None) -> list[SecretRecord]: ...
    async def apply(self, obj: dict, *, field_manager: str = "soctalk", force: bool = True) -> dict: ...
    async def get(self, api_version: str, kind: str, name: str,
                  namespace: str | None = None) -> dict | None: ...
    async def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> None: ...
    async def restart_workloads(self, namespace: str, names: list[tuple[str, str]]) -> None: ...


@dataclass(frozen=True)
class Placement:
    """One tenant's coordinates: everything needed to name its Secrets, namespaces and Vault paths."""

    tenant_id: str
    slug: str
    mssp_id: str
    system_namespace: str = SYSTEM_NAMESPACE
    mount: str = DEFAULT_VAULT_MOUNT

    @property
    def tenant_namespace(self) -> str:
        return tenant_namespace(self.slug)

    def namespace(self, purpose: str) -> str:
        return self.system_namespace if spec(purpose).location == "system" else self.tenant_namespace

    def name(self, purpose: str) -> str:
        return spec(purpose).secret_name(self.tenant_id)

    def vault_path(self, purpose: str) -> str:
        """KV path relative to the mount (what ESO's ``remoteRef.key`` and the gateway take)."""
        return vault_kv_path(self.mssp_id, self.slug, purpose)

    @property
    def vault_tree(self) -> str:
        return f"{self.mssp_id}/tenants/{self.slug}"

    def references(self, backend: Backend, purpose: str, version_label: str) -> list[SecretRef]:
        refs = plan_inventory(self.tenant_id, self.slug, backend=backend, mssp_id=self.mssp_id,
                              version_label=version_label, mount=self.mount, purposes=[purpose])
        return [replace(r, namespace=self.namespace(purpose)) for r in refs]


@dataclass(frozen=True)
class Stored:
    """Material as stored. ``data`` never appears in a repr."""

    data: dict[str, str] = field(repr=False)
    version_label: str
    created: bool = False


Make = Callable[[], Awaitable[dict[str, str]]]
Data = Mapping[str, str]


class SecretStore(Protocol):
    backend: Backend

    async def ensure(self, at: Placement, purpose: str, make: Make,
                     label: str = INITIAL_VERSION_LABEL, *, create_first: bool = False) -> Stored: ...
    async def read(self, at: Placement, purpose: str) -> Stored | None: ...
    async def write(self, at: Placement, purpose: str, data: Data, *, version_label: str) -> None: ...
    async def verify(self, at: Placement, purpose: str, data: Data, *, version_label: str) -> None: ...
    async def remove(self, at: Placement, purpose: str) -> bool: ...


def _checked(purpose: str, where: str, data: Mapping[str, str], label: str | None) -> Stored:
    missing = [k for k in spec(purpose).key_names() if not data.get(k)]
    if missing:
        # A Secret of ours that lost keys was edited by hand: refuse rather than guess or regenerate.
        raise PermanentError(f"{where} exists but lacks keys {missing}; repair or delete it, then retry")
    return Stored({k: data[k] for k in spec(purpose).key_names()}, label or INITIAL_VERSION_LABEL)


def _verify(where: str, stored: Stored | None, data: Mapping[str, str], label: str) -> None:
    if stored is None:
        raise TemporaryError(f"{where}: not found when reading back version {label}", delay=2.0)
    if stored.version_label != label or any(stored.data.get(k) != v for k, v in data.items()):
        raise TemporaryError(f"{where}: reads back as {stored.version_label}, not the written {label}",
                             delay=2.0)


# --------------------------------------------------------------------------------------------------
# Kubernetes
# --------------------------------------------------------------------------------------------------


class KubernetesStore:
    backend: Backend = "kubernetes"

    def __init__(self, kube: KubePort) -> None:
        self.kube = kube

    async def ensure(self, at: Placement, purpose: str, make: Make,
                     label: str = INITIAL_VERSION_LABEL, *, create_first: bool = False) -> Stored:
        ns, name = at.namespace(purpose), at.name(purpose)
        rec = None if create_first else await self.kube.read_secret(ns, name)
        if rec is None:
            data = await make()
            try:
                await self.kube.create_secret(ns, name, data, labels=secret_labels(at.tenant_id, purpose),
                                              version_label=label)
                return Stored(data, label, created=True)
            except Conflict:  # another delivery / replica wrote it first: theirs is the material
                rec = await self.kube.read_secret(ns, name)
                if rec is None:
                    raise TemporaryError(f"secret {ns}/{name}: conflict on create but not readable") from None
        return _checked(purpose, f"secret {ns}/{name}", rec.data, rec.version_label)

    async def read(self, at: Placement, purpose: str) -> Stored | None:
        ns, name = at.namespace(purpose), at.name(purpose)
        rec = await self.kube.read_secret(ns, name)
        return None if rec is None else _checked(purpose, f"secret {ns}/{name}", rec.data, rec.version_label)

    async def write(self, at: Placement, purpose: str, data: Data, *, version_label: str) -> None:
        ns, name = at.namespace(purpose), at.name(purpose)
        try:
            await self.kube.patch_secret(ns, name, dict(data), version_label=version_label)
        except NotFound:
            await self.kube.create_secret(ns, name, dict(data), labels=secret_labels(at.tenant_id, purpose),
                                          version_label=version_label)

    async def verify(self, at: Placement, purpose: str, data: Data, *, version_label: str) -> None:
        _verify(f"secret {at.namespace(purpose)}/{at.name(purpose)}", await self.read(at, purpose), data,
                version_label)

    async def remove(self, at: Placement, purpose: str) -> bool:
        ns, name = at.namespace(purpose), at.name(purpose)
        if await self.kube.read_secret(ns, name) is None:
            return False
        await self.kube.delete_secret(ns, name)
        return True


# --------------------------------------------------------------------------------------------------
# External Secrets Operator objects
# --------------------------------------------------------------------------------------------------


class ExternalSecrets:
    """Writes and removes ``ExternalSecret`` objects; finds which API version the cluster serves.

    ``external-secrets.io/v1`` is preferred, ``v1beta1`` (ESO < 0.17) is the fallback. Without ESO
    installed, ``apply`` is a ``PermanentError`` that says so and ``delete`` has nothing to delete.
    """

    KIND = "ExternalSecret"

    def __init__(self, kube: KubePort, *, store: str, poll_s: float = 0.25) -> None:
        self.kube = kube
        self.store = store
        self.poll_s = poll_s
        self._api_version: str | None = None

    async def api_version(self) -> str:
        if self._api_version is None:
            for candidate in ESO_API_VERSIONS:
                try:
                    # Served kind + absent object → None; a kind the server does not serve → NotFound.
                    await self.kube.get(candidate, self.KIND, "soctalk-discovery-probe", SYSTEM_NAMESPACE)
                except NotFound:
                    continue
                self._api_version = candidate
                break
            else:
                raise PermanentError("the vault backend needs External Secrets Operator: the cluster serves "
                                     f"no ExternalSecret kind ({' or '.join(ESO_API_VERSIONS)})")
        return self._api_version

    async def apply(self, *, namespace: str, name: str, tenant_id: str, purpose: str, remote_key: str,
                    properties: Mapping[str, str], version_label: str) -> None:
        obj = external_secret(api_version=await self.api_version(), namespace=namespace, name=name,
                              store=self.store, remote_key=remote_key, properties=properties,
                              version_label=version_label, labels=secret_labels(tenant_id, purpose))
        await self.kube.apply(obj)

    async def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            version = await self.api_version()
        except PermanentError:
            return None
        return await self.kube.get(version, self.KIND, name, namespace)

    async def delete(self, namespace: str, name: str) -> bool:
        """Delete if present (ESO then deletes the Secret it owns); ``True`` if there was one."""
        if await self.get(namespace, name) is None:
            return False
        await self.kube.delete(await self.api_version(), self.KIND, name, namespace)
        return True

    async def wait_synced(self, namespace: str, name: str, version_label: str, *, timeout_s: float) -> None:
        """Until ESO has written ``version_label`` into the Secret; ``TemporaryError`` after ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            rec = await self.kube.read_secret(namespace, name)
            if rec is not None and rec.version_label == version_label:
                return
            if loop.time() >= deadline:
                raise TemporaryError(f"secret {namespace}/{name}: External Secrets Operator has not synced "
                                     f"version {version_label} within {timeout_s:g}s", delay=5.0)
            await asyncio.sleep(self.poll_s)


def remote_key_of(obj: Mapping[str, Any]) -> str | None:
    """The Vault key an ExternalSecret reads (its first ``data`` entry), for comparisons."""
    with contextlib.suppress(KeyError, IndexError, TypeError):
        return str(obj["spec"]["data"][0]["remoteRef"]["key"])
    return None


def label_of(obj: Mapping[str, Any]) -> str | None:
    return ((obj.get("metadata") or {}).get("annotations") or {}).get(VERSION_LABEL_ANNOTATION)


# --------------------------------------------------------------------------------------------------
# Vault / OpenBao
# --------------------------------------------------------------------------------------------------


class VaultStore:
    backend: Backend = "vault"

    def __init__(self, vault: VaultGateway, eso: ExternalSecrets, *, sync_timeout_s: float = 60.0) -> None:
        self.vault = vault
        self.eso = eso
        self.sync_timeout_s = sync_timeout_s

    def _stored(self, at: Placement, purpose: str, kv: KvSecret) -> Stored:
        label = kv.data.get(VAULT_VERSION_KEY)
        return _checked(purpose, f"vault {self.vault.mount}/{at.vault_path(purpose)}", kv.data, label)

    async def _sync_object(self, at: Placement, purpose: str, label: str) -> None:
        keys = spec(purpose).key_names()
        await self.eso.apply(namespace=at.namespace(purpose), name=at.name(purpose), tenant_id=at.tenant_id,
                             purpose=purpose, remote_key=at.vault_path(purpose),
                             properties={k: k for k in keys}, version_label=label)

    async def ensure(self, at: Placement, purpose: str, make: Make,
                     label: str = INITIAL_VERSION_LABEL, *, create_first: bool = False) -> Stored:
        # ``create_first`` is a Kubernetes optimisation; Vault reads first (its write is check-and-set).
        path = at.vault_path(purpose)
        current = await self.vault.kv_read(path)
        if current is None:
            data = await make()
            try:
                await self.vault.kv_write(path, {**data, VAULT_VERSION_KEY: label}, cas=0)
                stored = Stored(data, label, created=True)
            except Conflict:  # written concurrently: read theirs back
                current = await self.vault.kv_read(path)
                if current is None:
                    raise TemporaryError(f"vault {path}: check-and-set conflict but not readable") from None
        if current is not None:
            stored = self._stored(at, purpose, current)
        await self._sync_object(at, purpose, stored.version_label)
        return stored

    async def read(self, at: Placement, purpose: str) -> Stored | None:
        current = await self.vault.kv_read(at.vault_path(purpose))
        return None if current is None else self._stored(at, purpose, current)

    async def write(self, at: Placement, purpose: str, data: Data, *, version_label: str) -> None:
        path = at.vault_path(purpose)
        versions = await self.vault.kv_versions(path)
        # Check-and-set against the version just seen: a concurrent writer surfaces as Conflict (retried).
        await self.vault.kv_write(path, {**data, VAULT_VERSION_KEY: version_label},
                                  cas=versions[-1] if versions else 0)
        await self._sync_object(at, purpose, version_label)

    async def verify(self, at: Placement, purpose: str, data: Data, *, version_label: str) -> None:
        _verify(f"vault {self.vault.mount}/{at.vault_path(purpose)}", await self.read(at, purpose), data,
                version_label)
        await self.eso.wait_synced(at.namespace(purpose), at.name(purpose), version_label,
                                   timeout_s=self.sync_timeout_s)

    async def remove(self, at: Placement, purpose: str) -> bool:
        path = at.vault_path(purpose)
        existed = bool(await self.vault.kv_versions(path))
        await self.eso.delete(at.namespace(purpose), at.name(purpose))
        await self.vault.kv_delete(path, destroy_all=True)
        return existed
