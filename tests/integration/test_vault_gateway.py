"""VaultGateway against a real OpenBao: KV v2, error mapping, retries, and real policy enforcement.

Each test works under its own random MSSP id, so tests never see each other's data on the shared
session server. Faults are real: a port nothing listens on, a listener that never answers, an
in-process HTTP proxy that answers 503 before forwarding, and a second OpenBao that we seal.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import aiohttp
import hvac
import pytest
from aiohttp import web
from soctalk_common import stack
from soctalk_common.errors import (
    Conflict,
    Forbidden,
    InvalidObject,
    PermanentError,
    TemporaryError,
    Unauthorized,
    Unavailable,
)
from soctalk_common.gateways.vault import (
    ESO_SYSTEM_READER_POLICY,
    ORCHESTRATOR_POLICY,
    SECRETS_WRITER_POLICY,
    KvSecret,
    VaultGateway,
    eso_reader_policy_name,
    vault_policies,
)
from tenacity import wait_exponential_jitter, wait_none

pytestmark = pytest.mark.integration


class RecordingSleep:
    """Injected in place of asyncio.sleep: records the backoff delays, spends no time."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


@pytest.fixture
def mssp() -> str:
    return "mssp-" + secrets.token_hex(4)


@pytest.fixture
def gw(vault_server) -> Iterator[VaultGateway]:
    gateway = VaultGateway(vault_server.addr, vault_server.token, timeout=5)
    yield gateway
    gateway.close()


def _canary() -> str:
    return "canary-" + secrets.token_urlsafe(32)


# --- KV v2 -----------------------------------------------------------------------------------------


async def test_write_read_versions_delete(gw: VaultGateway, mssp: str) -> None:
    path = f"{mssp}/tenants/acme/wazuh-bootstrap"
    v1_value, v2_value = _canary(), _canary()
    before = datetime.now(UTC) - timedelta(seconds=5)

    assert await gw.kv_write(path, {"admin_username": "admin", "admin_password": v1_value}) == 1
    assert await gw.kv_write(path, {"admin_username": "admin", "admin_password": v2_value}) == 2

    latest = await gw.kv_read(path)
    assert isinstance(latest, KvSecret)
    assert latest.version == 2
    assert latest.data == {"admin_username": "admin", "admin_password": v2_value}
    assert latest.created_time.tzinfo is not None and latest.created_time >= before
    assert v2_value not in repr(latest)  # material stays out of reprs / logs

    old = await gw.kv_read(path, version=1)
    assert old is not None and old.data["admin_password"] == v1_value and old.version == 1
    assert await gw.kv_versions(path) == [1, 2]
    assert await gw.kv_list(f"{mssp}/tenants/acme") == ["wazuh-bootstrap"]
    assert await gw.kv_list(f"{mssp}/tenants") == ["acme/"]

    await gw.kv_delete(path)
    assert await gw.kv_read(path) is None
    assert await gw.kv_versions(path) == []
    assert await gw.kv_list(f"{mssp}/tenants/acme") == []
    await gw.kv_delete(path)  # idempotent


async def test_soft_delete_of_latest_version(gw: VaultGateway, mssp: str) -> None:
    path = f"{mssp}/tenants/acme/llm"
    await gw.kv_write(path, {"api_key": _canary()})
    await gw.kv_write(path, {"api_key": _canary()})
    await gw.kv_delete(path, destroy_all=False)
    assert await gw.kv_read(path) is None  # latest is deleted
    assert await gw.kv_read(path, version=2) is None
    assert (await gw.kv_read(path, version=1)) is not None
    assert await gw.kv_versions(path) == [1]
    await gw.kv_delete(path, destroy_all=False)  # latest already deleted: still fine
    await gw.kv_delete(path)
    await gw.kv_delete(f"{mssp}/tenants/nobody/llm", destroy_all=False)  # absent: fine


