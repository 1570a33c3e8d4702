"""The emulator's resource table: which kinds exist, their scope, and the discovery documents.

Every kind the emulator serves is one ``Kind`` row. Built-in rows cover what the SocTalk charts and
Helm touch; more can be added at runtime with ``KubeEmulator.register_kind`` or by creating a
``CustomResourceDefinition`` (its served versions become kinds, as on a real server).
"""

from __future__ import annotations

from dataclasses import dataclass, field

VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


@dataclass(frozen=True)
class Kind:
    group: str  # "" for the core group
    version: str
    kind: str
    plural: str
    namespaced: bool = True
    status_subresource: bool = False
    create_only: bool = False  # review-style kinds (SubjectAccessReview): POST answers, nothing stored
    short_names: tuple[str, ...] = field(default=())
    categories: tuple[str, ...] = field(default=())

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def api_resource(self) -> dict:
        verbs = ["create"] if self.create_only else VERBS
        doc = {
            "name": self.plural,
            "singularName": self.kind.lower(),
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": verbs,
        }
        if self.short_names:
            doc["shortNames"] = list(self.short_names)
        if self.categories:
            doc["categories"] = list(self.categories)
        return doc


def _k(gv: str, kind: str, plural: str, **kw) -> Kind:
    group, _, version = gv.rpartition("/")
    return Kind(group=group, version=version, kind=kind, plural=plural, **kw)


BUILTIN_KINDS: list[Kind] = [
    _k("v1", "Namespace", "namespaces", namespaced=False, status_subresource=True, short_names=("ns",)),
    _k("v1", "Secret", "secrets"),
    _k("v1", "ConfigMap", "configmaps", short_names=("cm",)),
    _k("v1", "Service", "services", categories=("all",), status_subresource=True, short_names=("svc",)),
    _k("v1", "ServiceAccount", "serviceaccounts", short_names=("sa",)),
    _k("v1", "Pod", "pods", categories=("all",), status_subresource=True, short_names=("po",)),
    _k("v1", "Event", "events", short_names=("ev",)),
    _k("v1", "Endpoints", "endpoints", short_names=("ep",)),
    _k("v1", "PersistentVolumeClaim", "persistentvolumeclaims",
       status_subresource=True, short_names=("pvc",)),
    _k("v1", "PersistentVolume", "persistentvolumes", namespaced=False, status_subresource=True),
    _k("v1", "ResourceQuota", "resourcequotas", status_subresource=True, short_names=("quota",)),
    _k("v1", "LimitRange", "limitranges", short_names=("limits",)),
    _k("v1", "Node", "nodes", namespaced=False, status_subresource=True, short_names=("no",)),
    _k("apps/v1", "Deployment", "deployments",
       categories=("all",), status_subresource=True, short_names=("deploy",)),
    _k("apps/v1", "StatefulSet", "statefulsets",
       categories=("all",), status_subresource=True, short_names=("sts",)),
    _k("apps/v1", "DaemonSet", "daemonsets",
       categories=("all",), status_subresource=True, short_names=("ds",)),
    _k("apps/v1", "ReplicaSet", "replicasets",
       categories=("all",), status_subresource=True, short_names=("rs",)),
    _k("batch/v1", "Job", "jobs", categories=("all",), status_subresource=True),
    _k("batch/v1", "CronJob", "cronjobs", categories=("all",), status_subresource=True, short_names=("cj",)),
    _k("rbac.authorization.k8s.io/v1", "Role", "roles"),
    _k("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings"),
    _k("rbac.authorization.k8s.io/v1", "ClusterRole", "clusterroles", namespaced=False),
    _k("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "clusterrolebindings", namespaced=False),
    _k("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies", short_names=("netpol",)),
    _k("networking.k8s.io/v1", "Ingress", "ingresses", status_subresource=True, short_names=("ing",)),
    _k("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets",
       status_subresource=True, short_names=("pdb",)),
    _k("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", status_subresource=True),
    _k("coordination.k8s.io/v1", "Lease", "leases"),
    _k("scheduling.k8s.io/v1", "PriorityClass", "priorityclasses", namespaced=False),
    _k("storage.k8s.io/v1", "StorageClass", "storageclasses", namespaced=False, short_names=("sc",)),
    _k("apiextensions.k8s.io/v1", "CustomResourceDefinition", "customresourcedefinitions",
       namespaced=False, status_subresource=True, short_names=("crd",)),
    _k("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy", "validatingadmissionpolicies",
       namespaced=False, status_subresource=True),
    _k("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding",
       "validatingadmissionpolicybindings", namespaced=False),
    _k("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration",
       "validatingwebhookconfigurations", namespaced=False),
    _k("authorization.k8s.io/v1", "SubjectAccessReview", "subjectaccessreviews",
       namespaced=False, create_only=True),
    _k("authorization.k8s.io/v1", "SelfSubjectAccessReview", "selfsubjectaccessreviews",
       namespaced=False, create_only=True),
    _k("authorization.k8s.io/v1", "LocalSubjectAccessReview", "localsubjectaccessreviews", create_only=True),
    _k("authorization.k8s.io/v1", "SelfSubjectRulesReview", "selfsubjectrulesreviews",
       namespaced=False, create_only=True),
]


class KindTable:
    """Lookup by (group, version, plural) for routing and by group for discovery."""

    def __init__(self, kinds: list[Kind]) -> None:
        self._by_path: dict[tuple[str, str, str], Kind] = {}
        for kind in kinds:
            self.add(kind)

    def add(self, kind: Kind) -> None:
        self._by_path[(kind.group, kind.version, kind.plural)] = kind

    def remove(self, group: str, version: str, plural: str) -> None:
        self._by_path.pop((group, version, plural), None)

    def find(self, group: str, version: str, plural: str) -> Kind | None:
        return self._by_path.get((group, version, plural))

    def all(self) -> list[Kind]:
        return list(self._by_path.values())

    # --- discovery documents (the legacy JSON forms; clients fall back to them) ---

    def core_versions(self, server: str) -> dict:
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server}],
        }

    def _group_versions(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for kind in self._by_path.values():
            if kind.group:
                versions = groups.setdefault(kind.group, [])
                if kind.version not in versions:
                    versions.append(kind.version)
        return groups

    def group_doc(self, group: str) -> dict | None:
        versions = self._group_versions().get(group)
        if not versions:
            return None
        entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": entries,
                "preferredVersion": entries[0]}

    def group_list(self) -> dict:
        groups = [self.group_doc(g) for g in sorted(self._group_versions())]
        for doc in groups:
            assert doc is not None
            doc.pop("kind")
            doc.pop("apiVersion")
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    def resource_list(self, group: str, version: str) -> dict | None:
        kinds = [k for k in self._by_path.values() if (k.group, k.version) == (group, version)]
        if not kinds:
            return None
        resources = []
        for kind in sorted(kinds, key=lambda k: k.plural):
            resources.append(kind.api_resource())
            if kind.status_subresource:
                resources.append({"name": f"{kind.plural}/status", "singularName": "",
                                  "namespaced": kind.namespaced, "kind": kind.kind,
                                  "verbs": ["get", "patch", "update"]})
        gv = f"{group}/{version}" if group else version
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}
