"""Vault / OpenBao gateway: KV v2 secrets, ACL policies and test tokens, over hvac.

hvac is blocking, so every call runs in a worker thread (``asyncio.to_thread``) under a deadline of
``timeout`` seconds (also the HTTP connect/read timeout). Each worker thread gets its own hvac client
because ``requests`` sessions are not meant to be shared between threads.

What callers can rely on:

* Errors are the project's typed errors, with messages that name the operation and the KV path (or
  policy name) and the server's reason — never a secret value or the token:

  ========================================  =====================================================
  401                                       ``Unauthorized``
  403 (bad/expired token *or* policy deny)  ``Forbidden`` (Vault answers 403 for both)
  404                                       ``NotFound`` (reads return ``None`` / ``[]`` instead)
  400 check-and-set mismatch                ``Conflict``
  other 400, bad path/data                  ``InvalidObject``
  429, 5xx, sealed, unreachable, timeout    ``Unavailable`` (a ``TemporaryError``)
  ========================================  =====================================================

* Transient failures are retried here with bounded, jittered exponential backoff (``attempts``
  tries in total); only then is ``Unavailable`` raised. Writes whose effect is uncertain (the request
  may have been applied: read timeout, 500) are retried only when repeating them is harmless: a plain
  ``kv_write`` (same data again), a policy write, a delete. A check-and-set write or a token
  creation is retried only when the server certainly did not apply it (connection refused, sealed,
  429, 502/503) — so a ``Conflict`` from ``kv_write(cas=...)`` really means someone else wrote.
* Reads of absent things are not errors: ``kv_read`` → ``None``, ``kv_versions``/``kv_list`` → ``[]``,
  ``policy_read`` → ``None``; deletes are idempotent.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import hvac
import hvac.exceptions as hvac_exc
import requests
from tenacity import AsyncRetrying, RetryCallState, stop_after_attempt, wait_exponential_jitter
from tenacity.wait import WaitBaseT

from soctalk_common.errors import (
    Conflict,
    Forbidden,
    GatewayError,
    InvalidObject,
    NotFound,
    Unauthorized,
    Unavailable,
)
from soctalk_common.redact import scrub_text

T = TypeVar("T")

_PATH_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_.@+=-]+$")
_POLICY_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9_.-]{0,126}[a-z0-9])?$")
_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_MAX_DETAIL = 300


@dataclass(frozen=True)
class KvSecret:
    """One version of a KV v2 secret. ``data`` is excluded from ``repr`` so it never lands in logs."""

    data: dict[str, str] = field(repr=False)
    version: int
    created_time: datetime


class VaultGateway:
    """Async access to one Vault/OpenBao server with one token, KV v2 engine at ``mount``.

    ``path`` arguments are relative to the mount (``mssp-abc/tenants/acme/llm``), never starting with
    ``/`` or containing ``..``. ``attempts`` bounds the tries per call; ``wait`` (a tenacity wait
    strategy) and ``sleep`` are injectable so tests can observe backoff without spending real time.
    Nothing connects at construction.
    """

    def __init__(
        self,
        addr: str,
        token: str,
        *,
        mount: str = "secret",
        timeout: float = 10,
        attempts: int = 4,
        wait: WaitBaseT | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        verify: bool | str = True,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be >= 1")
        self._addr = addr.rstrip("/")
        self._token = token
        self._mount = _check_path(mount, what="mount")
        self._timeout = float(timeout)
        self._attempts = attempts
        self._wait = wait if wait is not None else wait_exponential_jitter(multiplier=0.2, max=5, jitter=0.5)
        self._sleep = sleep
        self._verify = verify
        self._local = threading.local()
        self._clients: list[hvac.Client] = []
        self._clients_lock = threading.Lock()

    def __repr__(self) -> str:  # the token stays out of reprs and tracebacks
        return f"VaultGateway(addr={self._addr!r}, mount={self._mount!r})"

    @property
    def mount(self) -> str:
        return self._mount

    # --- KV v2 -------------------------------------------------------------------------------------

    async def kv_write(self, path: str, data: Mapping[str, str], *, cas: int | None = None) -> int:
        """Write a new version of ``path`` with exactly ``data``; returns the new version number.

        ``cas=0`` writes only if the secret does not exist yet; ``cas=n`` only if the current version
        is ``n``; otherwise ``Conflict``. Values must be strings.
        """
        path = _check_path(path)
        payload = _check_data(path, data)
        if cas is not None and (not isinstance(cas, int) or cas < 0):
            raise InvalidObject(f"vault write {self._where(path)}: cas must be a non-negative integer")

        def call(c: hvac.Client) -> Any:
            return c.secrets.kv.v2.create_or_update_secret(
                path=path, secret=payload, cas=cas, mount_point=self._mount
            )

        resp = await self._call(
            "write", self._where(path), call, sensitive=payload.values(), idempotent=cas is None
        )
        return int(resp["data"]["version"])

    async def kv_read(self, path: str, version: int | None = None) -> KvSecret | None:
        """The given (default: latest) version, or ``None`` if absent, deleted or destroyed."""
        path = _check_path(path)
        if version is not None and (not isinstance(version, int) or version < 1):
            # Vault reads version 0 as "latest"; refuse it rather than answer a different question.
            raise InvalidObject(f"vault read {self._where(path)}: version must be a positive integer")

        def call(c: hvac.Client) -> Any:
            return c.secrets.kv.v2.read_secret_version(
                path=path, version=version, mount_point=self._mount, raise_on_deleted_version=True
            )

        try:
            resp = await self._call("read", self._where(path), call)
        except NotFound:
            return None
        body = resp["data"]
        raw = body.get("data")
        if raw is None:  # deleted/destroyed versions may come back as metadata only
            return None
        data: dict[str, str] = {}
        for key, value in raw.items():
            if not isinstance(value, str):
                raise InvalidObject(f"vault read {self._where(path)}: key {key!r} does not hold a string")
            data[str(key)] = value
        meta = body["metadata"]
        return KvSecret(
            data=data, version=int(meta["version"]), created_time=_parse_time(meta["created_time"])
        )

    async def kv_versions(self, path: str) -> list[int]:
        """Readable versions of ``path`` (not deleted, not destroyed), ascending; ``[]`` if absent."""
        path = _check_path(path)

        def call(c: hvac.Client) -> Any:
            return c.secrets.kv.v2.read_secret_metadata(path=path, mount_point=self._mount)

        try:
            resp = await self._call("read metadata", self._where(path), call)
        except NotFound:
            return []
        versions = resp["data"].get("versions") or {}
        return sorted(
            int(v)
            for v, meta in versions.items()
            if not meta.get("deletion_time") and not meta.get("destroyed")
        )

    async def kv_delete(self, path: str, *, destroy_all: bool = True) -> None:
        """Remove ``path``. Idempotent: deleting something absent succeeds.

        ``destroy_all=True`` deletes the metadata and every version permanently (what decommission
        and purge want); ``False`` soft-deletes only the latest version (recoverable by an operator).
        """
        path = _check_path(path)

        def call(c: hvac.Client) -> Any:
            kv = c.secrets.kv.v2
            if destroy_all:
                return kv.delete_metadata_and_all_versions(path=path, mount_point=self._mount)
            return kv.delete_latest_version_of_secret(path=path, mount_point=self._mount)

        try:
            await self._call("delete", self._where(path), call)
        except NotFound:
            return

    async def kv_list(self, prefix: str) -> list[str]:
        """Names directly under ``prefix`` (sub-folders end with ``/``), sorted; ``[]`` if none."""
        prefix = prefix.strip("/")
        if prefix:
            _check_path(prefix)

        def call(c: hvac.Client) -> Any:
            return c.secrets.kv.v2.list_secrets(path=prefix, mount_point=self._mount)

        try:
            resp = await self._call("list", self._where(prefix) + "/" if prefix else self._mount + "/", call)
        except NotFound:
            return []
        return sorted(str(k) for k in resp["data"].get("keys") or [])

    # --- policies and tokens -----------------------------------------------------------------------

    async def policy_write(self, name: str, hcl: str) -> None:
        """Create or replace ACL policy ``name``. Idempotent; ``InvalidObject`` if the HCL is rejected."""
        name = _check_policy_name(name)
        await self._call("write policy", name, lambda c: c.sys.create_or_update_policy(name=name, policy=hcl))

    async def policy_read(self, name: str) -> str | None:
        """The policy's HCL text, or ``None`` if there is no such policy."""
        name = _check_policy_name(name)
        try:
            resp = await self._call("read policy", name, lambda c: c.sys.read_policy(name=name))
        except NotFound:
            return None
        body = resp.get("data") or resp
        return str(body["rules"])

    async def policy_delete(self, name: str) -> None:
        """Delete ACL policy ``name``; idempotent."""
        name = _check_policy_name(name)
        await self._call("delete policy", name, lambda c: c.sys.delete_policy(name=name))

    async def token_create(self, policies: Iterable[str], ttl: str | int) -> str:
        """A new non-renewable child token carrying ``policies`` (plus ``default``) for ``ttl``.

        Meant for tests and break-glass tooling. The returned token is material: never log it.
        """
        names = [_check_policy_name(p) for p in policies]

        def call(c: hvac.Client) -> Any:
            return c.auth.token.create(policies=names, ttl=ttl, renewable=False)

        resp = await self._call("create token", "auth/token/create", call, idempotent=False)
        return str(resp["auth"]["client_token"])

    async def health(self) -> bool:
        """True when the server answers, is initialised and unsealed (standby counts). One try, no raise."""

        def call(c: hvac.Client) -> bool:
            resp = c.sys.read_health_status(method="GET", standby_ok=True)
            return isinstance(resp, dict) and not resp.get("sealed", True)

        try:
            return await self._call("health", "sys/health", call, attempts=1)
        except GatewayError:
            return False

    # --- plumbing ----------------------------------------------------------------------------------

    def _where(self, path: str) -> str:
        return f"{self._mount}/{path}"

    def _client(self) -> hvac.Client:
        client: hvac.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = hvac.Client(
                url=self._addr, token=self._token, timeout=self._timeout, verify=self._verify
            )
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    def close(self) -> None:
        """Close the HTTP sessions of all worker-thread clients (optional; safe to call twice)."""
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.adapter.close()
        self._local = threading.local()

    async def _call(
        self,
        op: str,
        where: str,
        fn: Callable[[hvac.Client], T],
        *,
        sensitive: Iterable[str] = (),
        idempotent: bool = True,
        attempts: int | None = None,
    ) -> T:
        """Run ``fn`` in a worker thread with deadline, error mapping and bounded retries."""
        sensitive = tuple(sensitive)

        def run() -> T:
            try:
                return fn(self._client())
            except (hvac_exc.VaultError, requests.RequestException) as exc:
                raise _translate(exc, op, where, self._addr, sensitive) from None

        async def once() -> T:
            try:
                async with asyncio.timeout(self._timeout):
                    return await asyncio.to_thread(run)
            except TimeoutError:
                raise _unavailable(
                    f"vault {op} {where}: no answer within {self._timeout:g}s", False
                ) from None

        def should_retry(state: RetryCallState) -> bool:
            exc = state.outcome.exception() if state.outcome else None
            if not isinstance(exc, Unavailable):
                return False
            return idempotent or getattr(exc, "not_applied", False)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(attempts or self._attempts),
            wait=self._wait,
            retry=should_retry,
            sleep=self._sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await once()
        raise AssertionError("unreachable: tenacity re-raises the last error")


