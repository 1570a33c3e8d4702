"""The emulator's object store: what etcd plus the generic apiserver registry would do.

One ``Store`` lives on the emulator's event loop and is only touched from it. It assigns
``uid``/``resourceVersion``/``creationTimestamp``/``generation``, enforces optimistic concurrency,
keeps the status subresource separate from the main resource, honours finalizers, runs the
namespace controller's cleanup, and feeds watchers from a bounded event history.

Stored objects are immutable once committed: every write builds a new object (sharing the parts it
does not change with the old one) and replaces the stored one. So the history, watch events and
answers can hand out the stored objects themselves, behind a shallow ``_view`` that adds
``apiVersion``/``kind``; only code that edits an object (patches) deep-copies it first. Copying every
object on every read and write was most of the emulator's CPU after HTTP itself.
"""

from __future__ import annotations

import asyncio
import base64
import re
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from . import patching
from .clone import clone
from .kinds import Kind, KindTable
from .selectors import Matcher

HISTORY = 10_000
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_NO_GENERATION = {"Secret", "ConfigMap", "Namespace", "ServiceAccount", "Event", "Endpoints"}


class ApiError(Exception):
    """Rendered by the HTTP layer as a ``Status`` object."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def status(self) -> dict:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "details": self.details,
                "code": self.code}


def not_found(kind: Kind, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{kind.group_resource} "{name}" not found',
                    {"name": name, "group": kind.group, "kind": kind.plural})


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(eq=False)
class Watcher:
    kind: Kind
    namespace: str | None
    matches: Matcher
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)

    def offer(self, event_type: str, obj: dict) -> None:
        meta = obj["metadata"]
        if self.namespace and meta.get("namespace") != self.namespace:
            return
        if self.matches(obj):
            self.queue.put_nowait({"type": event_type, "object": obj})


class Store:
    def __init__(self, kinds: KindTable, schedule: Callable[[Callable[[], None]], Any],
                 history: int = HISTORY) -> None:
        self.kinds = kinds
        self._schedule = schedule  # run a callback later on the store's loop
        self._objects: dict[tuple[str, str], dict[tuple[str, str], dict]] = {}
        # (group, plural) → namespace → names: a namespaced list reads its namespace only, as the API
        # server's range read over one etcd prefix does (a scan of every namespace made each list cost
        # grow with the whole cluster: quadratic over an onboarding run).
        self._names: dict[tuple[str, str], dict[str, set[str]]] = {}
        self._applied: dict[tuple, dict[str, dict]] = {}  # server-side apply: manager -> config
        self._rv = 0
        self._history: deque[tuple[int, tuple[str, str], str, dict]] = deque(maxlen=history)
        self._watchers: set[Watcher] = set()
        self._ns_kind = kinds.find("", "v1", "namespaces")
        for name in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.create(self._kind("", "v1", "namespaces"), None, {"metadata": {"name": name}})

    # --- reading ------------------------------------------------------------------------------

    def _kind(self, group: str, version: str, plural: str) -> Kind:
        kind = self.kinds.find(group, version, plural)
        assert kind is not None
        return kind

    def _bucket(self, kind: Kind) -> dict[tuple[str, str], dict]:
        return self._objects.setdefault((kind.group, kind.plural), {})

    def _view(self, kind: Kind, obj: dict) -> dict:
        """The stored object as served: shallow (read it, serialise it; never edit it in place)."""
        out = dict(obj)
        out["apiVersion"], out["kind"] = kind.api_version, kind.kind
        return out

    def exists(self, kind: Kind, namespace: str | None, name: str) -> bool:
        return (namespace or "", name) in self._bucket(kind)

    @property
    def resource_version(self) -> str:
        return str(self._rv)

    def get(self, kind: Kind, namespace: str | None, name: str) -> dict:
        obj = self._bucket(kind).get((namespace or "", name))
        if obj is None:
            raise not_found(kind, name)
        return self._view(kind, obj)

    def list(self, kind: Kind, namespace: str | None, matches: Matcher) -> list[dict]:
        # Filter by namespace before sorting: a real API server does not charge one namespace's list
        # for every other namespace's objects (sorting all of them first cost ~5 ms per list at 13k).
        bucket = self._bucket(kind)
        if namespace:
            names = self._names.get((kind.group, kind.plural), {}).get(namespace, ())
            keys = [(namespace, n) for n in sorted(names)]
        else:
            keys = sorted(bucket)
        return [obj for obj in (self._view(kind, bucket[k]) for k in keys) if matches(obj)]

    # --- watching -----------------------------------------------------------------------------

    def watch(self, kind: Kind, namespace: str | None, matches: Matcher, since: str | None) -> Watcher:
        watcher = Watcher(kind, namespace, matches)
        key = (kind.group, kind.plural)
        if since in (None, "", "0"):
            for obj in self.list(kind, namespace, matches):
                watcher.queue.put_nowait({"type": "ADDED", "object": obj})
        else:
            try:
                start = int(since)
            except ValueError as exc:
                raise ApiError(400, "BadRequest", f"invalid resourceVersion {since!r}") from exc
            oldest = self._history[0][0] if self._history else self._rv + 1
            if start < oldest - 1 and len(self._history) == self._history.maxlen:
                raise ApiError(410, "Expired", f"too old resource version: {start} ({oldest - 1})")
            for rv, hkey, event_type, obj in self._history:
                if rv > start and hkey == key:
                    watcher.offer(event_type, self._view(kind, obj))
        self._watchers.add(watcher)
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    def close_watchers(self) -> None:
        for watcher in self._watchers:
            watcher.queue.put_nowait(None)
        self._watchers.clear()

    # --- writing ------------------------------------------------------------------------------

    def _commit(self, kind: Kind, obj: dict, event_type: str) -> dict:
        self._rv += 1
        meta = obj["metadata"]
        meta["resourceVersion"] = str(self._rv)
        key = (meta.get("namespace", ""), meta["name"])
        names = self._names.setdefault((kind.group, kind.plural), {})
        if event_type == "DELETED":
            self._bucket(kind).pop(key, None)
            self._applied.pop((kind.group, kind.plural, *key), None)
            in_ns = names.get(key[0])
            if in_ns is not None:
                in_ns.discard(key[1])
                if not in_ns:
                    del names[key[0]]
        else:
            self._bucket(kind)[key] = obj
            names.setdefault(key[0], set()).add(key[1])
        stored = obj  # immutable from here on (see the module doc)
        self._history.append((self._rv, (kind.group, kind.plural), event_type, stored))
        for watcher in list(self._watchers):
            if (watcher.kind.group, watcher.kind.plural) == (kind.group, kind.plural):
                watcher.offer(event_type, self._view(watcher.kind, stored))
        if kind.kind == "CustomResourceDefinition":
            self._sync_crd(obj, removed=event_type == "DELETED")
        return self._view(kind, obj)

    def _check_namespace(self, kind: Kind, namespace: str | None, obj: dict) -> str:
        if not kind.namespaced:
            obj["metadata"].pop("namespace", None)
            return ""
        meta_ns = obj["metadata"].get("namespace")
        if namespace and meta_ns and meta_ns != namespace:
            raise ApiError(400, "BadRequest", "the namespace of the provided object does not match "
                           "the namespace sent on the request")
        namespace = namespace or meta_ns
        if not namespace:
            raise ApiError(400, "BadRequest", "a namespace is required for namespaced resources")
        ns_obj = self._bucket(self._ns_kind).get(("", namespace))  # type: ignore[arg-type]
        if ns_obj is None:
            raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found',
                           {"name": namespace, "kind": "namespaces"})
        if ns_obj["metadata"].get("deletionTimestamp"):
            raise ApiError(403, "Forbidden", f"{kind.plural} \"{obj['metadata'].get('name')}\" is "
                           f"forbidden: unable to create new content in namespace {namespace} "
                           "because it is being terminated")
        obj["metadata"]["namespace"] = namespace
        return namespace

    def create(self, kind: Kind, namespace: str | None, obj: dict, *, dry_run: bool = False,
               owned: bool = False) -> dict:
        """``owned``: ``obj`` was built for this call and nothing else refers to it (no copy needed)."""
        obj = obj if owned else clone(obj)
        if not isinstance(obj, dict) or not isinstance(obj.get("metadata", {}), dict):
            raise ApiError(400, "BadRequest", "the request body is not an object")
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name") or ""
        pattern = _DNS_LABEL if kind.kind == "Namespace" else _DNS_SUBDOMAIN
        if not pattern.match(name) and kind.kind not in ("Role", "ClusterRole", "RoleBinding",
                                                           "ClusterRoleBinding"):
            raise ApiError(422, "Invalid",
                           f'{kind.kind} "{name}" is invalid: metadata.name: Invalid value: "{name}": '
                           "a lowercase RFC 1123 name is required",
                           {"name": name, "kind": kind.kind,
                            "causes": [{"reason": "FieldValueInvalid", "field": "metadata.name"}]})
        ns = self._check_namespace(kind, namespace, obj)
        if (ns, name) in self._bucket(kind):
            raise ApiError(409, "AlreadyExists", f'{kind.group_resource} "{name}" already exists',
                           {"name": name, "group": kind.group, "kind": kind.plural})
        for key in ("resourceVersion", "deletionTimestamp", "managedFields"):
            meta.pop(key, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now()
        if kind.group and kind.kind not in _NO_GENERATION:
            meta["generation"] = 1
        self._default(kind, obj)
        if dry_run:
            return self._view(kind, obj)
        created = self._commit(kind, obj, "ADDED")
        if kind.kind == "Namespace":
            sa_kind = self._kind("", "v1", "serviceaccounts")
            self.create(sa_kind, name, {"metadata": {"name": "default"}})
        return created

    def _default(self, kind: Kind, obj: dict) -> None:
        """The few defaults readers of these objects rely on."""
        spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else None
        if kind.kind == "Namespace":
            obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
            obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
            obj["status"] = {"phase": "Active"}
        elif kind.kind == "Secret":
            data = obj.setdefault("data", {}) or {}
            for key, value in (obj.pop("stringData", None) or {}).items():
                data[key] = base64.b64encode(str(value).encode()).decode()
            obj["data"] = data
            obj["type"] = obj.get("type") or "Opaque"
        elif kind.kind in ("Deployment", "StatefulSet", "ReplicaSet") and spec is not None:
            spec.setdefault("replicas", 1)
        elif kind.kind == "Job" and spec is not None:
            spec.setdefault("completions", 1)
            spec.setdefault("parallelism", 1)
            spec.setdefault("backoffLimit", 6)
        if kind.status_subresource and kind.kind != "Namespace":
            obj.setdefault("status", {})

    def update(self, kind: Kind, namespace: str | None, name: str, new: dict, *,
               subresource: str | None = None, dry_run: bool = False, owned: bool = False) -> dict:
        """``owned``: ``new`` was built for this call and nothing else refers to it (no copy needed)."""
        key = (namespace or "", name)
        old = self._bucket(kind).get(key)
        if old is None:
            raise not_found(kind, name)
        new = new if owned else clone(new)
        if not isinstance(new, dict):
            raise ApiError(400, "BadRequest", "the request body is not an object")
        new_meta = new.setdefault("metadata", {})
        if new_meta.get("name", name) != name:
            raise ApiError(400, "BadRequest", "the name of the object does not match the name on the URL")
        sent_rv = new_meta.get("resourceVersion")
        if sent_rv and sent_rv != old["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict",
                           f'Operation cannot be fulfilled on {kind.group_resource} "{name}": the object '
                           "has been modified; please apply your changes to the latest version and try again",
                           {"name": name, "group": kind.group, "kind": kind.plural})
        if subresource == "status":  # the stored spec is shared, not copied: nothing edits it
            new = {**old, "metadata": dict(old["metadata"]), "status": new.get("status", {})}
        else:
            for immutable in ("uid", "creationTimestamp", "deletionTimestamp", "generation"):
                if immutable in old["metadata"]:
                    new_meta[immutable] = old["metadata"][immutable]
                else:
                    new_meta.pop(immutable, None)
            new_meta["name"] = name
            if kind.namespaced:
                new_meta["namespace"] = namespace
            else:
                new_meta.pop("namespace", None)
            new_meta.pop("managedFields", None)
            if kind.status_subresource:
                new["status"] = old.get("status", {})
            if kind.kind == "Secret":
                self._default(kind, new)
            if kind.kind == "Namespace":
                new.setdefault("metadata", {}).setdefault("labels", {})["kubernetes.io/metadata.name"] = name
            if "generation" in old["metadata"] and _spec_of(new) != _spec_of(old):
                new_meta["generation"] = old["metadata"]["generation"] + 1
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        new.pop("apiVersion", None)
        new.pop("kind", None)
        old_cmp = {k: v for k, v in old.items() if k not in ("apiVersion", "kind")}
        if new == old_cmp:
            return self._view(kind, old)  # no-op writes do not bump the resourceVersion
        if dry_run:
            return self._view(kind, new)
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            gone = self._commit(kind, new, "DELETED")
            ns_obj = self._bucket(self._ns_kind).get(("", namespace or ""))  # type: ignore[arg-type]
            if kind.namespaced and ns_obj and ns_obj["metadata"].get("deletionTimestamp"):
                self._schedule(lambda: self._purge_namespace(namespace or ""))
            return gone
        return self._commit(kind, new, "MODIFIED")

    def patch(self, kind: Kind, namespace: str | None, name: str, patch_type: str, body: Any, *,
              subresource: str | None = None, manager: str | None = None, force: bool = False,
              dry_run: bool = False) -> dict:
        key = (namespace or "", name)
        live = self._bucket(kind).get(key)
        if patch_type == "apply":
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "an apply patch must be an object")
            if not manager:
                raise ApiError(422, "Invalid", "fieldManager is required for apply requests")
            body.setdefault("metadata", {}).setdefault("name", name)
            if body["metadata"]["name"] != name:
                raise ApiError(400, "BadRequest", "the name of the object does not match the URL")
            applied_key = (kind.group, kind.plural, *key)
            current = {k: v for k, v in (live or {}).items() if k not in ("apiVersion", "kind")}
            try:
                result, applied = patching.apply(current, body, manager,
                                                 self._applied.get(applied_key, {}), force=force)
            except patching.ApplyConflict as exc:
                raise ApiError(409, "Conflict", str(exc), {"name": name, "kind": kind.plural,
                               "causes": [{"reason": "FieldManagerConflict", "message": m, "field": p}
                                          for p, m in exc.conflicts]}) from exc
            if live is None:
                obj = self.create(kind, namespace, result, dry_run=dry_run, owned=True)
            else:
                result["metadata"].pop("resourceVersion", None)  # ``result`` is apply's own deep copy
                obj = self.update(kind, namespace, name, result, subresource=subresource, dry_run=dry_run,
                                  owned=True)
            if not dry_run:
                self._applied[applied_key] = applied
            return obj
        if live is None:
            raise not_found(kind, name)
        current = clone(self._view(kind, live))  # the patch functions edit it in place
        try:
            if patch_type == "json":
                result = patching.json_patch(current, body)
            elif patch_type == "merge":
                result = patching.merge_patch(current, body)
            elif patch_type == "strategic":
                result = patching.strategic_merge_patch(current, body)
            else:
                raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type {patch_type!r}")
        except patching.PatchError as exc:
            raise ApiError(422, "Invalid", f'{kind.kind} "{name}" patch is invalid: {exc}') from exc
        if not isinstance(body, dict) or "resourceVersion" not in (body.get("metadata") or {}):
            result.setdefault("metadata", {})["resourceVersion"] = live["metadata"]["resourceVersion"]
        # ``result`` may share values with the request body (patch functions insert them), and the
        # body is this request's own: no copy needed.
        return self.update(kind, namespace, name, result, subresource=subresource, dry_run=dry_run, owned=True)

    def delete(self, kind: Kind, namespace: str | None, name: str, *, dry_run: bool = False) -> dict:
        key = (namespace or "", name)
        obj = self._bucket(kind).get(key)
        if obj is None:
            raise not_found(kind, name)
        if dry_run:
            return self._view(kind, obj)
        if kind.kind == "Namespace":
            return self._terminate_namespace(kind, obj)
        if obj["metadata"].get("finalizers"):
            if obj["metadata"].get("deletionTimestamp"):
                return self._view(kind, obj)
            obj = clone(obj)
            obj["metadata"]["deletionTimestamp"] = now()
            return self._commit(kind, obj, "MODIFIED")
        return self._commit(kind, clone(obj), "DELETED")

    # --- controllers the apiserver process normally hosts --------------------------------------

    def _terminate_namespace(self, kind: Kind, obj: dict) -> dict:
        """Mark Terminating now; the namespace controller empties and removes it on the next tick."""
        if obj["metadata"].get("deletionTimestamp"):
            return self._view(kind, obj)
        obj = clone(obj)
        obj["metadata"]["deletionTimestamp"] = now()
        obj["status"] = {"phase": "Terminating"}
        name = obj["metadata"]["name"]
        result = self._commit(kind, obj, "MODIFIED")
        self._schedule(lambda: self._purge_namespace(name))
        return result

    def _purge_namespace(self, name: str) -> None:
        """Delete everything in the namespace; remove it once nothing (finalizer-held) remains."""
        remaining = False
        for kind in self.kinds.all():
            if not kind.namespaced or kind.create_only:
                continue
            in_ns = self._names.get((kind.group, kind.plural), {}).get(name, ())
            for (ns, obj_name) in [(name, n) for n in sorted(in_ns)]:
                self.delete(kind, ns, obj_name)
                remaining = remaining or (ns, obj_name) in self._bucket(kind)
        ns_obj = self._bucket(self._ns_kind).get(("", name))  # type: ignore[arg-type]
        if ns_obj is not None and not remaining:
            self._commit(self._ns_kind, clone(ns_obj), "DELETED")  # type: ignore[arg-type]

    def _sync_crd(self, crd: dict, *, removed: bool) -> None:
        """A CustomResourceDefinition serves its versions as kinds, as on a real server."""
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        for version in spec.get("versions") or []:
            kind = Kind(group=spec.get("group", ""), version=version.get("name", ""),
                        kind=names.get("kind", ""), plural=names.get("plural", ""),
                        namespaced=spec.get("scope") == "Namespaced",
                        status_subresource="status" in (version.get("subresources") or {}),
                        short_names=tuple(names.get("shortNames") or ()))
            if removed:
                self.kinds.remove(kind.group, kind.version, kind.plural)
            elif version.get("served", True):
                self.kinds.add(kind)


def _spec_of(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}
