"""The secrets service's side effects outside Postgres: provision, rotate and remove a tenant's secrets.

Each function is idempotent by postcondition and safe to re-run after a crash at any point:

* :func:`provision` walks seed 000's inventory in order and *ensures* each Secret (read back when it
  exists, generated only when it does not), so a retry never regenerates anything that was written;
  copies (``tenant-<id>-wazuh`` …) are re-synced from their source if the source had to be regenerated.
* :func:`rotate` writes the new version of each Secret of a rotation, or — on a retry — adopts the
  version already written under the target label; then verifies by reading back and restarts only the
  workloads that read the Secret at startup.
* :func:`remove` deletes what this service wrote for a tenant (Secrets in ``soctalk-system``,
  ExternalSecrets, the Vault tree, the tenant's ESO policy); absent things are not an error. Secrets
  and Vault paths the MSSP provided by reference are never deleted.

They return references, labels and token *records* (hashes) — never material — for the handler to
record in one transaction. Material is registered with :mod:`soctalk_secrets.material` while held.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import structlog
from soctalk_common.errors import Forbidden, NotFound, PermanentError
from soctalk_common.gateways.vault import eso_reader_policy_name, vault_policies
from soctalk_common.sealing import unseal

from soctalk_secrets.deps import Deps
from soctalk_secrets.domain import (
    INITIAL_VERSION_LABEL,
    INVENTORY,
    TENANT_ID_LABEL,
    AdapterTokenRecord,
    LlmSealed,
    LlmSecretRef,
    LlmSource,
    LlmVaultPath,
    SecretRef,
    Workload,
    expected_copies,
    generate,
    hash_token,
    next_version_label,
    parse_token,
    rotation_purposes,
    workloads_to_restart,
)
from soctalk_secrets.material import hold
from soctalk_secrets.stores import Make, Placement, SecretStore, Stored, label_of, remote_key_of

log = structlog.get_logger(__name__)

LLM = "llm"
ADAPTER = "adapter-token"


@dataclass
class Provisioned:
    references: list[SecretRef] = field(default_factory=list)
    created: list[str] = field(default_factory=list)  # purposes written by this run
    reused: list[str] = field(default_factory=list)  # purposes read back (already there)
    tokens: list[AdapterTokenRecord] = field(default_factory=list)


@dataclass
class Rotated:
    references: list[SecretRef]
    restarted: list[str]
    tokens: list[AdapterTokenRecord] = field(default_factory=list)
    adopted: bool = False  # a retry found the new version already written


# --------------------------------------------------------------------------------------------------
# Provisioning
# --------------------------------------------------------------------------------------------------


async def provision(d: Deps, at: Placement, *, backend: str, llm: LlmSource | None,
                    known: Mapping[str, str] | None = None) -> Provisioned:
    """Ensure the whole inventory for one tenant (its namespace must exist).

    ``known`` maps purposes to the latest version label ever recorded: a Secret that has to be
    created although it was recorded before (lost with its namespace) gets the next label, so labels
    never repeat for different material."""
    known = known or {}
    store = d.store(backend)
    material: dict[str, dict[str, str]] = {}
    out = Provisioned()
    # Nothing was ever recorded for the tenant: its Secrets are almost certainly absent, so create
    # without reading first (a 409 reads back, see ``SecretStore.ensure``). The LLM key keeps its
    # read-first path: a sealed key is opened only when tenant-<id>-llm does not exist.
    first = not known
    for s in INVENTORY:
        if s.purpose == LLM:
            refs, created = await _provision_llm(d, store, at, llm, _fresh_label(known, LLM))
            out.references += refs
            if refs:
                (out.created if created else out.reused).append(LLM)
            continue
        make = _generator(s.purpose, material)
        stored = await store.ensure(at, s.purpose, make, _fresh_label(known, s.purpose), create_first=first)
        stored = await _resync_copy(store, at, s.purpose, stored, material)
        hold(stored.data.values())
        material[s.purpose] = stored.data
        out.references += at.references(store.backend, s.purpose, stored.version_label)
        (out.created if stored.created else out.reused).append(s.purpose)
        if s.purpose == ADAPTER:
            out.tokens.append(_token_record(d, at, stored))
    if backend == "vault" and d.vault_admin is not None:
        name = eso_reader_policy_name(at.slug)
        policy = vault_policies(at.mssp_id, [at.slug], mount=d.vault_mount)[name]
        await d.vault_admin.policy_write(name, policy)
    return out


def _fresh_label(known: Mapping[str, str], purpose: str) -> str:
    return next_version_label(known[purpose]) if purpose in known else INITIAL_VERSION_LABEL


def _generator(purpose: str, linked: dict[str, dict[str, str]]) -> Make:
    async def make() -> dict[str, str]:
        data = generate(purpose, linked=linked)
        hold(data.values())
        return data

    return make


async def _resync_copy(store: SecretStore, at: Placement, purpose: str, stored: Stored,
                       material: dict[str, dict[str, str]]) -> Stored:
    """A copy (``tenant-<id>-wazuh``) must equal its source; after a source was regenerated (lost
    with its namespace), the copy is rewritten as a new version."""
    expected = expected_copies(purpose, material)
    if expected is None or stored.created or expected == stored.data:
        return stored
    label = next_version_label(stored.version_label)
    await store.write(at, purpose, expected, version_label=label)
    return Stored(expected, label, created=True)


def _token_record(d: Deps, at: Placement, stored: Stored) -> AdapterTokenRecord:
    token = stored.data["token"]
    return AdapterTokenRecord(prefix=parse_token(token), token_hash=hash_token(d.token_key, token),
                              tenant_id=at.tenant_id, created_at=d.clock.now(),
                              version_label=stored.version_label)


async def _provision_llm(d: Deps, store: SecretStore, at: Placement, llm: LlmSource | None,
                         label: str) -> tuple[list[SecretRef], bool]:
    """``(references, written)``. A sealed key is opened only if ``tenant-<id>-llm`` does not exist yet."""
    if isinstance(llm, LlmSecretRef):
        return [await _llm_secret_ref(d, llm, INITIAL_VERSION_LABEL)], False
    if isinstance(llm, LlmVaultPath):
        return [await _llm_vault_ref(d, at, llm, None)], False
    if llm is None and await store.read(at, LLM) is None:
        return [], False  # no key configured (and none stored by an earlier run)
    stored = await store.ensure(at, LLM, _opener(d, llm), label)
    hold(stored.data.values())
    return at.references(store.backend, LLM, stored.version_label), stored.created


def _opener(d: Deps, llm: LlmSealed | None) -> Make:
    async def make() -> dict[str, str]:
        assert llm is not None
        data = generate(LLM, supplied={"api_key": unseal(d.sealing_key, llm.envelope)})
        hold(data.values())
        return data

    return make


async def _llm_secret_ref(d: Deps, ref: LlmSecretRef, label: str) -> SecretRef:
    """Reference an MSSP-provided Secret: check it holds the key, keep nothing."""
    rec = await d.kube.read_secret(ref.namespace, ref.name)
    if rec is None or not rec.data.get(ref.key):
        raise PermanentError(f"LLM key Secret {ref.namespace}/{ref.name} does not exist or has no key "
                             f"{ref.key!r}; create it, then retry")
    hold([rec.data[ref.key]])
    return SecretRef("kubernetes", ref.namespace, ref.name, ref.key, rec.version_label or label, LLM)


async def _llm_vault_ref(d: Deps, at: Placement, src: LlmVaultPath, label: str | None) -> SecretRef:
    """Reference a Vault path: ESO syncs it into ``tenant-<id>-llm``; this service never reads it."""
    ns, name = at.namespace(LLM), at.name(LLM)
    if label is None:  # provisioning: keep the label of an identical object (a retry), bump on a change
        current = await d.eso.get(ns, name)
        label = INITIAL_VERSION_LABEL
        if current is not None and (old := label_of(current)):
            label = old if remote_key_of(current) == src.path else next_version_label(old)
    await d.eso.apply(namespace=ns, name=name, tenant_id=at.tenant_id, purpose=LLM, remote_key=src.path,
                      properties={"api_key": src.remote_property}, version_label=label)
    return SecretRef("vault", ns, name, "api_key", label, LLM, src.full_path)


# --------------------------------------------------------------------------------------------------
# Rotation
# --------------------------------------------------------------------------------------------------


async def rotate(d: Deps, at: Placement, *, backend: str, service: str, target: str,
                 current: list[SecretRef], new_llm: LlmSource | None) -> Rotated:
    """Write ``target`` of every Secret of ``service``, verify, restart its startup readers."""
    purposes = rotation_purposes(service)
    if service == LLM:
        return await _rotate_llm(d, at, backend=backend, target=target, current=current, new=new_llm)
    store = d.store(backend)
    material: dict[str, dict[str, str]] = {}
    adopted = False
    for p in purposes:
        live = await store.read(at, p)
        if live is None:
            raise PermanentError(f"{at.namespace(p)}/{at.name(p)} does not exist: provision the tenant's "
                                 "secrets before rotating them")
        if live.version_label == target:  # a retry after a crash: this version is already written
            data, adopted = live.data, True
        else:
            data = await _generator(p, material)()
            await store.write(at, p, data, version_label=target)
        hold(data.values())
        material[p] = data
    for p in purposes:
        await store.verify(at, p, material[p], version_label=target)
    restarted = await restart(d, at.tenant_namespace, workloads_to_restart(purposes))
    refs = [r for p in purposes for r in at.references(store.backend, p, target)]
    tokens = [_token_record(d, at, Stored(material[ADAPTER], target))] if ADAPTER in purposes else []
    return Rotated(refs, restarted, tokens, adopted)


def _llm_kind(at: Placement, current: list[SecretRef]) -> str | None:
    """How the tenant's LLM key is held now: managed material (``kubernetes``/``vault``), an MSSP
    Secret (``secret-ref``), an MSSP Vault path (``vault-ref``), or ``None``."""
    for r in current:
        if r.purpose != LLM:
            continue
        if r.backend == "kubernetes":
            return "kubernetes" if r.name == at.name(LLM) else "secret-ref"
        return "vault" if r.path == f"{at.mount}/{at.vault_path(LLM)}" else "vault-ref"
    return None


async def _rotate_llm(d: Deps, at: Placement, *, backend: str, target: str, current: list[SecretRef],
                      new: LlmSource | None) -> Rotated:
    """The orchestrator re-reads the key per job: no restart. Switching between material and a
    reference removes the superseded managed copy, so no stale key is left behind."""
    if new is None:
        raise PermanentError("an llm rotation needs new_llm_key (sealed, secret_ref or vault_path)")
    store, now = d.store(backend), _llm_kind(at, current)
    if isinstance(new, LlmSealed):
        if now == "vault-ref" and backend == "kubernetes":
            raise PermanentError("tenant-<id>-llm is synced from Vault by External Secrets: rotate the key "
                                 "in Vault or give a new vault_path; a sealed key cannot replace it")
        live = await store.read(at, LLM)
        if live is not None and live.version_label == target:
            data = live.data  # a retry: already written
        else:
            data = await _opener(d, new)()
            await store.write(at, LLM, data, version_label=target)
        hold(data.values())
        await store.verify(at, LLM, data, version_label=target)
        return Rotated(at.references(store.backend, LLM, target), [])
    if isinstance(new, LlmSecretRef):
        ref = await _llm_secret_ref(d, new, target)
        ref = SecretRef(ref.backend, ref.namespace, ref.name, ref.key, target, LLM)
        if now in ("kubernetes", "vault"):
            await store.remove(at, LLM)
        elif now == "vault-ref":
            await d.eso.delete(at.namespace(LLM), at.name(LLM))
        return Rotated([ref], [])
    if now == "kubernetes":
        await store.remove(at, LLM)  # our plain Secret makes way for the one ESO will own
    ref = await _llm_vault_ref(d, at, new, target)
    if now == "vault" and d.vault is not None:
        await d.vault.kv_delete(at.vault_path(LLM), destroy_all=True)  # the ExternalSecret now points away
    return Rotated([ref], [])


async def restart(d: Deps, namespace: str, workloads: Iterable[Workload]) -> list[str]:
    """Roll each workload once; one that is not installed (yet) reads the new value when it starts."""
    done = []
    for w in workloads:
        try:
            await d.kube.restart_workloads(namespace, [(w.kind, w.name)])
        except NotFound:
            continue
        done.append(f"{w.kind}/{w.name}")
    return done


# --------------------------------------------------------------------------------------------------
# Removal
# --------------------------------------------------------------------------------------------------


async def remove(d: Deps, at: Placement, *, backend: str, refs: list[SecretRef]) -> list[str]:
    """Delete everything this service wrote for the tenant; returns what existed (names/paths only)."""
    removed: list[str] = []
    namespaces = [at.system_namespace]
    if await d.kube.namespace_exists(at.tenant_namespace):  # normally already deleted with the release
        namespaces.append(at.tenant_namespace)
    mine: Callable[[str], bool] = lambda p: at.namespace(p) in namespaces  # noqa: E731
    # ExternalSecrets first: a Secret deleted while its ExternalSecret exists would be re-synced.
    for s in INVENTORY:
        if mine(s.purpose) and await d.eso.delete(at.namespace(s.purpose), at.name(s.purpose)):
            removed.append(f"ExternalSecret {at.namespace(s.purpose)}/{at.name(s.purpose)}")
    kube_store = d.store("kubernetes")
    for s in INVENTORY:
        if mine(s.purpose) and await kube_store.remove(at, s.purpose):
            removed.append(f"Secret {at.namespace(s.purpose)}/{at.name(s.purpose)}")
    try:  # anything else labelled as this tenant's (needs `list` on Secrets in the system namespace)
        leftovers = await d.kube.list_secrets(at.system_namespace, f"{TENANT_ID_LABEL}={at.tenant_id}")
    except Forbidden:
        log.warning("secrets.sweep_skipped", reason="no permission to list Secrets in the system namespace")
        leftovers = []
    for rec in leftovers:
        await d.kube.delete_secret(rec.namespace, rec.name)
        removed.append(f"Secret {rec.namespace}/{rec.name}")
    removed += await _remove_vault_tree(d, at, needed=backend == "vault" or any(
        r.backend == "vault" and r.path is not None and f"/{at.vault_tree}/" in r.path for r in refs))
    return removed


async def _remove_vault_tree(d: Deps, at: Placement, *, needed: bool) -> list[str]:
    if d.vault is None or not at.mssp_id:
        if needed:
            raise PermanentError("the tenant's secrets are in Vault but this install has no Vault configured")
        return []
    removed = []
    paths = [at.vault_path(s.purpose) for s in INVENTORY]
    paths += [f"{at.vault_tree}/{n}" for n in await d.vault.kv_list(at.vault_tree) if not n.endswith("/")]
    for path in dict.fromkeys(paths):
        if await d.vault.kv_versions(path):
            removed.append(f"vault {d.vault.mount}/{path}")
        await d.vault.kv_delete(path, destroy_all=True)
    if d.vault_admin is not None:
        await d.vault_admin.policy_delete(eso_reader_policy_name(at.slug))
    return removed
