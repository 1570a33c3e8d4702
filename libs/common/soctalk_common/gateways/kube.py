"""Kubernetes gateway: the only place services talk to the Kubernetes API (kubernetes_asyncio).

What callers can rely on:

* Every method names the object in its errors and raises only the typed errors of
  ``soctalk_common.errors``: ``NotFound``, ``Conflict``, ``Forbidden``, ``Unauthorized``,
  ``InvalidObject`` (400/422), ``Unavailable`` (unreachable, 429, 5xx, timeouts).
  Messages never contain Secret data.
* ``Unavailable`` is retried inside each call with bounded, jittered exponential backoff
  (``retries`` attempts in total); every other error is raised at once. A retried *create* whose
  first attempt did reach the server surfaces as ``Conflict`` on the retry.
* Idempotent by design: ``ensure_namespace``, ``delete_namespace``, ``delete_secret``, ``delete``,
  ``apply`` and ``restart_workloads`` can be repeated safely.
* Every request has a timeout (``request_timeout``); ``wait_ready`` and ``delete_namespace(wait=True)``
  are bounded by their deadline and are event driven (watch), not polling.

Objects are plain dicts in the API's JSON form; Secrets are exposed as ``SecretRecord`` with decoded
string values. The version label of a secret lives in the ``soctalk.io/version-label`` annotation.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter
from yarl import URL

from soctalk_common.errors import (
    Conflict,
    Forbidden,
    GatewayError,
    InvalidObject,
    NotFound,
    Unauthorized,
    Unavailable,
)
from soctalk_common.gateways import ConfigurationError
from soctalk_common.gateways._kube_client import (  # not `import kubernetes_asyncio`: see that module
    ApiClient,
    ConfigException,
    Configuration,
    load_incluster_config,
    load_kube_config,
)

__all__ = ["ConfigurationError", "KubeGateway", "ReadinessReport", "SecretRecord", "WorkloadStatus",
           "build_report", "workload_status"]

VERSION_LABEL_ANNOTATION = "soctalk.io/version-label"
RESTARTED_AT_ANNOTATION = "kubectl.kubernetes.io/restartedAt"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")
_JSON = "application/json"
_MERGE = "application/merge-patch+json"
_STRATEGIC = "application/strategic-merge-patch+json"
_APPLY = "application/apply-patch+yaml"
_POD_FAILURES = {"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError",
                 "InvalidImageName", "CreateContainerError", "RunContainerError"}


class _Expired(Exception):
    """A watch's resourceVersion is older than the server's history (410): list again."""


@dataclass(frozen=True)
class SecretRecord:
    namespace: str
    name: str
    data: dict[str, str]  # decoded (UTF-8; undecodable bytes are replaced)
    labels: dict[str, str]
    annotations: dict[str, str]
    version_label: str | None
    resource_version: str | None
    type: str = "Opaque"


@dataclass(frozen=True)
class WorkloadStatus:
    kind: str
    name: str
    ready: bool
    reason: str


@dataclass(frozen=True)
class ReadinessReport:
    ready: bool
    workloads: list[WorkloadStatus]
    failing: list[WorkloadStatus] = field(default_factory=list)


@dataclass(frozen=True)
class _Resource:
    base: str  # /api/v1 or /apis/<group>/<version>
    plural: str
    namespaced: bool
    kind: str

    def path(self, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
        parts = [self.base]
        if self.namespaced and namespace:
            parts += ["namespaces", quote(namespace, safe="")]
        parts.append(self.plural)
        if name:
            parts.append(quote(name, safe=""))
        if sub:
            parts.append(sub)
        return "/".join(parts)


_CORE = {
    "Namespace": _Resource("/api/v1", "namespaces", False, "Namespace"),
    "Secret": _Resource("/api/v1", "secrets", True, "Secret"),
    "Pod": _Resource("/api/v1", "pods", True, "Pod"),
    "Deployment": _Resource("/apis/apps/v1", "deployments", True, "Deployment"),
    "StatefulSet": _Resource("/apis/apps/v1", "statefulsets", True, "StatefulSet"),
    "DaemonSet": _Resource("/apis/apps/v1", "daemonsets", True, "DaemonSet"),
    "Job": _Resource("/apis/batch/v1", "jobs", True, "Job"),
}


# --- readiness rules (pure) ---------------------------------------------------------------------


def _condition(obj: dict, kind: str) -> dict | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return None


def workload_status(obj: dict) -> tuple[WorkloadStatus, bool]:
    """Classify one Deployment / StatefulSet / Job: ``(status, failed)``.

    ``failed`` means it will not become ready without a change (a Job that failed, a Deployment
    past its progress deadline); a workload that is merely not ready yet is not failed.
    """
    kind, meta = obj.get("kind", ""), obj.get("metadata") or {}
    name, spec, status = meta.get("name", ""), obj.get("spec") or {}, obj.get("status") or {}

    def result(ready: bool, reason: str, failed: bool = False) -> tuple[WorkloadStatus, bool]:
        return WorkloadStatus(kind, name, ready, reason), failed

    if meta.get("deletionTimestamp"):
        return result(False, "being deleted")
    if kind == "Job":
        for cond_type, failed in (("Complete", False), ("Failed", True)):
            cond = _condition(obj, cond_type)
            if cond and cond.get("status") == "True":
                text = cond.get("reason") or cond_type
                return result(not failed, f"{text}: {cond.get('message', '')}".rstrip(": "), failed)
        return result(False, f"{status.get('succeeded', 0)}/{spec.get('completions', 1)} completions")
    if status.get("observedGeneration", 0) < meta.get("generation", 0):
        return result(False, "spec change not yet observed")
    want = spec.get("replicas", 1)
    updated, ready_n = status.get("updatedReplicas", 0), status.get("readyReplicas", 0)
    if kind == "Deployment":
        progressing = _condition(obj, "Progressing")
        if progressing and progressing.get("reason") == "ProgressDeadlineExceeded":
            return result(False, f"ProgressDeadlineExceeded: {progressing.get('message', '')}", True)
        available = status.get("availableReplicas", 0)
        if updated < want:
            return result(False, f"{updated}/{want} replicas updated")
        if status.get("replicas", 0) > updated:
            return result(False, f"{status.get('replicas', 0) - updated} old replicas pending termination")
        if available < want:
            return result(False, f"{available}/{want} replicas available")
        return result(True, f"{available}/{want} replicas available")
    if kind == "StatefulSet":
        if ready_n < want:
            return result(False, f"{ready_n}/{want} replicas ready")
        if status.get("updateRevision") and status.get("currentRevision") != status.get("updateRevision"):
            return result(False, f"{updated}/{want} replicas updated")
        return result(True, f"{ready_n}/{want} replicas ready")
    return result(True, "not a workload kind")


def _pod_problems(pods: list[dict]) -> dict[str, str]:
    """Waiting reasons of pods, keyed by the pod's app labels, to explain unready workloads."""
    problems: dict[str, str] = {}
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in _POD_FAILURES:
                problems[pod["metadata"]["name"]] = waiting["reason"]
    return problems


