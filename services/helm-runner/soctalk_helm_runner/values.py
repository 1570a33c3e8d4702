"""Chart values from the tenant record (pure): seed 001 §3, references only, never material.

:func:`render_values` is the one place the ``soctalk-tenant`` values are made. Its inputs are the
tenant row (config as the provisioner stored it, ids, profile, edge ports), the tenant's secret
*references* (``tenant_secrets`` rows or ``SecretRef`` events: purpose, namespace, name, key) and the
install settings. The profile's ``defaults.tenant`` sizing goes under the tenant's own config (the
tenant wins). What the cluster cannot serve is switched off: without Cilium the LLM egress policy
is not rendered (``networkPolicies.fqdnEngine: none``), without cert-manager no Certificate
(``wazuhIngress.tls.issuerRef: ""``).

Validation against ``values.schema.json`` is the caller's next step (``charts.validate_values``):
this function never raises for a bad config, so every problem is reported with its JSON path.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from soctalk_common import charts
from soctalk_common.settings import Settings

LLM_PURPOSE = "llm"
ADAPTER_PURPOSE = "adapter-token"
MANAGED_BY = "soctalk"


@dataclass(frozen=True)
class ClusterFeatures:
    """Optional APIs the tenant chart uses (discovered from the API server, or set in settings)."""

    cilium: bool = True  # cilium.io/v2 CiliumNetworkPolicy (FQDN egress to the LLM)
    cert_manager: bool = True  # cert-manager.io/v1 Certificate (the 1515 channel)


class TenantLike(Protocol):
    """The tenant record's fields the values need (the ORM row or ``records.TenantView``)."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def slug(self) -> str: ...
    @property
    def mssp_id(self) -> uuid.UUID: ...
    @property
    def install_id(self) -> uuid.UUID: ...
    @property
    def display_name(self) -> str: ...
    @property
    def profile(self) -> str: ...
    @property
    def secrets_backend(self) -> str: ...
    @property
    def config(self) -> dict[str, Any]: ...
    @property
    def edge_ports(self) -> dict[str, Any] | None: ...


def _active(refs: Iterable[Any], purpose: str) -> Any | None:
    found = None
    for ref in refs:
        if getattr(ref, "purpose", None) != purpose:
            continue
        if getattr(ref, "status", "active") not in ("active", None):
            continue
        found = ref  # the last one wins (rows come oldest first)
    return found


def llm_key_ref(tenant: TenantLike, refs: Iterable[Any], settings: Settings) -> dict[str, str]:
    """The Secret the chart reads the LLM key from: the secrets service's reference, else the one in
    the stored config, else the seed 000 name ``tenant-<id>-llm`` in the install namespace."""
    ref = _active(refs, LLM_PURPOSE)
    if ref is not None and ref.namespace:
        return {"namespace": ref.namespace, "name": ref.name, "key": ref.key}
    stored = ((tenant.config or {}).get("llm") or {}).get("apiKeyRef")
    if isinstance(stored, Mapping) and {"namespace", "name", "key"} <= set(stored):
        return {"namespace": str(stored["namespace"]), "name": str(stored["name"]), "key": str(stored["key"])}
    return {"namespace": settings.system_namespace, "name": f"tenant-{tenant.id}-llm", "key": "api_key"}


def namespace_labels(tenant: TenantLike) -> dict[str, str]:
    return {"tenant": "true", "managed-by": MANAGED_BY, "mssp-id": str(tenant.mssp_id),
            "install-id": str(tenant.install_id), "tenant-id": str(tenant.id)}


def _wazuh_ingress(tenant: TenantLike, features: ClusterFeatures) -> dict[str, Any]:
    cfg = dict((tenant.config or {}).get("wazuhIngress") or {})
    tls = dict(cfg.get("tls") or {})
    out: dict[str, Any] = {k: copy.deepcopy(v) for k, v in cfg.items() if k not in ("tls", "edgePorts")}
    out["tls"] = {k: v for k, v in tls.items() if k in ("issuerRef", "secretName")}
    if not features.cert_manager:
        out["tls"]["issuerRef"] = ""
    if out.get("mode") == "edge-haproxy" and tenant.edge_ports:
        out["edgePorts"] = {"events": int(tenant.edge_ports["events"]),
                            "enrollment": int(tenant.edge_ports["enrollment"])}
    return out


def render_values(tenant: TenantLike, refs: Iterable[Any], settings: Settings, *, suspended: bool = False,
                  features: ClusterFeatures | None = None,
                  profile_values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``soctalk-tenant`` values for ``tenant`` (see the module doc). Deterministic: the same
    inputs give the same values, so a re-render compares equal to the release's."""
    features = features or ClusterFeatures()
    refs = list(refs)
    cfg = tenant.config or {}
    llm = {k: copy.deepcopy(v) for k, v in (cfg.get("llm") or {}).items()
           if k in ("provider", "baseUrl", "model")}
    llm["apiKeyRef"] = llm_key_ref(tenant, refs, settings)
    own: dict[str, Any] = {
        "tenant": {"id": str(tenant.id), "slug": tenant.slug, "msspId": str(tenant.mssp_id),
                   "installId": str(tenant.install_id), "displayName": tenant.display_name},
        "suspended": bool(suspended),
        "secretsBackend": tenant.secrets_backend or "kubernetes",
        "llm": llm,
        "networkPolicies": {"enabled": True, "fqdnEngine": "cilium" if features.cilium else "none"},
        "wazuhIngress": _wazuh_ingress(tenant, features),
        "namespaceLabels": namespace_labels(tenant),
    }
    for key in ("branding", "integrations", "components", "allowedLlmHosts"):
        if key in cfg:
            own[key] = copy.deepcopy(cfg[key])
    token = _active(refs, ADAPTER_PURPOSE)
    if token is not None:
        own["adapter"] = {"tokenSecretRef": {"name": token.name, "key": token.key}}
    if profile_values is not None:
        return charts.tenant_values(profile_values, own)
    return charts.tenant_values_for_profile(tenant.profile or settings.default_profile, own)