# --------------------------------------------------------------------------------------------------
# Error mapping
# --------------------------------------------------------------------------------------------------


def _unavailable(message: str, not_applied: bool, delay: float = 1.0) -> Unavailable:
    err = Unavailable(message, delay=delay)
    # Marks failures where the server certainly did not apply the request, so even a
    # non-idempotent call may be retried.
    err.not_applied = not_applied  # type: ignore[attr-defined]
    return err


def _detail(exc: BaseException, sensitive: tuple[str, ...]) -> str:
    errors = getattr(exc, "errors", None)
    text = "; ".join(str(e) for e in errors) if errors else ""
    # Vault does not echo request bodies, but scrub what we sent anyway before it reaches a message.
    text = scrub_text(text, sensitive)[:_MAX_DETAIL]
    return f" ({text})" if text else ""


def _translate(
    exc: BaseException, op: str, where: str, addr: str, sensitive: tuple[str, ...]
) -> GatewayError:
    head = f"vault {op} {where}"
    detail = _detail(exc, sensitive)
    if isinstance(exc, hvac_exc.InvalidPath):
        return NotFound(f"{head}: not found{detail}")
    if isinstance(exc, hvac_exc.Unauthorized):
        return Unauthorized(f"{head}: token not accepted{detail}")
    if isinstance(exc, hvac_exc.Forbidden):
        return Forbidden(f"{head}: permission denied (bad token or policy){detail}")
    if isinstance(exc, hvac_exc.InvalidRequest):
        if "check-and-set" in detail:
            return Conflict(f"{head}: check-and-set version mismatch{detail}")
        return InvalidObject(f"{head}: rejected as invalid{detail}")
    if isinstance(exc, hvac_exc.ParamValidationError):
        return InvalidObject(f"{head}: invalid parameters{detail}")
    if isinstance(exc, hvac_exc.RateLimitExceeded):
        return _unavailable(f"{head}: rate limited{detail}", True, delay=2.0)
    if isinstance(exc, hvac_exc.VaultDown):
        return _unavailable(f"{head}: server sealed or unavailable{detail}", True, delay=5.0)
    if isinstance(exc, hvac_exc.BadGateway):
        return _unavailable(f"{head}: bad gateway{detail}", True)
    if isinstance(exc, hvac_exc.VaultNotInitialized):
        return _unavailable(f"{head}: server not initialised{detail}", True, delay=5.0)
    if isinstance(exc, hvac_exc.VaultError):  # 500 and anything unexpected: outcome unknown
        return _unavailable(f"{head}: server error {type(exc).__name__}{detail}", False)
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return _unavailable(f"{head}: connect to {addr} timed out", True)
    if isinstance(exc, requests.exceptions.Timeout):
        return _unavailable(f"{head}: no answer from {addr} in time", False)
    if isinstance(exc, requests.exceptions.ConnectionError):
        # Refused / reset / DNS: almost always before the request was read; Vault writes are
        # all-or-nothing per request, so a retry cannot half-apply anything.
        return _unavailable(f"{head}: cannot reach {addr} ({type(exc).__name__})", True)
    return _unavailable(f"{head}: request failed ({type(exc).__name__})", False)