def _matches_selector(labels: dict[str, str], selector: dict) -> bool:
    match = (selector or {}).get("matchLabels") or {}
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def _waiting(obj: dict) -> bool:
    """Not ready and not failed: the case :func:`build_report` explains with the pods' states."""
    status, failed = workload_status(obj)
    return not status.ready and not failed and obj.get("kind") != "Job"


def build_report(workloads: Iterable[dict], pods: Iterable[dict] = ()) -> ReadinessReport:
    pods = list(pods)
    statuses, failing = [], []
    for obj in sorted(workloads, key=lambda o: (o.get("kind", ""), o["metadata"]["name"])):
        status, failed = workload_status(obj)
        if not status.ready and not failed and obj.get("kind") != "Job":
            selector = (obj.get("spec") or {}).get("selector") or {}
            mine = [p for p in pods if _matches_selector((p["metadata"].get("labels") or {}), selector)]
            problems = _pod_problems(mine)
            if problems:
                detail = ", ".join(f"pod {n}: {r}" for n, r in sorted(problems.items()))
                status = WorkloadStatus(status.kind, status.name, False, f"{status.reason}; {detail}")
        statuses.append(status)
        if failed:
            failing.append(status)
    return ReadinessReport(all(s.ready for s in statuses), statuses, failing)


