"""Helm gateway: charts and releases through the Helm v4 SDK (helm-python-sdk, in process).

What callers can rely on:

* The SDK blocks, so every call runs in a worker thread of the gateway's own pool (``workers``,
  16 by default); the event loop never waits on Helm, and the default executor's few threads stay
  free for the service's short jobs (rendering, parsing, DNS) instead of queueing behind installs.
  Every call is bounded by a timeout (``default_timeout`` unless given):
  the caller gets ``Unavailable`` on time while the worker thread finishes on its own (install and
  upgrade are also cancelled through a ``HelmContext``, which the SDK honours between steps).
* Helm errors become the typed errors of ``soctalk_common.errors`` with the release and the cause:
  ``NotFound``, ``InvalidObject`` (chart / values / render / rejected manifests),
  ``OperationInProgress`` (a ``pending-*`` release), ``Conflict``, ``Forbidden``, ``Unauthorized``,
  ``Unavailable`` (cluster unreachable, timeouts), ``ConfigurationError`` (no usable kubeconfig),
  ``HelmFailed`` (anything else, permanent).
* Writes to one release are serialised inside this process, including a write whose caller already
  timed out (the release stays locked until the abandoned worker returns; a later write that cannot
  get the lock in time raises ``OperationInProgress``). Across processes the per-tenant lease does
  that (two writers on one release corrupt its history).
* ``install`` / ``upgrade`` never use Helm's ``--wait``: readiness is watched by ``KubeGateway``.
  ``uninstall`` is idempotent. ``recover_pending`` turns a release stuck in ``pending-*`` (a crash
  mid-operation) back into something upgradable.
* Values are never logged and never put into error messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import os
import re
import threading
import time
import weakref
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import helm_python as hp

from soctalk_common.errors import (
    Conflict,
    Forbidden,
    GatewayError,
    InvalidObject,
    NotFound,
    OperationInProgress,
    PermanentError,
    Unauthorized,
    Unavailable,
)
from soctalk_common.gateways import ConfigurationError

T = TypeVar("T")
_AT = re.compile(r"^- at '(?P<pointer>[^']*)': (?P<message>.*)$")
_DEPLOYED = ("deployed", "superseded")
_SEVERITY = {1: "INFO", 2: "WARNING", 3: "ERROR"}


class HelmFailed(GatewayError, PermanentError):
    """A Helm action failed for a reason none of the other errors describe."""


@dataclass(frozen=True)
class ReleaseInfo:
    name: str
    namespace: str
    revision: int
    status: str
    chart_version: str
    app_version: str
    updated: str | None
    chart_name: str = ""
    modified_at: float | None = None  # epoch seconds of the last write to this revision's record
    # The rendered manifest, only from install/upgrade (saves reading the release back to learn what
    # it declares); kept out of repr and comparisons: it is large.
    manifest: str = field(default="", repr=False, compare=False)

    @property
    def pending(self) -> bool:
        """An install / upgrade / rollback started and never finished (see ``recover_pending``)."""
        return self.status.startswith("pending-")

    @classmethod
    def from_summary(cls, summary: dict, *, with_manifest: bool = False) -> ReleaseInfo:
        labels = summary.get("labels") or {}
        modified = labels.get("modifiedAt")
        return cls(
            name=summary.get("name", ""), namespace=summary.get("namespace", ""),
            revision=int(summary.get("revision") or 0), status=summary.get("status", "unknown"),
            chart_version=summary.get("chart_version", ""), app_version=summary.get("app_version", ""),
            updated=summary.get("deployed_at") or None, chart_name=summary.get("chart_name", ""),
            modified_at=float(modified) if modified and modified.isdigit() else None,
            manifest=str(summary.get("manifest") or "") if with_manifest else "",
        )


def _seconds(timeout: float) -> int:
    """The SDK takes whole seconds; never round a short timeout down to 0 (which means none)."""
    return max(1, math.ceil(timeout))


def _pointer_to_path(pointer: str, prefix: str) -> str:
    path = "$" + (f".{prefix}" if prefix else "")
    for token in [t for t in pointer.split("/") if t]:
        token = token.replace("~1", "/").replace("~0", "~")
        path += f"[{token}]" if token.isdigit() else f".{token}"
    return path


def parse_schema_errors(message: str, root_chart: str) -> list[tuple[str, str]]:
    """Turn Helm's schema report (``<chart>:`` headers, ``- at '/ptr': msg`` lines) into pairs.

    Errors of a subchart are reported under its values key: ``$.wazuh.replicas``.
    """
    errors, chart = [], root_chart
    for line in message.splitlines():
        line = line.strip()
        match = _AT.match(line)
        if match:
            prefix = "" if chart == root_chart else chart
            errors.append((_pointer_to_path(match["pointer"], prefix), match["message"]))
        elif line.endswith(":") and " " not in line:
            chart = line[:-1]
    return errors or [("$", message.strip() or "values do not match the chart's schema")]


def _classify(exc: hp.HelmError, what: str) -> GatewayError:
    detail = (exc.detail or str(exc)).strip().replace("\n", "; ")[:600]
    text = detail.lower()
    message = f"{what}: {detail}"
    if isinstance(exc, hp.HelmNotFoundError) or "release: not found" in text:
        return NotFound(message)
    if '" not found' in text:  # e.g. namespaces "tenant-x" not found
        return NotFound(message)
    if isinstance(exc, (hp.HelmChartLoadError, hp.HelmChartInvalidError, hp.HelmValuesError,
                        hp.HelmRenderError)):
        return InvalidObject(message)
    if isinstance(exc, hp.HelmCancelledError):
        return Unavailable(f"{what}: cancelled after its timeout", delay=10.0)
    if any(s in text for s in ("no such file or directory", "error loading config file",
                               "invalid configuration", "context was not found")):
        return ConfigurationError(message)
    if "another operation" in text and "in progress" in text:
        return OperationInProgress(message, delay=10.0)
    if "unauthorized" in text or "must be logged in" in text:
        return Unauthorized(message)
    if "forbidden" in text:
        return Forbidden(message)
    if any(s in text for s in ("connection refused", "no such host", "i/o timeout", "deadline exceeded",
                               "timed out", "tls handshake", "eof", "service unavailable",
                               "too many requests", "internal error", "kubernetes cluster unreachable")):
        return Unavailable(message, delay=5.0)
    if "still in use" in text or "conflict" in text or "already exists" in text:
        return Conflict(message, delay=5.0)
    if "has no deployed releases" in text:
        return Conflict(message, delay=5.0)
    if any(s in text for s in ("invalid", "unable to build kubernetes objects", "parse error",
                               "specifications of the schema", "template:", "yaml:")):
        return InvalidObject(message)
    if isinstance(exc, (hp.HelmKubeError, hp.HelmStorageError)):
        return Unavailable(message, delay=5.0)
    return HelmFailed(message)


class HelmGateway:
    def __init__(self, kubeconfig: str | None, *, default_timeout: float = 300,
                 context: str | None = None, max_configs: int = 128, workers: int = 16) -> None:
        """``kubeconfig=None`` uses ``$KUBECONFIG``, ``~/.kube/config`` or the in-cluster account.
        ``workers``: Helm calls that can run at once (the rest wait for a thread)."""
        self._kubeconfig = os.path.expanduser(kubeconfig) if kubeconfig else None
        self._context = context
        self.default_timeout = default_timeout
        # One SDK config per release namespace (it is where release records live), the most recently
        # used ``max_configs`` kept: each holds a Kubernetes client and its discovery in the Go heap,
        # and a drift round touches every tenant's namespace.
        self._configs: OrderedDict[str, hp.Config] = OrderedDict()
        self._in_use: Counter[str] = Counter()
        self._configs_lock = threading.Lock()
        self.max_configs = max_configs
        # One lock per release while some call holds or awaits it (weak: no entry per release forever).
        self._locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = weakref.WeakValueDictionary()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="helm")

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        with self._configs_lock:
            for cfg in self._configs.values():
                cfg.close()
            self._configs.clear()

    @contextlib.contextmanager
    def _config(self, namespace: str) -> Iterator[hp.Config]:
        """The namespace's SDK config while the block runs (thread-safe; never closed while in use)."""
        with self._configs_lock:
            cfg = self._configs.get(namespace)
            if cfg is None:  # parses options only; the cluster is contacted on the first action
                cfg = self._configs[namespace] = hp.Config(
                    kubeconfig_path=self._kubeconfig, kube_context=self._context, namespace=namespace)
            self._configs.move_to_end(namespace)
            self._in_use[namespace] += 1
        try:
            yield cfg
        finally:
            with self._configs_lock:
                self._in_use[namespace] -= 1
                if not self._in_use[namespace]:
                    del self._in_use[namespace]
                while len(self._configs) > self.max_configs:
                    idle = next((ns for ns in self._configs if ns not in self._in_use), None)
                    if idle is None:
                        break
                    self._configs.pop(idle).close()

    @property
    def cached_configs(self) -> int:
        return len(self._configs)

    async def _run(self, what: str, fn: Callable[[hp.HelmContext | None], T],
                   timeout: float | None, *, cancellable: bool = False,  # noqa: ASYNC109
                   release: tuple[str, str] | None = None) -> T:
        """Run ``fn`` in a worker thread; raise ``Unavailable`` once ``timeout`` has passed.

        With ``release`` (namespace, name) the call holds that release's lock from start until the
        worker thread has really finished, even when the caller already got its timeout error, so a
        later write to the same release never overlaps an abandoned one.
        """
        timeout = self.default_timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        guard: asyncio.Lock | None = None
        if release is not None:
            guard = self._locks.get(release)
            if guard is None:
                guard = self._locks[release] = asyncio.Lock()
        if guard is not None:
            try:
                async with asyncio.timeout(timeout):
                    await guard.acquire()
            except TimeoutError as exc:
                raise OperationInProgress(f"{what}: an earlier operation on this release is still "
                                          "running in this process", delay=10.0) from exc
        ctx = hp.HelmContext() if cancellable else None

        def call() -> T:
            try:
                return fn(ctx)
            except hp.HelmError as exc:
                raise _classify(exc, what) from exc

        def finished(task: asyncio.Future) -> None:
            if not task.cancelled():
                task.exception()  # retrieved: an abandoned call's error is not "never retrieved"
            if ctx is not None:
                ctx.close()
            if guard is not None:
                guard.release()

        try:
            task = asyncio.ensure_future(loop.run_in_executor(self._pool, contextvars.copy_context().run, call))
        except BaseException:
            if guard is not None:
                guard.release()
            raise
        task.add_done_callback(finished)
        try:
            async with asyncio.timeout_at(deadline):
                return await asyncio.shield(task)
        except TimeoutError as exc:
            if ctx is not None:
                ctx.cancel()  # best effort: the SDK checks it between steps, not mid-request
            raise Unavailable(f"{what}: no result within {timeout:g}s (the Helm call may still finish "
                              "in the background; the release stays locked until it does)",
                              delay=10.0) from exc
        except asyncio.CancelledError:
            if ctx is not None:
                ctx.cancel()
            raise

    # --- offline --------------------------------------------------------------------------------

    async def render(self, chart_path: str, values: dict, *, release: str, namespace: str) -> str:
        """The manifests ``helm template`` would print (offline; ``lookup`` finds nothing)."""

        def render(_: Any) -> str:
            with hp.Chart.load(chart_path) as chart:
                rendered = chart.render(values, name=release, namespace=namespace, is_install=True)
            docs = [f"---\n# Source: {path}\n{body.strip()}\n" for path, body in sorted(rendered.items())
                    if body.strip() and not path.endswith("NOTES.txt")]
            return "".join(docs)

        return await self._run(f"render of chart {chart_path} for {namespace}/{release}", render, None)

    async def lint(self, chart_path: str, values: dict | None = None) -> list[str]:
        """Warnings and errors as ``"[SEVERITY] path: message"``; empty when the chart is clean."""

        def lint(_: Any) -> list[str]:
            report = hp.lint(chart_path, values)
            found = []
            for msg in report.get("messages") or []:
                if msg.get("severity", 0) >= 2:
                    text = " ".join(str(msg.get("error", "")).split())
                    line = f"[{_SEVERITY.get(msg['severity'], 'ERROR')}] {msg.get('path', '')}: {text}"
                    if line not in found:
                        found.append(line)
            return found

        return await self._run(f"lint of chart {chart_path}", lint, None)

    async def validate_values(self, chart_path: str, values: dict) -> list[tuple[str, str]]:
        """Check values (merged with the chart defaults) against the chart's and subcharts' schemas.

        Returns ``(json_path, message)`` pairs such as ``("$.replicas", "got string, want integer")``;
        an empty list means valid.
        """

        def validate(_: Any) -> list[tuple[str, str]]:
            with hp.Chart.load(chart_path) as chart:
                try:
                    chart.validate_schema(values)
                except hp.HelmValuesError as exc:
                    return parse_schema_errors(exc.detail or str(exc), chart.name)
            return []

        return await self._run(f"values validation for chart {chart_path}", validate, None)

    # --- releases -------------------------------------------------------------------------------

    async def install(self, release: str, chart_path: str, namespace: str, values: dict, *,
                      timeout: float | None = None) -> ReleaseInfo:  # noqa: ASYNC109
        """Install (no ``--wait``). ``Conflict`` if the name is in use; the namespace must exist."""
        what = f"helm install of release {namespace}/{release}"
        seconds = _seconds(timeout or self.default_timeout)

        def install(ctx: hp.HelmContext | None) -> ReleaseInfo:
            with self._config(namespace) as cfg:
                summary = cfg.install(chart_path, release, values, context=ctx, namespace=namespace,
                                      timeout=seconds)
            return ReleaseInfo.from_summary(summary, with_manifest=True)

        return await self._run(what, install, timeout, cancellable=True, release=(namespace, release))

    async def upgrade(self, release: str, chart_path: str, namespace: str, values: dict, *,
                      timeout: float | None = None) -> ReleaseInfo:  # noqa: ASYNC109
        """Upgrade to ``values`` exactly (``--reset-values``; no ``--wait``)."""
        what = f"helm upgrade of release {namespace}/{release}"
        seconds = _seconds(timeout or self.default_timeout)

        def upgrade(ctx: hp.HelmContext | None) -> ReleaseInfo:
            with self._config(namespace) as cfg:
                try:
                    summary = cfg.upgrade(chart_path, release, values, context=ctx, namespace=namespace,
                                          timeout=seconds, reset_values=True, max_history=20)
                except hp.HelmError as exc:
                    # The SDK says "has no deployed releases" both for a missing release and for one
                    # whose revisions all failed; tell them apart.
                    if "has no deployed releases" in str(exc):
                        try:
                            cfg.history(release)
                        except hp.HelmNotFoundError:
                            raise NotFound(f"{what}: release does not exist") from exc
                    raise
            return ReleaseInfo.from_summary(summary, with_manifest=True)

        return await self._run(what, upgrade, timeout, cancellable=True, release=(namespace, release))

    async def rollback(self, release: str, namespace: str, revision: int | None = None) -> ReleaseInfo:
        """Roll back to ``revision`` (default: the previous one); returns the new revision."""
        what = f"helm rollback of release {namespace}/{release}"
        what += f" to revision {revision}" if revision else ""

        def rollback(_: Any) -> ReleaseInfo:
            with self._config(namespace) as cfg:
                cfg.rollback(release, version=revision, timeout=_seconds(self.default_timeout))
                return ReleaseInfo.from_summary(cfg.status(release))

        return await self._run(what, rollback, None, release=(namespace, release))

    async def uninstall(self, release: str, namespace: str, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Remove the release and its history; nothing to do if it does not exist."""
        what = f"helm uninstall of release {namespace}/{release}"
        seconds = _seconds(timeout or self.default_timeout)

        def uninstall(_: Any) -> None:
            # Not ignore_not_found: the SDK then also swallows failures to *read* the release.
            with contextlib.suppress(hp.HelmNotFoundError), self._config(namespace) as cfg:
                cfg.uninstall(release, timeout=seconds)

        await self._run(what, uninstall, timeout, release=(namespace, release))

    async def status(self, release: str, namespace: str) -> ReleaseInfo | None:
        def status(_: Any) -> ReleaseInfo:
            with self._config(namespace) as cfg:
                return ReleaseInfo.from_summary(cfg.status(release))

        try:
            return await self._run(f"helm status of release {namespace}/{release}", status, None)
        except NotFound:
            return None

    async def history(self, release: str, namespace: str) -> list[ReleaseInfo]:
        """All stored revisions, oldest first; empty if the release does not exist."""

        def history(_: Any) -> list[ReleaseInfo]:
            with self._config(namespace) as cfg:
                entries = [ReleaseInfo.from_summary(s) for s in cfg.history(release)]
            return sorted(entries, key=lambda r: r.revision)

        try:
            return await self._run(f"helm history of release {namespace}/{release}", history, None)
        except NotFound:
            return []

    async def manifest(self, release: str, namespace: str, revision: int | None = None) -> str:
        def manifest(_: Any) -> str:
            # ``get_all`` reads the stored release only; ``status`` also looks up every resource of it
            # in the cluster (6x the time against the emulator, one request per object).
            with self._config(namespace) as cfg:
                stored = cfg.get_all(release, revision=revision)
            return str((stored.get("summary") or {}).get("manifest") or "")

        return await self._run(f"helm manifest of release {namespace}/{release}", manifest, None)

    async def stored(self, release: str, namespace: str) -> tuple[ReleaseInfo, dict] | None:
        """The latest stored revision (with its manifest) and its user-supplied values, from one read of
        the release record (``helm get all``: no cluster lookups, unlike ``status``); None if the
        release does not exist."""

        def stored(_: Any) -> tuple[ReleaseInfo, dict]:
            with self._config(namespace) as cfg:
                record = cfg.get_all(release)
            info = ReleaseInfo.from_summary(record.get("summary") or {}, with_manifest=True)
            return info, dict(record.get("config") or {})

        try:
            return await self._run(f"helm get of release {namespace}/{release}", stored, None)
        except NotFound:
            return None

    async def values(self, release: str, namespace: str, revision: int | None = None) -> dict:
        """The user-supplied values of the release (or of one revision)."""

        def values(_: Any) -> dict:
            with self._config(namespace) as cfg:
                return dict(cfg.get_values(release, revision=revision) or {})

        return await self._run(f"helm values of release {namespace}/{release}", values, None)

    async def recover_pending(self, release: str, namespace: str, *, min_age: float = 0.0) -> str | None:
        """Unstick a release whose last revision is ``pending-*``; returns what was done, or None.

        The caller must hold the tenant's lease (so no live operation owns the release); ``min_age``
        additionally skips revisions written less than that many seconds ago.

        * ``pending-install`` with no earlier deployed revision: uninstall the release.
        * ``pending-upgrade`` / ``pending-rollback`` (or a pending-install over an older deployed
          revision): roll back to the last deployed revision.
        """
        history = await self.history(release, namespace)
        if not history or not history[-1].pending:
            return None
        last = history[-1]
        if min_age and last.modified_at is not None and time.time() - last.modified_at < min_age:
            return None
        good = [r for r in history[:-1] if r.status in _DEPLOYED]
        if not good:
            older = [r for r in history[:-1] if not r.pending]
            if last.status != "pending-install" and older:
                await self.rollback(release, namespace, older[-1].revision)
                return f"rolled back {last.status} revision {last.revision} to revision {older[-1].revision}"
            await self.uninstall(release, namespace)
            return f"uninstalled release stuck in {last.status} at revision {last.revision}"
        target = good[-1].revision
        await self.rollback(release, namespace, target)
        return f"rolled back {last.status} revision {last.revision} to revision {target}"
