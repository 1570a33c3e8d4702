"""Fuzzing the two front doors with Hypothesis: every HTTP API body and every CLI request file.

* HTTP API: the real app (``create_app``) in process through ``httpx.ASGITransport``, publishing to a
  real NATS and reading a real Postgres (as ``tests/integration/test_api.py``). Each endpoint that takes
  a body (``POST /api/mssp/tenants``, ``:upgrade``, ``:decommission``, ``:suspend``) gets inputs that
  are invalid by construction; each must be refused with 422 naming the field (JSON path) and never
  echoing a submitted key, and nothing may reach the bus. Arbitrary JSON (and non-JSON bytes) must
  never cause a 5xx; it is accepted only when it is valid by the API's own models.
* CLI: ``soctalk tenants request -f <file>`` (YAML or JSON, wrapped or bare config, not a mapping,
  not YAML, not UTF-8) through Typer's runner with ``NATS_URL`` pointing at a real server: exit code 2
  and the field's path on the terminal, nothing published.

After each run the surface still works (a valid request is accepted and published).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from hypothesis import strategies as st
from pydantic import ValidationError
from soctalk_api.app import (
    ApiDeps,
    DecommissionBody,
    SuspendBody,
    TenantRequestBody,
    UpgradeBody,
    create_app,
)
from soctalk_api.auth import issue_token
from soctalk_api.commands import validate_tenant_config
from soctalk_common import events as ev
from soctalk_common.bus import EVENTS_STREAM, Bus
from soctalk_common.db import models as m
from soctalk_common.settings import Settings
from typer.testing import CliRunner

from tests.reliability.conftest import SIZES
from tests.reliability.results import record
from tests.support import reliability_fuzz as fz

pytestmark = pytest.mark.reliability

KEY = "fuzz-signing-key-0123456789abcdef0123456789"
FUZZ: dict[str, dict[str, Any]] = {}


def _record(surface: str, tried: Counter[str], rejected: Counter[str], accepted_valid: int = 0) -> None:
    FUZZ[surface] = {"tried": sum(tried.values()), "rejected": sum(rejected.values()),
                     "accepted_valid": accepted_valid, "by_kind": dict(sorted(tried.items()))}
    record("fuzz_inputs", {"surfaces": FUZZ, "fuzz_tried": sum(s["tried"] for s in FUZZ.values()),
                           "fuzz_rejected": sum(s["rejected"] for s in FUZZ.values()),
                           "fuzz_accepted_valid": sum(s["accepted_valid"] for s in FUZZ.values())})


async def _published(bus: Bus) -> int:
    return int((await bus.js.stream_info(EVENTS_STREAM)).state.messages)


# ------------------------------------------------------------------------------------------------
# HTTP API
# ------------------------------------------------------------------------------------------------


@pytest.fixture
async def api(bus: Bus, sessionmaker: Any, uow: Any) -> Any:
    app = create_app(ApiDeps(settings=Settings(jwt_signing_key=KEY, auth_mode="internal"), bus=bus,
                             sessionmaker=sessionmaker))
    tid = uuid.uuid4()  # a known tenant, so bodies of the per-tenant commands are judged, not 404'd
    async with uow() as tx:
        tx.session.add(m.Tenant(id=tid, mssp_id=uuid.uuid4(), install_id=uuid.uuid4(), slug="fuzz",
                                request_id="fuzz-1", display_name="Fuzz", state="active", profile="small-dev",
                                chart_version="v1.1.0", config={}))
        await tx.commit()
    headers = {"Authorization": f"Bearer {issue_token(KEY, 'fuzz@mssp')}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("127.0.0.1", 40000)),
                                 base_url="http://api", headers=headers) as client:
        yield client, tid


ENDPOINTS = {
    "tenants": ("/api/mssp/tenants", fz.request_body_cases, TenantRequestBody),
    "upgrade": ("/api/mssp/tenants/{tid}:upgrade", fz.upgrade_body_cases, UpgradeBody),
    "decommission": ("/api/mssp/tenants/{tid}:decommission", fz.decommission_body_cases, DecommissionBody),
    "suspend": ("/api/mssp/tenants/{tid}:suspend", fz.suspend_body_cases, SuspendBody),
}


_NOT_JSON = object()


def _parse_json(body: bytes) -> Any:
    if body == b"":
        return None
    try:
        return json.loads(body)
    except ValueError:
        return _NOT_JSON


def _valid_by_models(name: str, body: Any) -> bool:
    """The API's own oracle: its pydantic body model, and for a tenant request the provisioner's
    validator (which the API runs before publishing)."""
    model = ENDPOINTS[name][2]
    if name == "suspend" and body is None:  # the body is optional there (``json=None`` sends none)
        return True
    try:
        parsed = model.model_validate(body)
    except ValidationError:
        return False
    return not (isinstance(parsed, TenantRequestBody) and validate_tenant_config(parsed.config))


async def test_every_api_body_is_refused_naming_its_field(api: Any, bus: Bus) -> None:
    client, tid = api
    tried: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    accepted_valid = 0

    for name, (route, cases, _) in ENDPOINTS.items():
        url = route.format(tid=tid)

        async def invalid(case: fz.Case, name: str = name, url: str = url) -> None:
            before = await _published(bus)
            r = await client.post(url, json=case.doc)
            tried[f"{name}: {case.kind}"] += 1
            assert r.status_code == 422, (case, r.status_code, r.text)
            paths = [e["path"] for e in r.json()["errors"]]
            assert fz.names_path(paths, case.path), (case.path, paths)
            if case.kind == "plaintext LLM key" and len(case.doc["config"]["llm"]["apiKey"]) >= 6:
                assert case.doc["config"]["llm"]["apiKey"] not in r.text  # never echo a submitted key
            assert await _published(bus) == before, "a refused request published something"
            rejected[f"{name}: {case.kind}"] += 1

        await fz.explore(cases(), invalid, max_examples=SIZES.fuzz_examples)

        async def anything(body: Any, name: str = name, url: str = url) -> None:
            nonlocal accepted_valid
            before = await _published(bus)
            if isinstance(body, bytes):
                r = await client.post(url, content=body, headers={"Content-Type": "application/json"})
            else:
                r = await client.post(url, json=body)
            tried[f"{name}: arbitrary"] += 1
            assert r.status_code < 500, (body, r.status_code, r.text)
            if isinstance(body, bytes):  # judged as the JSON it may be; empty = no body (optional for some)
                parsed = _parse_json(body)
                valid = parsed is not _NOT_JSON and _valid_by_models(name, None if body == b"" else parsed)
            else:
                valid = _valid_by_models(name, body)
            if valid:
                assert r.status_code == 202, (body, r.text)
                assert await _published(bus) == before + 1
                accepted_valid += 1
            elif isinstance(body, bytes):  # invalid JSON, or JSON refused: 400 for undecodable, else 422
                assert r.status_code in (400, 422), (body, r.status_code, r.text)
                assert await _published(bus) == before
                rejected[f"{name}: arbitrary"] += 1
            else:
                assert r.status_code == 422 and r.json().get("errors"), (body, r.status_code, r.text)
                assert await _published(bus) == before
                rejected[f"{name}: arbitrary"] += 1

        await fz.explore(st.one_of(fz.JSON, st.binary(max_size=100)), anything,
                         max_examples=max(10, SIZES.fuzz_examples // 2))

    # Still serving: a valid request is accepted and published.
    before = await _published(bus)
    ok = await client.post("/api/mssp/tenants", json={"requestId": f"fuzz-ok-{uuid.uuid4().hex[:6]}",
                                                       "config": fz.VALID_CONFIG})
    assert ok.status_code == 202 and await _published(bus) == before + 1
    assert (await client.get("/api/mssp/tenants")).status_code == 200
    _record("http_api", tried, rejected, accepted_valid)


# ------------------------------------------------------------------------------------------------
# CLI request files
# ------------------------------------------------------------------------------------------------


def _file_cases() -> st.SearchStrategy[tuple[bytes, str, str]]:
    """``(file content, text the CLI must print, kind)``."""

    def dump(doc: Any, fmt: str) -> bytes:
        return (json.dumps(doc) if fmt == "json" else yaml.safe_dump(doc, allow_unicode=True)).encode()

    fmt = st.sampled_from(["yaml", "json"])
    wrapped = st.tuples(fz.config_cases(), fmt).map(
        lambda t: (dump({"requestId": "fuzz-cli", "config": t[0].doc}, t[1]), "$.config" + t[0].path[1:],
                   f"wrapped config: {t[0].kind}"))
    bare = st.tuples(fz.config_cases(), fmt).map(
        lambda t: (dump(t[0].doc, t[1]), "$.config" + t[0].path[1:], f"bare config: {t[0].kind}"))
    not_mapping = st.tuples(st.one_of(st.lists(fz.JSON_SCALARS, max_size=3), st.integers(), st.booleans(),
                                      fz.SAFE_TEXT.filter(lambda s: s.strip() != "")), fmt).map(
        lambda t: (dump(t[0], t[1]), "$ must be a mapping", "not a mapping"))
    request_id = st.tuples(st.one_of(st.integers(), st.lists(st.integers(), max_size=2),
                                     st.dictionaries(fz.KEY, st.integers(), max_size=2)), fmt).map(
        lambda t: (dump({"requestId": t[0], "config": fz.VALID_CONFIG}, t[1]), "$.requestId", "bad requestId"))
    not_yaml = st.sampled_from(["config: [unclosed", "a: b: c", "{", "- a\n b: [", "\t- tab", "key: 'open"]).map(
        lambda t: (t.encode(), "not valid YAML/JSON", "not YAML"))
    return st.one_of(wrapped, bare, not_mapping, request_id, not_yaml)


async def test_every_cli_request_file_is_refused_naming_its_field(nats_url: str, bus: Bus, tmp_path: Path) -> None:
    from soctalk_cli.main import app

    runner = CliRunner()
    env = {"NATS_URL": nats_url, "DATABASE_URL": "postgresql+asyncpg://nobody@127.0.0.1:1/none"}
    tried: Counter[str] = Counter()
    rejected: Counter[str] = Counter()

    def invoke(path: Path) -> Any:
        return runner.invoke(app, ["tenants", "request", "-f", str(path)], env=env)

    async def check(case: tuple[bytes, str, str]) -> None:
        content, must_say, kind = case
        path = tmp_path / f"request-{uuid.uuid4().hex[:8]}.yaml"
        path.write_bytes(content)
        before = await _published(bus)
        result = await asyncio.to_thread(invoke, path)
        tried[kind] += 1
        out = (result.stdout or "") + (getattr(result, "stderr", "") or "")
        assert result.exit_code == 2, (kind, result.exit_code, out[-800:], repr(result.exception))
        assert must_say in out, (kind, must_say, out[-800:])
        assert await _published(bus) == before
        rejected[kind] += 1

    try:
        await fz.explore(_file_cases(), check, max_examples=SIZES.fuzz_examples)
    finally:
        _record("cli_request_file", tried, rejected)

    # Still works: a valid file is published (exit 0).
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"requestId": f"fuzz-cli-ok-{uuid.uuid4().hex[:6]}", "config": fz.VALID_CONFIG}))
    before = await _published(bus)
    result = await asyncio.to_thread(invoke, good)
    assert result.exit_code == 0, (result.stdout, repr(result.exception))
    assert await _published(bus) == before + 1
    last = await bus.js.get_last_msg(EVENTS_STREAM, "soctalk.tenant.>")
    assert isinstance(ev.parse_event(last.data), ev.TenantRequested)


def test_cli_refuses_a_request_file_that_is_not_utf8(tmp_path: Path) -> None:
    """Minimal reproduction: ``load_request_file`` (cli/soctalk_cli/commands.py) catches a missing file
    and bad YAML but not ``UnicodeDecodeError`` from ``path.read_text()``: a Latin-1 or binary file
    ends the command with a traceback and exit 1 instead of a clear rejection (exit 2, naming the file)."""
    from soctalk_cli.main import app

    path = tmp_path / "tenant-latin1.yaml"
    path.write_bytes("config:\n  displayName: Soci\u00e9t\u00e9 G\u00e9n\u00e9rale\n".encode("latin-1"))
    result = CliRunner().invoke(app, ["tenants", "request", "-f", str(path)],
                                env={"NATS_URL": "nats://127.0.0.1:1"})
    out = (result.stdout or "") + (getattr(result, "stderr", "") or "")
    assert result.exit_code == 2 and str(path) in out, (result.exit_code, out[-500:], repr(result.exception))