# --- gateway ------------------------------------------------------------------------------------


def _encode(data: dict[str, str]) -> dict[str, str]:
    return {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}


def _record(obj: dict) -> SecretRecord:
    meta = obj.get("metadata") or {}
    annotations = dict(meta.get("annotations") or {})
    data = {k: base64.b64decode(v or "").decode("utf-8", errors="replace")
            for k, v in (obj.get("data") or {}).items()}
    return SecretRecord(
        namespace=meta.get("namespace", ""), name=meta.get("name", ""), data=data,
        labels=dict(meta.get("labels") or {}), annotations=annotations,
        version_label=annotations.get(VERSION_LABEL_ANNOTATION),
        resource_version=meta.get("resourceVersion"), type=obj.get("type") or "Opaque",
    )


def _resolve_proxy_once(api_client: ApiClient) -> None:
    """Look up the proxy for the API server once, not on every request.

    kubernetes_asyncio's HTTP session trusts the environment, so aiohttp re-reads the proxy variables
    and ``~/.netrc`` on every request (in a worker thread): ~18 % of the secrets service's busy time.
    The answer cannot change for one server while the process runs, so it is resolved here (same
    rules: ``HTTPS_PROXY``/``NO_PROXY``, credentials in the proxy URL) and the session stops looking.
    A proxy set in the configuration (kubeconfig ``proxy-url``) is kept as it is."""
    rest = getattr(api_client, "rest_client", None)
    session = getattr(rest, "pool_manager", None)
    if rest is None or session is None or not getattr(session, "_trust_env", False):
        return
    if not getattr(rest, "proxy", None):
        try:
            proxy, auth = get_env_proxy_for_url(URL(api_client.configuration.host))
        except LookupError:  # no proxy for this server
            pass
        else:
            rest.proxy = str(proxy.with_user(auth.login).with_password(auth.password) if auth else proxy)
    session._trust_env = False  # aiohttp has no public setter; the session is not in use yet