async def test_absent_things_are_none_or_empty(gw: VaultGateway, mssp: str) -> None:
    assert await gw.kv_read(f"{mssp}/tenants/ghost/llm") is None
    assert await gw.kv_read(f"{mssp}/tenants/ghost/llm", version=7) is None
    assert await gw.kv_versions(f"{mssp}/tenants/ghost/llm") == []
    assert await gw.kv_list(f"{mssp}/tenants") == []
    assert await gw.policy_read(f"{mssp}-none") is None


async def test_cas_conflict(gw: VaultGateway, mssp: str) -> None:
    path = f"{mssp}/tenants/acme/adapter-token"
    value = _canary()
    assert await gw.kv_write(path, {"token": value}, cas=0) == 1  # create-only
    with pytest.raises(Conflict) as ei:
        await gw.kv_write(path, {"token": _canary()}, cas=0)
    assert path in str(ei.value) and value not in str(ei.value)
    assert isinstance(ei.value, TemporaryError)
    assert await gw.kv_write(path, {"token": _canary()}, cas=1) == 2
    with pytest.raises(Conflict):
        await gw.kv_write(path, {"token": _canary()}, cas=1)  # stale version
    assert await gw.kv_versions(path) == [1, 2]


@pytest.mark.parametrize(
    ("path", "data"),
    [
        ("/abs/path", {"k": "v"}),
        ("a/../b", {"k": "v"}),
        ("trailing/", {"k": "v"}),
        ("new\nline", {"k": "v"}),
        ("ok/path", {}),
        ("ok/path", {"k": 5}),
    ],
)
async def test_invalid_paths_and_data_are_refused_before_any_call(
    gw: VaultGateway, path: str, data: dict
) -> None:
    with pytest.raises(InvalidObject):
        await gw.kv_write(path, data)


async def test_invalid_version_and_cas_are_refused(gw: VaultGateway, mssp: str) -> None:
    with pytest.raises(InvalidObject):
        await gw.kv_read(f"{mssp}/tenants/acme/llm", version=0)
    with pytest.raises(InvalidObject):
        await gw.kv_write(f"{mssp}/tenants/acme/llm", {"api_key": "x"}, cas=-1)


# --- auth errors -----------------------------------------------------------------------------------


async def test_bad_token_is_refused(vault_server, mssp: str) -> None:
    sleep = RecordingSleep()
    bad = VaultGateway(vault_server.addr, "not-a-token-" + secrets.token_hex(8), sleep=sleep)
    path = f"{mssp}/tenants/acme/llm"
    with pytest.raises((Unauthorized, Forbidden)) as ei:
        await bad.kv_read(path)
    assert isinstance(ei.value, PermanentError)
    assert f"secret/{path}" in str(ei.value)
    value = _canary()
    with pytest.raises((Unauthorized, Forbidden)) as ei:
        await bad.kv_write(path, {"api_key": value})
    assert value not in str(ei.value) and "not-a-token" not in str(ei.value)
    assert sleep.delays == []  # permanent errors are not retried
    assert "not-a-token" not in repr(bad)


# --- transient failures ----------------------------------------------------------------------------


async def test_unreachable_server_is_unavailable_after_bounded_backoff(mssp: str) -> None:
    sleep = RecordingSleep()
    gw = VaultGateway(
        f"http://127.0.0.1:{stack.free_port()}",
        "t",
        timeout=2,
        attempts=4,
        wait=wait_exponential_jitter(multiplier=0.2, max=1.0, jitter=0.1),
        sleep=sleep,
    )
    value = _canary()
    with pytest.raises(Unavailable) as ei:
        await gw.kv_write(f"{mssp}/tenants/acme/llm", {"api_key": value})
    assert "cannot reach" in str(ei.value) and value not in str(ei.value)
    assert len(sleep.delays) == 3  # 4 attempts, 3 waits
    assert all(0.2 <= d <= 1.0 for d in sleep.delays)  # bounded by max
    assert sleep.delays[1] >= 0.4  # exponential: 0.2, 0.4, 0.8 (+ jitter)
    assert await gw.health() is False