# --------------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------------


def _check_path(path: str, *, what: str = "path") -> str:
    if not isinstance(path, str) or not path or path.startswith("/") or path.endswith("/"):
        raise InvalidObject(f"vault {what} {path!r} must be a non-empty relative path")
    for segment in path.split("/"):
        if segment in ("", ".", "..") or not _PATH_SEGMENT_RE.fullmatch(segment):
            raise InvalidObject(f"vault {what} {path!r} has an invalid segment {segment!r}")
    return path


def _check_data(path: str, data: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(data, Mapping) or not data:
        raise InvalidObject(f"vault write {path}: data must be a non-empty mapping of strings")
    for key, value in data.items():
        if not isinstance(key, str) or not key:
            raise InvalidObject(f"vault write {path}: keys must be non-empty strings")
        if not isinstance(value, str):
            raise InvalidObject(f"vault write {path}: value of key {key!r} must be a string")
    return dict(data)


def _check_policy_name(name: str) -> str:
    if not isinstance(name, str) or not _POLICY_NAME_RE.fullmatch(name):
        raise InvalidObject(f"vault policy name {name!r} is invalid (lowercase, digits, '-', '_', '.')")
    return name


def _parse_time(value: str) -> datetime:
    # Vault sends RFC 3339 with nanoseconds; Python 3.11 accepts it and keeps microseconds.
    return datetime.fromisoformat(value)


# --------------------------------------------------------------------------------------------------
# Policies (seeds 000 and 004: who reads or writes which path)
# --------------------------------------------------------------------------------------------------

#: Secrets that live in (or are synced by ESO into) ``tenant-<slug>``. Must match the inventory in
#: ``soctalk_secrets.domain`` (a unit test checks it; this library cannot import a service).
TENANT_NAMESPACE_PURPOSES: tuple[str, ...] = (
    "wazuh-bootstrap",
    "thehive-bootstrap",
    "cortex-bootstrap",
    "cassandra-creds",
    "wazuh-authd-secret",
    "adapter-token",
)
#: Per-tenant secrets that live in (or are synced into) ``soctalk-system`` as ``tenant-<id>-*``.
SYSTEM_NAMESPACE_PURPOSES: tuple[str, ...] = ("llm", "wazuh", "thehive", "cortex")

SECRETS_WRITER_POLICY = "soctalk-secrets-writer"
ORCHESTRATOR_POLICY = "soctalk-orchestrator"
ESO_SYSTEM_READER_POLICY = "soctalk-eso-system-reader"
ESO_TENANT_READER_PREFIX = "soctalk-eso-reader-"


def eso_reader_policy_name(slug: str) -> str:
    return ESO_TENANT_READER_PREFIX + _check_label(slug, "slug")


def vault_policies(
    mssp_id: str, tenant_slugs: Iterable[str] = (), *, mount: str = "secret"
) -> dict[str, str]:
    """ACL policy documents for one install, ``{policy_name: hcl}``, deterministic.

    * ``soctalk-secrets-writer`` — the secrets service: create/read/update/delete every tenant secret
      of this MSSP, and read/list/delete their metadata (versions, listing, purge). Nothing outside
      ``<mount>/…/<mssp>/tenants/``; no policy or auth rights, so it cannot widen its own access.
    * ``soctalk-eso-reader-<slug>`` — ESO's SecretStore in ``tenant-<slug>``: read-only on exactly
      that tenant's namespace-placed secrets (bootstrap, Cassandra, authd, adapter token). Not its LLM
      or integration secrets, which seed 000 keeps in ``soctalk-system``; nothing of other tenants.
    * ``soctalk-eso-system-reader`` — ESO's SecretStore in ``soctalk-system``: read-only on every
      tenant's ``llm``/``wazuh``/``thehive``/``cortex`` secrets (the ``tenant-<id>-*`` Secrets).
    * ``soctalk-orchestrator`` — read-only on the same per-tenant LLM and integration secrets, for
      an orchestrator that reads Vault directly instead of ESO-synced Secrets.
    """
    mssp = _check_label(mssp_id, "mssp_id")
    mount = _check_path(mount, what="mount")
    base = f"{mount}/data/{mssp}/tenants"
    meta = f"{mount}/metadata/{mssp}/tenants"
    system_paths = [f"{base}/+/{p}" for p in SYSTEM_NAMESPACE_PURPOSES]

    docs = {
        SECRETS_WRITER_POLICY: _hcl(
            f"{SECRETS_WRITER_POLICY}: the secrets service manages tenant secrets of MSSP {mssp}",
            [
                (f"{base}/*", ["create", "read", "update", "delete"]),
                (f"{meta}/*", ["read", "list", "delete"]),
            ],
        ),
        ESO_SYSTEM_READER_POLICY: _hcl(
            f"{ESO_SYSTEM_READER_POLICY}: ESO in soctalk-system syncs per-tenant LLM/integration secrets",
            [(p, ["read"]) for p in system_paths],
        ),
        ORCHESTRATOR_POLICY: _hcl(
            f"{ORCHESTRATOR_POLICY}: reads per-tenant LLM and integration secrets, nothing else",
            [(p, ["read"]) for p in system_paths],
        ),
    }
    for slug in sorted(set(tenant_slugs)):
        name = eso_reader_policy_name(slug)
        docs[name] = _hcl(
            f"{name}: ESO in tenant-{slug} reads that tenant's namespace secrets only",
            [(f"{base}/{slug}/{p}", ["read"]) for p in TENANT_NAMESPACE_PURPOSES],
        )
    return docs


def _hcl(comment: str, rules: list[tuple[str, list[str]]]) -> str:
    lines = [f"# {comment}"]
    for path, caps in rules:
        # json.dumps gives HCL-compatible quoted strings.
        lines += [
            f"path {json.dumps(path)} {{",
            f"  capabilities = [{', '.join(map(json.dumps, caps))}]",
            "}",
        ]
    return "\n".join(lines) + "\n"


def _check_label(value: str, what: str) -> str:
    if not isinstance(value, str) or not _LABEL_RE.fullmatch(value):
        raise InvalidObject(f"{what} {value!r} must be a DNS label (lowercase letters, digits, '-')")
    return value
