"""An in-process Kubernetes API server for tests and ``make demo``.

Built directly on aiohttp rather than on kmock 0.8: that emulator needed replacing in almost every
area we use (namespaces, selectors, PUT, watch, discovery, patching, apply, bookkeeping), so a small
server of our own is easier to read and to keep honest. The same contract tests run against it and
against a real cluster.

What it serves (enough for kubernetes_asyncio, client-go/Helm v4 and kubectl):

* ``/version``, ``/healthz``, ``/readyz``, ``/livez``; legacy discovery ``/api``, ``/api/v1``,
  ``/apis``, ``/apis/<group>[/<version>]`` (answered as plain JSON, so clients asking for aggregated
  discovery fall back to it); ``/openapi/*`` answers 404, so clients skip OpenAPI-based validation.
* get / list / watch / create / update / patch / delete / deletecollection for every kind in
  ``kinds.BUILTIN_KINDS``, kinds added with ``register_kind``, and kinds served by a
  ``CustomResourceDefinition``; namespaced and cluster scope; ``/status`` subresources and ``/scale``
  for Deployments, StatefulSets and ReplicaSets. Watches resume from a ``resourceVersion`` (410
  once it is older than ``history`` events) and support ``sendInitialEvents`` (watch-list).
* label selectors (equality and set based), field selectors on any dotted path, ``dryRun=All``.
* merge, strategic-merge (common merge keys) and JSON patch; server-side apply including
  create-on-apply and field-manager conflicts (an approximation, see ``patching``).
* protobuf request bodies (client-go sends them for core kinds, e.g. Helm's release Secrets) are
  decoded for Secret, ConfigMap and Namespace; other kinds answer 415 (kubectl ``create``/``run``
  of workloads therefore fails; ``kubectl apply`` sends JSON and works).
* ``SubjectAccessReview`` and friends always answer ``allowed: true``: RBAC is **not** enforced.
* deleting a namespace marks it Terminating and then removes everything in it, as the namespace
  controller does; objects with finalizers wait for them to be cleared.
* fault injection: ``inject_fault(path_prefix, status=401)`` answers matching requests with that
  status (or delays them) so error mapping can be tested without a misbehaving cluster.

Not emulated: authentication and authorization, admission (webhooks, policies, quotas), defaulting
beyond a few fields, garbage collection through ownerReferences, pods and any controller other than
the namespace controller (``SimulatedKubelet`` fakes workload readiness), pagination (``limit`` is
ignored and everything is returned), bookmarks, protobuf *responses*, aggregated discovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import yaml
from aiohttp import web

from . import protobuf
from .kinds import BUILTIN_KINDS, Kind, KindTable
from .selectors import SelectorError, field_matcher, label_matcher
from .store import ApiError, Store

log = logging.getLogger(__name__)
_REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
            410: "Expired", 422: "Invalid", 429: "TooManyRequests", 500: "InternalError",
            503: "ServiceUnavailable", 504: "Timeout"}
_PATCH_TYPES = {
    "application/json-patch+json": "json",
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "strategic",
    "application/apply-patch+yaml": "apply",
    "application/apply-patch+json": "apply",
}
_MESSAGES = {401: "Unauthorized",
             403: 'forbidden: User "system:anonymous" cannot access {path} (injected fault)',
             404: "the server could not find the requested resource (injected fault)",
             409: "the object has been modified; please apply your changes to the latest version "
                  "and try again (injected fault)",
             429: "Too many requests, please try again later. (injected fault)",
             500: "Internal error occurred: injected fault",
             503: "service unavailable: injected fault"}
_OPENAPI_V2_PB = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"
VERSION = {"major": "1", "minor": "33", "gitVersion": "v1.33.0-kubesim", "gitCommit": "kubesim",
           "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24",
           "compiler": "gc", "platform": "linux/amd64"}


@dataclass
class Fault:
    """Answer requests whose path starts with ``path`` (and method, if set) with ``status``.

    ``times`` limits how many requests are affected (``None``: until removed); ``delay`` holds the
    answer back that many seconds first (with ``status=0`` the request is then served normally).
    """

    path: str
    status: int = 500
    method: str | None = None
    times: int | None = None
    delay: float = 0.0
    message: str | None = None  # default: what a real API server says for that status
    hits: int = 0

    def error(self) -> ApiError:
        reason = _REASONS.get(self.status, "Unknown")
        message = self.message or _MESSAGES.get(self.status, "injected fault").format(path=self.path)
        return ApiError(self.status, reason, message)


class KubeEmulator:
    """``async with KubeEmulator() as emu:`` or ``emu = KubeEmulator.start_in_thread(); emu.stop()``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, history: int = 10_000) -> None:
        """``history``: how many past events watches can resume from (older: 410 Expired)."""
        self.host, self.port = host, port
        self._history = history
        self.kinds = KindTable(list(BUILTIN_KINDS))
        self.requests: deque[tuple[str, str, str]] = deque(maxlen=2000)  # (method, path, content type)
        self._faults: list[Fault] = []
        self._faults_lock = threading.Lock()
        self._store: Store | None = None
        self._runner: web.AppRunner | None = None
        self._tmpdir: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.kubeconfig_path = ""

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> KubeEmulator:
        self._loop = asyncio.get_running_loop()
        self._store = Store(self.kinds, schedule=self._loop.call_soon, history=self._history)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.25)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._tmpdir = tempfile.mkdtemp(prefix="kubesim-")
        self.kubeconfig_path = os.path.join(self._tmpdir, "kubeconfig")
        _write_private(self.kubeconfig_path, self.kubeconfig())  # a few bytes on local disk
        return self

    async def aclose(self) -> None:
        if self._store is not None:
            self._store.close_watchers()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    async def __aenter__(self) -> KubeEmulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @classmethod
    def start_in_thread(cls, host: str = "127.0.0.1", port: int = 0) -> KubeEmulator:
        """Run the emulator on its own event loop in a daemon thread; ``stop()`` ends it.

        Use this when blocking clients (the Helm SDK in worker threads) talk to it while the caller's
        loop may be busy.
        """
        emu = cls(host, port)
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(emu.start())
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(emu.aclose())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        emu._thread = threading.Thread(target=run, name=f"kubesim-{id(emu):x}", daemon=True)
        emu._thread.start()
        if not ready.wait(timeout=30):
            raise RuntimeError("kube emulator did not start within 30 s")
        if failure:
            raise failure[0]
        return emu

    def stop(self) -> None:
        """Stop an emulator started with ``start_in_thread`` (idempotent)."""
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._thread = None

    def __enter__(self) -> KubeEmulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def kubeconfig(self, namespace: str = "default") -> str:
        return yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "kubesim", "preferences": {},
            "clusters": [{"name": "kubesim", "cluster": {"server": self.url}}],
            "users": [{"name": "kubesim", "user": {"token": "kubesim"}}],
            "contexts": [{"name": "kubesim",
                          "context": {"cluster": "kubesim", "user": "kubesim", "namespace": namespace}}],
        })

    # --- test controls (safe from any thread) --------------------------------------------------

    def inject_fault(self, path: str, status: int = 500, *, method: str | None = None,
                     times: int | None = None, delay: float = 0.0, message: str | None = None) -> Fault:
        fault = Fault(path, status, method.upper() if method else None, times, delay, message)
        with self._faults_lock:
            self._faults.append(fault)
        return fault

    def remove_fault(self, fault: Fault) -> None:
        with self._faults_lock, contextlib.suppress(ValueError):
            self._faults.remove(fault)

    def clear_faults(self) -> None:
        with self._faults_lock:
            self._faults.clear()

    def register_kind(self, api_version: str, kind: str, plural: str, *, namespaced: bool = True,
                      status_subresource: bool = False) -> None:
        group, _, version = api_version.rpartition("/")
        self.kinds.add(Kind(group, version, kind, plural, namespaced, status_subresource))

    # --- HTTP ---------------------------------------------------------------------------------

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._faults_lock:
            for fault in self._faults:
                if path.startswith(fault.path) and fault.method in (None, method):
                    fault.hits += 1
                    if fault.times is not None and fault.hits >= fault.times:
                        self._faults.remove(fault)
                    return fault
        return None

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"].strip("/")
        self.requests.append((request.method, path, request.content_type))
        fault = self._take_fault(request.method, path)
        if fault is not None:
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.status:
                error = fault.error()
                return _json(error.status(), error.code)
        try:
            return await self._serve(request, path)
        except ApiError as error:
            return _json(error.status(), error.code)
        except SelectorError as error:
            return _json(ApiError(400, "BadRequest", str(error)).status(), 400)
        except Exception as error:  # an emulator bug must still look like an apiserver failure
            log.exception("kubesim failed on %s %s", request.method, path)
            return _json(ApiError(500, "InternalError", f"kubesim: {error!r}").status(), 500)

    async def _serve(self, request: web.Request, path: str) -> web.StreamResponse:
        parts = [p for p in path.split("/") if p]
        if path == "/version":
            return _json(VERSION)
        if path in ("/healthz", "/readyz", "/livez"):
            return web.Response(text="ok")
        if path == "/openapi/v2":
            # An empty protobuf OpenAPI document: clients find no schema for any kind and skip
            # client-side validation (as they do for CRDs without schemas).
            return web.Response(body=b"", content_type=_OPENAPI_V2_PB)
        if path == "/api":
            return _json(self.kinds.core_versions(f"{self.host}:{self.port}"))
        if path == "/apis":
            return _json(self.kinds.group_list())
        if len(parts) == 2 and parts[0] == "apis":
            return _json(_or_404(self.kinds.group_doc(parts[1]), path))
        if parts[:1] == ["api"] and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        if not rest:
            return _json(_or_404(self.kinds.resource_list(group, version), path))
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            candidate = self.kinds.find(group, version, rest[2])
            if candidate is not None and candidate.namespaced:
                namespace, rest = rest[1], rest[2:]
        kind = self.kinds.find(group, version, rest[0])
        if kind is None or len(rest) > 3:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub not in (None, "status", "finalize", "scale") or (
                sub == "status" and not kind.status_subresource) or (
                sub == "scale" and kind.kind not in ("Deployment", "StatefulSet", "ReplicaSet")):
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        return await self._resource(request, kind, namespace, name, sub)

    async def _resource(self, request: web.Request, kind: Kind, namespace: str | None, name: str | None,
                        sub: str | None) -> web.StreamResponse:
        store = self._store
        assert store is not None
        q = request.query
        dry_run = q.get("dryRun") == "All"
        method = request.method
        if kind.create_only:
            if method != "POST" or name:
                raise ApiError(405, "MethodNotAllowed", f"{kind.plural} only supports create")
            if request.content_type == protobuf.CONTENT_TYPE:  # the answer ignores the question
                return _json(_review(protobuf.type_meta(await request.read())), 201)
            return _json(_review(await _body(request)), 201)
        if sub == "scale":
            return await self._scale(request, kind, namespace, name or "", dry_run)
        if method == "GET":
            if name:
                return _json(store.get(kind, namespace, name))
            matches = _and(label_matcher(q.get("labelSelector")), field_matcher(q.get("fieldSelector")))
            if q.get("watch", "").lower() in ("true", "1"):
                return await self._watch(request, kind, namespace, matches)
            items = store.list(kind, namespace, matches)
            return _json({"kind": f"{kind.kind}List", "apiVersion": kind.api_version,
                          "metadata": {"resourceVersion": store.resource_version}, "items": items})
        if method == "POST" and not name:
            return _json(store.create(kind, namespace, await _body(request), dry_run=dry_run), 201)
        if method == "PUT" and name:
            return _json(store.update(kind, namespace, name, await _body(request),
                                      subresource=sub, dry_run=dry_run))
        if method == "PATCH" and name:
            patch_type = _PATCH_TYPES.get(request.content_type)
            if patch_type is None:
                raise ApiError(415, "UnsupportedMediaType",
                               f"the body of the request was in an unknown format: {request.content_type}")
            force = q.get("force", "").lower() in ("true", "1")
            existed = store.exists(kind, namespace, name)
            obj = store.patch(kind, namespace, name, patch_type, await _body(request), subresource=sub,
                              manager=q.get("fieldManager"), force=force, dry_run=dry_run)
            return _json(obj, 200 if existed else 201)
        if method == "DELETE":
            if name:
                return _json(store.delete(kind, namespace, name, dry_run=dry_run))
            matches = _and(label_matcher(q.get("labelSelector")), field_matcher(q.get("fieldSelector")))
            for obj in store.list(kind, namespace, matches):
                store.delete(kind, obj["metadata"].get("namespace"), obj["metadata"]["name"], dry_run=dry_run)
            return _json({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on this path")

    async def _scale(self, request: web.Request, kind: Kind, namespace: str | None, name: str,
                     dry_run: bool) -> web.Response:
        """The ``scale`` subresource (``kubectl scale``): reads and writes ``spec.replicas``."""
        store = self._store
        assert store is not None
        if request.method in ("PUT", "PATCH"):
            body = await _body(request)
            replicas = (body.get("spec") or {}).get("replicas") if isinstance(body, dict) else None
            if not isinstance(replicas, int) or replicas < 0:
                raise ApiError(422, "Invalid", f'Scale "{name}" is invalid: spec.replicas must be >= 0')
            store.patch(kind, namespace, name, "merge", {"spec": {"replicas": replicas}}, dry_run=dry_run)
        elif request.method != "GET":
            raise ApiError(405, "MethodNotAllowed", "scale supports get, update and patch")
        obj = store.get(kind, namespace, name)
        selector = ",".join(f"{k}={v}" for k, v in
                            ((obj["spec"].get("selector") or {}).get("matchLabels") or {}).items())
        return _json({"apiVersion": "autoscaling/v1", "kind": "Scale",
                      "metadata": {k: obj["metadata"][k] for k in ("name", "namespace", "uid",
                                                                   "resourceVersion", "creationTimestamp")},
                      "spec": {"replicas": obj["spec"].get("replicas", 1)},
                      "status": {"replicas": (obj.get("status") or {}).get("replicas", 0),
                                 "selector": selector}})

    async def _watch(self, request: web.Request, kind: Kind, namespace: str | None,
                     matches: Any) -> web.StreamResponse:
        store = self._store
        assert store is not None
        timeout = float(request.query.get("timeoutSeconds") or 1800)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        initial_events = request.query.get("sendInitialEvents", "").lower() == "true"
        since = None if initial_events else request.query.get("resourceVersion")
        try:
            watcher = store.watch(kind, namespace, matches, since)
        except ApiError as error:
            with contextlib.suppress(ConnectionError):
                await response.prepare(request)
                await response.write(json.dumps({"type": "ERROR", "object": error.status()}).encode() + b"\n")
            return response
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            await response.prepare(request)
            if initial_events:  # watch-list: the initial ADDED events end with a marked bookmark
                bookmark = {"kind": kind.kind, "apiVersion": kind.api_version, "metadata": {
                    "resourceVersion": store.resource_version,
                    "annotations": {"k8s.io/initial-events-end": "true"}}}
                for _ in range(watcher.queue.qsize()):
                    await response.write(json.dumps(watcher.queue.get_nowait()).encode() + b"\n")
                await response.write(json.dumps({"type": "BOOKMARK", "object": bookmark}).encode() + b"\n")
            while (remaining := deadline - loop.time()) > 0:
                try:
                    async with asyncio.timeout(remaining):
                        event = await watcher.queue.get()
                except TimeoutError:
                    break
                if event is None:
                    break
                await response.write(json.dumps(event).encode() + b"\n")
        except ConnectionError:  # the client went away
            pass
        finally:
            store.unwatch(watcher)
        return response


# --- helpers -----------------------------------------------------------------------------------


def _write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(doc).encode(), status=status, content_type="application/json")


def _or_404(doc: dict | None, path: str) -> dict:
    if doc is None:
        raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
    return doc


def _and(*matchers: Any) -> Any:
    return lambda obj: all(m(obj) for m in matchers)


class _YAML_LOADER(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]  # noqa: N801
    """libyaml's safe loader; timestamps stay strings, as the API server's YAML-to-JSON keeps them."""


_YAML_LOADER.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    content_type = request.content_type
    if content_type == protobuf.CONTENT_TYPE:
        try:
            return protobuf.decode(raw)
        except protobuf.ProtobufError as exc:  # 415: client-go then resends as JSON
            raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown "
                           f"format: {content_type} ({exc})") from exc
    try:
        if "yaml" in content_type:
            # client-go sends apply patches as JSON (YAML's subset): decode that as JSON, as the API
            # server does; real YAML with libyaml. (The pure-Python YAML loader on every body was
            # most of the emulator's CPU.)
            try:
                return json.loads(raw)
            except ValueError:
                return yaml.load(raw, Loader=_YAML_LOADER)  # noqa: S506 - a safe loader
        return json.loads(raw or b"{}")
    except (ValueError, yaml.YAMLError, protobuf.ProtobufError) as exc:
        raise ApiError(400, "BadRequest", f"cannot decode {content_type} body: {exc}") from exc


def _review(body: dict) -> dict:
    """Access reviews: the emulator enforces no RBAC, so everything is allowed."""
    review = dict(body) if isinstance(body, dict) else {}
    review["status"] = {"allowed": True, "reason": "kubesim does not enforce RBAC"}
    if review.get("kind") == "SelfSubjectRulesReview":
        review["status"] = {"resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
                            "nonResourceRules": [], "incomplete": False}
    return review