async def test_silent_server_times_out_as_unavailable(mssp: str) -> None:
    # A listener that accepts and never answers: the per-call deadline must fire.
    accepted: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sleep = RecordingSleep()
    gw = VaultGateway(f"http://127.0.0.1:{port}", "t", timeout=0.3, attempts=2, wait=wait_none(), sleep=sleep)
    try:
        with pytest.raises(Unavailable, match=r"no answer"):
            await gw.kv_read(f"{mssp}/tenants/acme/llm")
        assert len(sleep.delays) == 1  # idempotent read: retried once
        # A check-and-set write whose outcome is unknown is NOT retried: a retry could turn our own
        # applied write into a false Conflict.
        sleep.delays.clear()
        with pytest.raises(Unavailable):
            await gw.kv_write(f"{mssp}/tenants/acme/llm", {"api_key": _canary()}, cas=0)
        assert sleep.delays == []
    finally:
        for w in accepted:
            w.close()
        server.close()
        await server.wait_closed()
        gw.close()


class FlakyVaultProxy:
    """Real HTTP proxy in front of OpenBao that answers ``status`` to the first ``failures`` requests."""

    def __init__(self, upstream: str, *, failures: int, status: int = 503) -> None:
        self.upstream = upstream
        self.remaining = failures
        self.status = status
        self.seen = 0
        self.addr = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.seen += 1
        if self.remaining > 0:
            self.remaining -= 1
            # Exactly "application/json", as Vault sends it (hvac parses error bodies only then).
            return web.Response(
                status=self.status,
                body=b'{"errors": ["injected fault"]}',
                headers={"Content-Type": "application/json"},
            )
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower().startswith("x-vault")}
        async with self._session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=await request.read()
        ) as resp:
            return web.Response(
                status=resp.status, body=await resp.read(), content_type=resp.content_type or None
            )

    async def __aenter__(self) -> FlakyVaultProxy:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        port = stack.free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self._session = aiohttp.ClientSession()
        self.addr = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._session is not None and self._runner is not None
        await self._session.close()
        await self._runner.cleanup()


@pytest.fixture
async def flaky(vault_server) -> AsyncIterator[FlakyVaultProxy]:
    async with FlakyVaultProxy(vault_server.addr, failures=0) as proxy:
        yield proxy


@pytest.mark.parametrize("status", [503, 502, 500, 429])
async def test_transient_5xx_is_retried_then_succeeds(
    flaky: FlakyVaultProxy, vault_server, mssp: str, status: int
) -> None:
    sleep = RecordingSleep()
    gw = VaultGateway(flaky.addr, vault_server.token, attempts=4, sleep=sleep)
    path = f"{mssp}/tenants/acme/cortex"
    flaky.status, flaky.remaining = status, 2
    assert await gw.kv_write(path, {"api_key": "k"}) == 1
    assert len(sleep.delays) == 2 and flaky.seen == 3
    flaky.status, flaky.remaining = status, 2
    secret = await gw.kv_read(path)
    assert secret is not None and secret.data == {"api_key": "k"}
    gw.close()


async def test_persistent_5xx_gives_up_with_unavailable(
    flaky: FlakyVaultProxy, vault_server, mssp: str
) -> None:
    sleep = RecordingSleep()
    gw = VaultGateway(flaky.addr, vault_server.token, attempts=3, sleep=sleep)
    flaky.remaining = 100
    with pytest.raises(Unavailable, match=r"sealed or unavailable \(injected fault\)"):
        await gw.kv_read(f"{mssp}/tenants/acme/llm")
    assert len(sleep.delays) == 2 and flaky.seen == 3
    gw.close()


