"""A simulated kubelet: makes Deployments, StatefulSets and Jobs look ready (or failed).

It talks to the API server only through kubernetes_asyncio, so it works against the emulator and
against a real API server without nodes. It watches the three kinds cluster-wide (namespaces
starting with ``namespace_prefix``; ``""`` means all) and, ``delay`` seconds after a workload's
generation first appears, patches its ``status`` subresource:

* Deployment: ``observedGeneration``, ``replicas``/``updatedReplicas``/``readyReplicas``/
  ``availableReplicas`` = ``spec.replicas``, conditions ``Available=True`` and ``Progressing=True``.
* StatefulSet: the same counters plus ``currentRevision == updateRevision``.
* Job: ``succeeded``, ``startTime``/``completionTime``, conditions ``SuccessCriteriaMet`` and
  ``Complete``.

A workload named in ``failing`` (``"namespace/name"``; change it at runtime with ``fail``/``heal``)
gets the failure shape instead: a Deployment with zero available replicas and
``Progressing=False/ProgressDeadlineExceeded``, a StatefulSet with zero ready replicas, a Job with
``Failed=True/BackoffLimitExceeded``.

On an API server that also runs a controller-manager but has no nodes, those controllers derive
workload status from pods that never start. So the kubelet also acts on *unscheduled* pods
(``spec.nodeName`` empty; pods a real kubelet owns are never touched) of the workloads it manages:
it marks them Running and Ready (Succeeded for Jobs), unless their workload is failing, and the
real controllers then reach the same verdict. Should a controller still rewrite a workload's status,
the kubelet re-asserts it with a growing pause (up to 5 s) instead of fighting in a tight loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
from kubernetes_asyncio import client

log = logging.getLogger(__name__)

ApiClientFactory = Callable[[], "client.ApiClient | Awaitable[client.ApiClient]"]
_PATHS = {"Deployment": "/apis/apps/v1", "StatefulSet": "/apis/apps/v1", "Job": "/apis/batch/v1",
          "Pod": "/api/v1"}
_PLURALS = {"Deployment": "deployments", "StatefulSet": "statefulsets", "Job": "jobs", "Pod": "pods"}
_MAX_PAUSE = 5.0


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cond(kind: str, status: bool, reason: str, message: str = "") -> dict:
    now = _now()
    return {"type": kind, "status": "True" if status else "False", "reason": reason, "message": message,
            "lastTransitionTime": now, "lastUpdateTime": now}


def desired_status(obj: dict, failing: bool) -> dict:
    """The status a healthy (or failing) kubelet + controllers would eventually report."""
    kind, meta, spec = obj["kind"], obj["metadata"], obj.get("spec") or {}
    generation = meta.get("generation", 1)
    if kind == "Job":
        if failing:
            limit = spec.get("backoffLimit", 6)
            return {"active": 0, "failed": limit + 1, "startTime": _now(),
                    "conditions": [_cond("FailureTarget", True, "BackoffLimitExceeded", "simulated failure"),
                                   _cond("Failed", True, "BackoffLimitExceeded",
                                         "Job has reached the specified backoff limit (simulated)")]}
        return {"active": 0, "succeeded": spec.get("completions", 1), "startTime": _now(),
                "completionTime": _now(), "ready": 0,
                "conditions": [_cond("SuccessCriteriaMet", True, "CompletionsReached"),
                               _cond("Complete", True, "CompletionsReached")]}
    replicas = spec.get("replicas", 1)
    ready = 0 if failing else replicas
    status: dict[str, Any] = {"observedGeneration": generation, "replicas": replicas,
                              "updatedReplicas": replicas, "readyReplicas": ready,
                              "availableReplicas": ready}
    if kind == "Deployment":
        status["unavailableReplicas"] = replicas - ready
        if failing:
            status["conditions"] = [
                _cond("Available", False, "MinimumReplicasUnavailable", "simulated failure"),
                _cond("Progressing", False, "ProgressDeadlineExceeded",
                      f'ReplicaSet "{meta["name"]}" has timed out progressing (simulated)')]
        else:
            status["conditions"] = [
                _cond("Available", True, "MinimumReplicasAvailable", "Deployment has minimum availability."),
                _cond("Progressing", True, "NewReplicaSetAvailable", "simulated rollout complete")]
    else:  # StatefulSet
        revision = f"{meta['name']}-sim{generation}"
        status.update(currentReplicas=replicas, currentRevision=revision, updateRevision=revision)
    return status


def pod_owner(pod: dict) -> tuple[str, str] | None:
    """``(kind, name)`` of the workload that owns ``pod`` (through its ReplicaSet for Deployments)."""
    for ref in pod["metadata"].get("ownerReferences") or []:
        if ref.get("kind") in ("StatefulSet", "Job"):
            return ref["kind"], ref["name"]
        if ref.get("kind") == "ReplicaSet":
            suffix = (pod["metadata"].get("labels") or {}).get("pod-template-hash", "")
            name = ref["name"]
            if suffix and name.endswith(f"-{suffix}"):
                name = name[: -len(suffix) - 1]
            return "Deployment", name
    return None


def pod_status(pod: dict, owner_kind: str) -> dict | None:
    """The status to write for an unscheduled pod, or None if it needs nothing."""
    if (pod.get("spec") or {}).get("nodeName"):
        return None  # a real kubelet owns it
    status = pod.get("status") or {}
    if owner_kind == "Job":
        if status.get("phase") == "Succeeded":
            return None
        return {"phase": "Succeeded", "conditions": [_cond("PodScheduled", True, "Simulated")]}
    ready = {c.get("type"): c.get("status") for c in status.get("conditions") or []}.get("Ready")
    if status.get("phase") == "Running" and ready == "True":
        return None
    return {"phase": "Running", "startTime": _now(), "conditions": [
        _cond(t, True, "Simulated") for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]}


def in_desired_state(obj: dict, failing: bool) -> bool:
    kind, status = obj["kind"], obj.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    if kind == "Job":
        return any(conditions.get(t, {}).get("status") == "True" for t in ("Complete", "Failed"))
    want = desired_status(obj, failing)
    keys = ("observedGeneration", "replicas", "updatedReplicas", "readyReplicas", "availableReplicas")
    if any(status.get(k, 0) != want[k] for k in keys):
        return False
    if kind == "Deployment":
        progressing = conditions.get("Progressing", {})
        return (progressing.get("reason") == "ProgressDeadlineExceeded") == failing
    return status.get("currentRevision") == want["currentRevision"]


class SimulatedKubelet:
    def __init__(self, api_client_factory: ApiClientFactory, delay: float = 0.0,
                 failing: set[str] | None = None, namespace_prefix: str = "tenant-") -> None:
        self._factory = api_client_factory
        self.delay = delay
        self.failing: set[str] = set(failing or ())
        self.namespace_prefix = namespace_prefix
        self._api: client.ApiClient | None = None
        self._tasks: list[asyncio.Task] = []
        self._timers: dict[tuple[str, str, str], asyncio.TimerHandle] = {}
        self._scheduled: dict[tuple[str, str, str], tuple[int, bool]] = {}  # key -> (generation, failing)
        self._pause: dict[tuple[str, str, str], float] = {}
        self._seen: dict[tuple[str, str, str], dict] = {}
        self._patches: set[asyncio.Task] = set()
        self.patched = 0  # workload status writes so far (for tests and the demo's log)
        self.pods_marked = 0  # unscheduled pods marked Ready / Succeeded

    async def start(self) -> SimulatedKubelet:
        api = self._factory()
        self._api = await api if inspect.isawaitable(api) else api
        synced = [asyncio.Event() for _ in _PATHS]
        self._tasks = [asyncio.create_task(self._follow(kind, ev), name=f"kubelet-{kind}")
                       for kind, ev in zip(_PATHS, synced, strict=True)]
        await asyncio.gather(*(ev.wait() for ev in synced))  # initial lists done: nothing is missed
        return self

    async def stop(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for task in [*self._tasks, *self._patches]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._patches, return_exceptions=True)
        self._tasks, self._patches = [], set()
        if self._api is not None:
            await self._api.close()
            self._api = None

    async def __aenter__(self) -> SimulatedKubelet:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def fail(self, ref: str) -> None:
        """Make ``namespace/name`` fail from now on (re-evaluated at once)."""
        self.failing.add(ref)
        self._reconsider(ref)

    def heal(self, ref: str) -> None:
        self.failing.discard(ref)
        self._reconsider(ref)

    def _reconsider(self, ref: str) -> None:
        for key, obj in list(self._seen.items()):
            owner = pod_owner(obj) if key[0] == "Pod" else (key[0], key[2])
            if owner and f"{key[1]}/{owner[1]}" == ref:
                self._scheduled.pop(key, None)
                self._handle(obj)

    # --- watching -------------------------------------------------------------------------------

    async def _request(self, method: str, path: str, *, query: list | None = None, body: Any = None,
                       stream: bool = False) -> Any:
        assert self._api is not None
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10) if stream else 30
        return await self._api.call_api(
            path, method, query_params=query or [], body=body, auth_settings=["BearerToken"],
            header_params={"Accept": "application/json", "Content-Type": "application/merge-patch+json"},
            _preload_content=False, _request_timeout=timeout)

    async def _follow(self, kind: str, synced: asyncio.Event) -> None:
        path = f"{_PATHS[kind]}/{_PLURALS[kind]}"
        rv: str | None = None
        pause = 0.05
        while True:
            try:
                if rv is None:
                    response = await self._request("GET", path)
                    doc = json.loads(await response.read())
                    response.release()
                    if response.status != 200:
                        raise RuntimeError(f"listing {kind}s answered {response.status}")
                    rv = doc["metadata"]["resourceVersion"]
                    for obj in doc.get("items") or []:
                        obj["kind"] = kind
                        self._handle(obj)
                    synced.set()
                response = await self._request("GET", path, stream=True, query=[
                    ("watch", "true"), ("resourceVersion", rv), ("timeoutSeconds", "300")])
                try:
                    while line := await response.content.readline():
                        event = json.loads(line)
                        obj = event.get("object") or {}
                        if event.get("type") == "ERROR":
                            rv = None  # expired: list again
                            break
                        obj["kind"] = kind
                        rv = obj["metadata"].get("resourceVersion", rv)
                        if event["type"] == "DELETED":
                            self._forget(obj)
                        else:
                            self._handle(obj)
                finally:
                    response.release()
                pause = 0.05
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the API server went away or hiccuped: keep trying
                log.debug("kubelet watch of %ss failed: %s", kind, exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, _MAX_PAUSE)

    # --- deciding and patching ------------------------------------------------------------------

    def _key(self, obj: dict) -> tuple[str, str, str]:
        meta = obj["metadata"]
        return obj["kind"], meta.get("namespace", ""), meta["name"]

    def _forget(self, obj: dict) -> None:
        key = self._key(obj)
        handle = self._timers.pop(key, None)
        if handle:
            handle.cancel()
        for table in (self._scheduled, self._pause, self._seen):
            table.pop(key, None)

    def _handle(self, obj: dict) -> None:
        key = self._key(obj)
        if not key[1].startswith(self.namespace_prefix) or obj["metadata"].get("deletionTimestamp"):
            return
        if obj["kind"] == "Pod":
            self._handle_pod(obj)
            return
        self._seen[key] = obj
        failing = f"{key[1]}/{key[2]}" in self.failing
        if in_desired_state(obj, failing):
            self._pause.pop(key, None)
            return
        generation = obj["metadata"].get("generation", 1)
        loop = asyncio.get_running_loop()
        if self._scheduled.get(key) == (generation, failing):
            if key in self._timers:
                return  # already on its way
            delay = self._pause.get(key, 0.0)  # we wrote it and someone rewrote it: re-assert, slower
            self._pause[key] = min(max(delay * 2, 0.1), _MAX_PAUSE)
        else:
            delay = self.delay
        self._scheduled[key] = (generation, failing)
        old = self._timers.pop(key, None)
        if old:
            old.cancel()
        self._timers[key] = loop.call_later(delay, self._fire, key)

    def _handle_pod(self, pod: dict) -> None:
        key = self._key(pod)
        self._seen[key] = pod
        owner = pod_owner(pod)
        if owner is None or f"{key[1]}/{owner[1]}" in self.failing:
            return
        if pod_status(pod, owner[0]) is None or key in self._timers:
            return
        self._timers[key] = asyncio.get_running_loop().call_later(self.delay, self._fire, key)

    def _fire(self, key: tuple[str, str, str]) -> None:
        self._timers.pop(key, None)
        obj = self._seen.get(key)
        if obj is None:
            return
        task = asyncio.create_task(self._patch(obj))
        self._patches.add(task)
        task.add_done_callback(self._patches.discard)

    async def _patch(self, obj: dict) -> None:
        kind, namespace, name = self._key(obj)
        if kind == "Pod":
            owner = pod_owner(obj)
            status = pod_status(obj, owner[0]) if owner else None
            if status is None:
                return
        else:
            status = desired_status(obj, f"{namespace}/{name}" in self.failing)
        path = f"{_PATHS[kind]}/namespaces/{namespace}/{_PLURALS[kind]}/{name}/status"
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            response = await self._request("PATCH", path, body={"status": status})
            response.release()
            if response.status < 300 and kind == "Pod":
                self.pods_marked += 1
            elif response.status < 300:
                self.patched += 1
            elif response.status != 404:
                log.warning("kubelet could not patch %s %s/%s status: HTTP %s",
                            kind, namespace, name, response.status)