class KubeGateway:
    def __init__(self, api_client: ApiClient, *, request_timeout: float = 30.0,
                 retries: int = 4, backoff_max: float = 2.0) -> None:
        _resolve_proxy_once(api_client)
        self._api = api_client
        self._server = api_client.configuration.host
        self._timeout = request_timeout
        self._retries = max(1, retries)
        self._backoff_max = backoff_max
        self._resources: dict[tuple[str, str], _Resource] = {}
        self._resources_lock = asyncio.Lock()

    @classmethod
    async def from_kubeconfig(cls, path: str | None = None, context: str | None = None,
                              **options: Any) -> KubeGateway:
        """Connect with a kubeconfig file (default: ``$KUBECONFIG`` or ``~/.kube/config``)."""
        configuration = Configuration()
        try:
            await load_kube_config(config_file=path, context=context,
                                   client_configuration=configuration, persist_config=False)
        except (ConfigException, OSError) as exc:
            raise ConfigurationError(f"kubeconfig {path or '(default)'}: cannot be loaded: {exc}") from exc
        return cls(ApiClient(configuration), **options)

    @classmethod
    async def in_cluster(cls, **options: Any) -> KubeGateway:
        """Connect with the pod's service account token (refreshed as it rotates)."""
        configuration = Configuration()
        try:
            load_incluster_config(client_configuration=configuration)
        except (ConfigException, OSError) as exc:
            raise ConfigurationError(f"in-cluster configuration unavailable: {exc}") from exc
        return cls(ApiClient(configuration), **options)

    async def close(self) -> None:
        await self._api.close()

    async def __aenter__(self) -> KubeGateway:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- transport ------------------------------------------------------------------------------

    async def _once(self, method: str, path: str, what: str, *, query: dict | None = None,
                    body: Any = None, content_type: str = _JSON) -> Any:
        params = [(k, v) for k, v in (query or {}).items() if v is not None]
        try:
            response = await self._api.call_api(
                path, method, query_params=params, body=body, auth_settings=["BearerToken"],
                header_params={"Content-Type": content_type, "Accept": _JSON},
                _preload_content=False, _request_timeout=self._timeout)
            try:
                raw = await response.read()
            finally:
                response.release()
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise Unavailable(f"{what}: no answer from the API server {self._server} "
                              f"within {self._timeout:g}s") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise Unavailable(f"{what}: API server {self._server} unreachable: "
                              f"{type(exc).__name__}: {exc}") from exc
        if 200 <= response.status < 300:
            return json.loads(raw) if raw else None
        raise self._error(response.status, raw, what, response.headers.get("Retry-After"))

    def _error(self, code: int, raw: bytes, what: str, retry_after: str | None = None) -> GatewayError:
        try:
            status = json.loads(raw)
            detail = f"{status.get('reason') or code}: {status.get('message') or ''}".strip(": ")
        except ValueError:
            detail = f"HTTP {code}"
        detail = detail[:400]
        if code == 401:
            return Unauthorized(f"{what}: the API server rejected our credentials (401 {detail})")
        if code == 403:
            return Forbidden(f"{what}: forbidden (403 {detail})")
        if code == 404:
            return NotFound(f"{what}: not found (404 {detail})")
        if code == 409:
            return Conflict(f"{what}: conflict (409 {detail})")
        if code in (400, 422):
            return InvalidObject(f"{what}: rejected as invalid ({code} {detail})")
        delay = float(retry_after) if retry_after and retry_after.isdigit() else 5.0
        if code == 429 or code >= 500 or code == 410:
            return Unavailable(f"{what}: API server answered {code} ({detail})", delay=delay)
        return InvalidObject(f"{what}: unexpected answer {code} ({detail})")

    async def _call(self, method: str, path: str, what: str, **kwargs: Any) -> Any:
        """One request, retried on ``Unavailable`` with bounded jittered backoff."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(Unavailable), stop=stop_after_attempt(self._retries),
            wait=wait_exponential_jitter(multiplier=0.1, max=self._backoff_max, jitter=0.1), reraise=True,
        ):
            with attempt:
                return await self._once(method, path, what, **kwargs)
        raise AssertionError("unreachable")

    async def _get_or_none(self, path: str, what: str) -> dict | None:
        try:
            return await self._call("GET", path, what)
        except NotFound:
            return None

    async def _resource(self, api_version: str, kind: str) -> _Resource:
        """Map (apiVersion, kind) to its REST path via discovery (cached; refreshed once on a miss)."""
        key = (api_version, kind)
        if key in self._resources:
            return self._resources[key]
        async with self._resources_lock:
            if key not in self._resources:
                base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
                try:
                    doc = await self._call("GET", base, f"API group version {api_version}")
                except NotFound as exc:
                    raise NotFound(f"{kind} ({api_version}): the API server does not serve "
                                   f"{api_version}") from exc
                for res in doc.get("resources") or []:
                    if "/" not in res["name"]:
                        self._resources[(api_version, res["kind"])] = _Resource(
                            base, res["name"], res["namespaced"], res["kind"])
        if key not in self._resources:
            raise NotFound(f"{kind} ({api_version}): the API server does not serve this kind")
        return self._resources[key]

    # --- namespaces -----------------------------------------------------------------------------

    async def ensure_namespace(self, name: str, labels: dict[str, str]) -> None:
        """Create the namespace or merge ``labels`` into it. ``Conflict`` if it is being deleted."""
        what = f"namespace {name}"
        ns = _CORE["Namespace"]
        try:  # create first: onboarding is the common call, and an existing one answers 409
            await self._call("POST", ns.path(), what,
                             body={"apiVersion": "v1", "kind": "Namespace",
                                   "metadata": {"name": name, "labels": labels}})
            return
        except Conflict:
            current = await self._call("GET", ns.path(name=name), what)
        if current["metadata"].get("deletionTimestamp"):
            raise Conflict(f"{what}: is being deleted; retry once it is gone", delay=5.0)
        have = current["metadata"].get("labels") or {}
        if any(have.get(k) != v for k, v in labels.items()):
            await self._call("PATCH", ns.path(name=name), what, content_type=_MERGE,
                             body={"metadata": {"labels": labels}})

    async def namespace_exists(self, name: str) -> bool:
        """True while the namespace exists, including while it is terminating."""
        return await self._get_or_none(_CORE["Namespace"].path(name=name), f"namespace {name}") is not None

    async def delete_namespace(self, name: str, *, wait: bool = False,
                               timeout: float = 60) -> None:  # noqa: ASYNC109 (the port's contract)
        """Delete (idempotent). With ``wait``, return once it is gone; ``Unavailable`` after ``timeout``."""
        what = f"namespace {name}"
        ns = _CORE["Namespace"]
        try:
            await self._call("DELETE", ns.path(name=name), what,
                             body={"kind": "DeleteOptions", "apiVersion": "v1",
                                   "propagationPolicy": "Background"})
        except NotFound:
            return
        if not wait:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            current = await self._get_or_none(ns.path(name=name), what)
            if current is None:
                return
            rv = current["metadata"]["resourceVersion"]
            with contextlib.suppress(_Expired):
                async for event_type, _ in self._watch(ns, None, deadline, rv=rv,
                                                       field_selector=f"metadata.name={name}"):
                    if event_type == "DELETED":
                        return
        raise Unavailable(f"{what}: still terminating after {timeout:g}s", delay=10.0)

    # --- secrets --------------------------------------------------------------------------------

    async def create_secret(self, namespace: str, name: str, data: dict[str, str], *,
                            labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
                            version_label: str = "v1") -> None:
        """Create an Opaque Secret. ``Conflict`` if it already exists."""
        annotations = {**(annotations or {}), VERSION_LABEL_ANNOTATION: version_label}
        body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "data": _encode(data),
                "metadata": {"name": name, "namespace": namespace, "labels": labels or {},
                             "annotations": annotations}}
        await self._call("POST", _CORE["Secret"].path(namespace), f"secret {namespace}/{name}", body=body)

    async def read_secret(self, namespace: str, name: str) -> SecretRecord | None:
        obj = await self._get_or_none(_CORE["Secret"].path(namespace, name), f"secret {namespace}/{name}")
        return None if obj is None else _record(obj)

    async def patch_secret(self, namespace: str, name: str, data: dict[str, str], *, version_label: str,
                           annotations: dict[str, str] | None = None) -> None:
        """Merge ``data`` keys into the Secret (other keys stay) and set its version label.

        ``NotFound`` if the Secret does not exist.
        """
        annotations = {**(annotations or {}), VERSION_LABEL_ANNOTATION: version_label}
        await self._call("PATCH", _CORE["Secret"].path(namespace, name), f"secret {namespace}/{name}",
                         content_type=_MERGE,
                         body={"data": _encode(data), "metadata": {"annotations": annotations}})

    async def delete_secret(self, namespace: str, name: str) -> None:
        with contextlib.suppress(NotFound):
            await self._call("DELETE", _CORE["Secret"].path(namespace, name), f"secret {namespace}/{name}")

    async def list_secrets(self, namespace: str, label_selector: str | None = None) -> list[SecretRecord]:
        doc = await self._call("GET", _CORE["Secret"].path(namespace), f"secrets in namespace {namespace}",
                               query={"labelSelector": label_selector})
        return [_record(obj) for obj in doc.get("items") or []]

    # --- any kind -------------------------------------------------------------------------------

    def _describe(self, kind: str, name: str, namespace: str | None) -> str:
        return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"

    async def apply(self, obj: dict, *, field_manager: str = "soctalk", force: bool = True) -> dict:
        """Server-side apply ``obj`` (created if missing); returns the object as stored."""
        meta = obj.get("metadata") or {}
        kind, name, namespace = obj.get("kind", ""), meta.get("name", ""), meta.get("namespace")
        if not obj.get("apiVersion") or not kind or not name:
            raise InvalidObject(f"apply: object needs apiVersion, kind and metadata.name (got {kind} {name})")
        res = await self._resource(obj["apiVersion"], kind)
        what = self._describe(kind, name, namespace)
        if res.namespaced and not namespace:
            raise InvalidObject(f"{what}: metadata.namespace is required for a namespaced kind")
        return await self._call("PATCH", res.path(namespace, name), what, content_type=_APPLY, body=obj,
                                query={"fieldManager": field_manager, "force": "true" if force else None})

    async def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict | None:
        res = await self._resource(api_version, kind)
        return await self._get_or_none(res.path(namespace, name), self._describe(kind, name, namespace))

    async def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> None:
        res = await self._resource(api_version, kind)
        with contextlib.suppress(NotFound):
            await self._call("DELETE", res.path(namespace, name), self._describe(kind, name, namespace),
                             body={"kind": "DeleteOptions", "apiVersion": "v1",
                                   "propagationPolicy": "Background"})

    # --- workloads ------------------------------------------------------------------------------

    async def _list_raw(self, res: _Resource, namespace: str, label_selector: str | None) -> dict:
        doc = await self._call("GET", res.path(namespace), f"{res.kind} list in namespace {namespace}",
                               query={"labelSelector": label_selector})
        for item in doc.get("items") or []:
            item["kind"] = res.kind
        return doc

    async def readiness(self, namespace: str, label_selector: str | None = None) -> ReadinessReport:
        """One snapshot of the Deployments, StatefulSets and Jobs in ``namespace``; never waits.

        Pods are listed only when a workload is still waiting (their states explain why): the usual
        snapshot of a ready namespace costs three lists, not four."""
        docs = await asyncio.gather(*(self._list_raw(_CORE[k], namespace, label_selector)
                                      for k in WORKLOAD_KINDS))
        workloads = [obj for doc in docs for obj in doc.get("items") or []]
        if not any(_waiting(obj) for obj in workloads):
            return build_report(workloads)
        pods = await self._list_raw(_CORE["Pod"], namespace, label_selector)
        return build_report(workloads, pods.get("items") or [])

    async def wait_ready(self, namespace: str, *, deadline: float, label_selector: str | None = None
                         ) -> ReadinessReport:
        """Watch until every workload is ready, one has failed, or ``deadline`` (``loop.time()``).

        Returns the last report; at the deadline the workloads still not ready are listed in
        ``failing`` with the reason they were waiting for.
        """
        loop = asyncio.get_running_loop()
        state: dict[tuple[str, str], dict] = {}
        versions: dict[str, str] = {}
        for kind in WORKLOAD_KINDS:
            doc = await self._list_raw(_CORE[kind], namespace, label_selector)
            versions[kind] = doc["metadata"].get("resourceVersion", "")
            for obj in doc.get("items") or []:
                state[(kind, obj["metadata"]["name"])] = obj
        changed: asyncio.Queue[BaseException | None] = asyncio.Queue()

        async def follow(kind: str) -> None:
            rv, backoff = versions[kind], 0.05
            while loop.time() < deadline:
                try:
                    async for event_type, obj in self._watch(_CORE[kind], namespace, deadline, rv=rv,
                                                             label_selector=label_selector):
                        obj["kind"] = kind
                        rv = obj["metadata"].get("resourceVersion", rv)
                        key = (kind, obj["metadata"]["name"])
                        if event_type == "DELETED":
                            state.pop(key, None)
                        else:
                            state[key] = obj
                        changed.put_nowait(None)
                    backoff = 0.05
                except _Expired:  # our resourceVersion is too old: list again
                    doc = await self._list_raw(_CORE[kind], namespace, label_selector)
                    rv = doc["metadata"].get("resourceVersion", "")
                    for key in [k for k in state if k[0] == kind]:
                        del state[key]
                    state.update({(kind, o["metadata"]["name"]): o for o in doc.get("items") or []})
                    changed.put_nowait(None)
                except Unavailable:  # a broken stream: back off briefly, then resume from rv
                    await asyncio.sleep(min(backoff, max(0.0, deadline - loop.time())))
                    backoff = min(backoff * 2, self._backoff_max)
                except BaseException as exc:  # Forbidden etc.: hand it to the waiting caller
                    changed.put_nowait(exc)
                    raise

        watchers = [asyncio.create_task(follow(kind)) for kind in WORKLOAD_KINDS]
        try:
            while True:
                report = build_report(state.values())
                if report.ready or report.failing:
                    return report
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        problem = await changed.get()
                except TimeoutError:
                    break
                if problem is not None:
                    raise problem
        finally:
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
        report = await self.readiness(namespace, label_selector)
        if report.ready or report.failing:
            return report
        late = [WorkloadStatus(s.kind, s.name, False, f"not ready by the deadline: {s.reason}")
                for s in report.workloads if not s.ready]
        return ReadinessReport(False, report.workloads, late)

    async def _watch(self, res: _Resource, namespace: str | None, deadline: float, *, rv: str,
                     label_selector: str | None = None, field_selector: str | None = None
                     ) -> AsyncIterator[tuple[str, dict]]:
        """Yield ``(event type, object)`` from ``rv`` on until the deadline or the server ends the watch."""
        loop = asyncio.get_running_loop()
        remaining = deadline - loop.time()
        if remaining <= 0:
            return
        what = f"watch of {res.kind} in {namespace or 'all namespaces'}"
        query = [("watch", "true"), ("resourceVersion", rv), ("allowWatchBookmarks", "false"),
                 ("timeoutSeconds", str(max(1, int(remaining) + 1)))]
        if label_selector:
            query.append(("labelSelector", label_selector))
        if field_selector:
            query.append(("fieldSelector", field_selector))
        try:
            response = await self._api.call_api(
                res.path(namespace), "GET", query_params=query, auth_settings=["BearerToken"],
                header_params={"Accept": _JSON}, _preload_content=False,
                _request_timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeout))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise Unavailable(f"{what}: API server {self._server} unreachable: {exc}") from exc
        try:
            if response.status == 410:
                raise _Expired(what)
            if response.status != 200:
                raise self._error(response.status, await response.read(), what)
            while (remaining := deadline - loop.time()) > 0:
                try:
                    async with asyncio.timeout(remaining):  # not wait_for: it can swallow a cancel
                        line = await response.content.readline()
                except TimeoutError:
                    return
                if not line:
                    return
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    if status.get("code") == 410:
                        raise _Expired(what)
                    raise self._error(status.get("code", 500), json.dumps(status).encode(), what)
                if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                    yield event["type"], event["object"]
        except (aiohttp.ClientError, OSError) as exc:
            raise Unavailable(f"{what}: stream broken: {exc}") from exc
        finally:
            response.release()

    async def restart_workloads(self, namespace: str, names: list[tuple[str, str]]) -> None:
        """Roll the pods of each ``(kind, name)`` by stamping ``kubectl.kubernetes.io/restartedAt``."""
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT_ANNOTATION: stamp}}}}}
        for kind, name in names:
            res = _CORE.get(kind[:1].upper() + kind[1:])
            if res is None or res.kind not in ("Deployment", "StatefulSet", "DaemonSet"):
                raise InvalidObject(f"{kind} {namespace}/{name}: only Deployments, StatefulSets and "
                                    "DaemonSets can be restarted")
            await self._call("PATCH", res.path(namespace, name), f"{res.kind} {namespace}/{name}",
                             content_type=_STRATEGIC, body=body)

    async def can_i(self, *, service_account: str, namespace: str, verb: str, resource: str,
                    resource_namespace: str, name: str | None = None) -> bool:
        """Ask the API server (SubjectAccessReview) whether the ServiceAccount may do ``verb``.

        ``resource`` is ``plural`` or ``plural.group`` (``secrets``, ``deployments.apps``).
        """
        plural, _, group = resource.partition(".")
        attributes = {"namespace": resource_namespace, "verb": verb, "resource": plural, "group": group}
        if name:
            attributes["name"] = name
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                "spec": {"user": f"system:serviceaccount:{namespace}:{service_account}",
                         "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}",
                                    "system:authenticated"],
                         "resourceAttributes": attributes}}
        what = f"access review for serviceaccount {namespace}/{service_account} ({verb} {resource})"
        path = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
        review = await self._call("POST", path, what, body=body)
        return bool((review.get("status") or {}).get("allowed"))

    # ``list`` is defined last so that ``list[...]`` annotations above mean the builtin.
    async def list(self, api_version: str, kind: str, namespace: str | None = None,
                   label_selector: str | None = None) -> list[dict]:
        res = await self._resource(api_version, kind)
        where = f"in namespace {namespace}" if namespace else "in all namespaces"
        doc = await self._call("GET", res.path(namespace), f"{kind} list {where}",
                               query={"labelSelector": label_selector})
        items = doc.get("items") or []
        for item in items:  # list items may omit them; callers get complete objects
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return items