async def test_uncertain_500_is_not_retried_for_token_creation(flaky: FlakyVaultProxy, vault_server) -> None:
    sleep = RecordingSleep()
    gw = VaultGateway(flaky.addr, vault_server.token, attempts=3, sleep=sleep)
    flaky.status, flaky.remaining = 500, 1
    with pytest.raises(Unavailable):
        await gw.token_create(["default"], "1m")
    assert sleep.delays == []
    flaky.status, flaky.remaining = 503, 1  # 503: certainly not applied, safe to retry
    assert await gw.token_create(["default"], "1m")
    assert len(sleep.delays) == 1
    gw.close()


@pytest.fixture(scope="module")
def sealed_bao() -> Iterator[stack.OpenBaoServer]:
    """A second, private OpenBao that the test seals (never the shared session server)."""
    server = stack.OpenBaoServer().start()
    try:
        hvac.Client(url=server.addr, token=server.token).sys.seal()
        yield server
    finally:
        server.cleanup()


async def test_sealed_server_is_unavailable(sealed_bao: stack.OpenBaoServer) -> None:
    sleep = RecordingSleep()
    gw = VaultGateway(sealed_bao.addr, sealed_bao.token, attempts=3, sleep=sleep)
    with pytest.raises(Unavailable, match="sealed") as ei:
        await gw.kv_read("m/tenants/acme/llm")
    assert ei.value.delay >= 1
    assert len(sleep.delays) == 2
    assert await gw.health() is False
    gw.close()


async def test_health(gw: VaultGateway) -> None:
    assert await gw.health() is True


# --- policies: real enforcement --------------------------------------------------------------------


def test_policy_documents_are_deterministic_and_scoped() -> None:
    docs = vault_policies("mssp-abc", ["beta", "alpha", "alpha"])
    assert list(docs) == [
        SECRETS_WRITER_POLICY,
        ESO_SYSTEM_READER_POLICY,
        ORCHESTRATOR_POLICY,
        "soctalk-eso-reader-alpha",
        "soctalk-eso-reader-beta",
    ]
    assert docs == vault_policies("mssp-abc", ["alpha", "beta"])
    assert 'path "secret/data/mssp-abc/tenants/*"' in docs[SECRETS_WRITER_POLICY]
    assert 'path "secret/data/mssp-abc/tenants/+/llm"' in docs[ORCHESTRATOR_POLICY]
    alpha = docs["soctalk-eso-reader-alpha"]
    assert 'path "secret/data/mssp-abc/tenants/alpha/adapter-token"' in alpha
    assert "/llm" not in alpha and "beta" not in alpha and '"update"' not in alpha
    with pytest.raises(InvalidObject):
        vault_policies("MSSP/../x")
    with pytest.raises(InvalidObject):
        eso_reader_policy_name("a*")


@pytest.fixture
async def installed(gw: VaultGateway, mssp: str) -> dict[str, str]:
    """Install the policies for tenants alpha and beta and seed one secret per relevant path."""
    for name, hcl in vault_policies(mssp, ["alpha", "beta"]).items():
        # Policy names are install-wide; suffix them so parallel tests cannot interfere.
        await gw.policy_write(f"{name}-{mssp}", hcl)
    for slug in ("alpha", "beta"):
        for purpose in ("adapter-token", "wazuh-bootstrap", "llm", "wazuh"):
            await gw.kv_write(f"{mssp}/tenants/{slug}/{purpose}", {"value": f"{slug}-{purpose}"})
    return {name: f"{name}-{mssp}" for name in vault_policies(mssp, ["alpha", "beta"])}


async def _as(vault_server, gw: VaultGateway, policy: str) -> VaultGateway:
    token = await gw.token_create([policy], "5m")
    return VaultGateway(vault_server.addr, token, attempts=1)


async def test_policy_round_trip(gw: VaultGateway, installed: dict[str, str], mssp: str) -> None:
    name = installed[ORCHESTRATOR_POLICY]
    assert await gw.policy_read(name) == vault_policies(mssp)[ORCHESTRATOR_POLICY]
    await gw.policy_delete(name)
    assert await gw.policy_read(name) is None
    await gw.policy_delete(name)  # idempotent


async def test_eso_reader_reads_its_tenant_and_is_refused_elsewhere(
    vault_server, gw: VaultGateway, installed: dict[str, str], mssp: str
) -> None:
    reader = await _as(vault_server, gw, installed[eso_reader_policy_name("alpha")])
    own = await reader.kv_read(f"{mssp}/tenants/alpha/adapter-token")
    assert own is not None and own.data == {"value": "alpha-adapter-token"}
    assert (await reader.kv_read(f"{mssp}/tenants/alpha/wazuh-bootstrap")) is not None
    for refused in (
        f"{mssp}/tenants/beta/adapter-token",  # another tenant
        f"{mssp}/tenants/alpha/llm",  # own tenant, but a soctalk-system secret
        f"{mssp}/tenants/alpha/wazuh",
    ):
        with pytest.raises(Forbidden, match="permission denied"):
            await reader.kv_read(refused)
    with pytest.raises(Forbidden):
        await reader.kv_write(f"{mssp}/tenants/alpha/adapter-token", {"value": "x"})
    with pytest.raises(Forbidden):
        await reader.kv_list(f"{mssp}/tenants/alpha")
    reader.close()


async def test_orchestrator_reads_llm_and_integration_secrets_only(
    vault_server, gw: VaultGateway, installed: dict[str, str], mssp: str
) -> None:
    orch = await _as(vault_server, gw, installed[ORCHESTRATOR_POLICY])
    for slug in ("alpha", "beta"):
        assert (await orch.kv_read(f"{mssp}/tenants/{slug}/llm")) is not None
        assert (await orch.kv_read(f"{mssp}/tenants/{slug}/wazuh")) is not None
        with pytest.raises(Forbidden):
            await orch.kv_read(f"{mssp}/tenants/{slug}/wazuh-bootstrap")
    with pytest.raises(Forbidden):
        await orch.kv_write(f"{mssp}/tenants/alpha/llm", {"api_key": "x"})
    eso_system = await _as(vault_server, gw, installed[ESO_SYSTEM_READER_POLICY])
    assert (await eso_system.kv_read(f"{mssp}/tenants/beta/llm")) is not None
    with pytest.raises(Forbidden):
        await eso_system.kv_read(f"{mssp}/tenants/beta/adapter-token")
    orch.close()
    eso_system.close()


async def test_writer_manages_its_mssp_only(
    vault_server, gw: VaultGateway, installed: dict[str, str], mssp: str
) -> None:
    writer = await _as(vault_server, gw, installed[SECRETS_WRITER_POLICY])
    path = f"{mssp}/tenants/gamma/thehive-bootstrap"
    assert await writer.kv_write(path, {"api_token": "t1"}, cas=0) == 1
    assert await writer.kv_write(path, {"api_token": "t2"}) == 2
    assert (await writer.kv_read(path)).data == {"api_token": "t2"}  # type: ignore[union-attr]
    assert await writer.kv_versions(path) == [1, 2]
    assert await writer.kv_list(f"{mssp}/tenants") == ["alpha/", "beta/", "gamma/"]
    await writer.kv_delete(path)
    assert await writer.kv_read(path) is None
    other = "other-" + mssp
    with pytest.raises(Forbidden):
        await writer.kv_write(f"{other}/tenants/gamma/llm", {"api_key": "x"})
    with pytest.raises(Forbidden):
        await writer.kv_read(f"{other}/tenants/gamma/llm")
    with pytest.raises(Forbidden):  # cannot widen its own access
        await writer.policy_write(f"escalate-{mssp}", 'path "*" { capabilities = ["sudo"] }')
    writer.close()


async def test_bad_policy_hcl_is_invalid(gw: VaultGateway, mssp: str) -> None:
    with pytest.raises(InvalidObject):
        await gw.policy_write(f"broken-{mssp}", "path { nope")
