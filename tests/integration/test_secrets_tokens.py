"""Adapter tokens as provisioned: the right token is accepted; forged, malformed, unknown, expired,
revoked and cross-tenant ones are refused; Postgres holds only the prefix and a keyed hash."""

from __future__ import annotations

import secrets
from datetime import timedelta

import pytest
from soctalk_common.clock import FakeClock
from soctalk_common.gateways.kube import KubeGateway
from soctalk_secrets import handlers, records
from soctalk_secrets.domain import Accept, Refuse, parse_token
from soctalk_secrets.tokens import verify_adapter_token

from tests.integration import test_secrets_harness as h

pytestmark = pytest.mark.integration
kube = h.kube


async def test_token_verification(uow, kube: KubeGateway) -> None:
    clock = FakeClock()
    deps = await h.make_deps(uow, kube, clock=clock)
    acme, globex = await h.add_tenant(uow, state="active"), await h.add_tenant(uow, state="active")
    for t in (acme, globex):
        await h.handle(handlers.on_tenant_accepted, h.accepted(t), deps, uow)
    token = (await kube.read_secret(f"tenant-{acme.slug}", "adapter-token")).data["token"]  # type: ignore[union-attr]
    prefix = parse_token(token)

    async def verify(presented: str, tenant=acme, key: bytes = deps.token_key) -> Accept | Refuse:  # type: ignore[no-untyped-def]
        return await verify_adapter_token(uow.sessionmaker, key, presented, tenant.id, clock.now())

    assert await verify(token) == Accept(tenant_id=str(acme.id), prefix=prefix)
    forged = f"sta_{prefix}_{secrets.token_urlsafe(48)}"  # right prefix, wrong secret
    assert await verify(forged) == Refuse("bad_secret")
    assert await verify(token[:-1] + ("A" if token[-1] != "A" else "B")) == Refuse("bad_secret")
    assert await verify(f"sta_{'z' * 12}_{secrets.token_urlsafe(48)}") == Refuse("unknown_prefix")
    assert await verify("Bearer " + token) == Refuse("malformed")
    assert await verify(token, tenant=globex) == Refuse("wrong_tenant")  # acme's token for globex
    assert await verify(token, key=b"another-install-signing-key") == Refuse("bad_secret")

    [row] = await h.token_rows(uow, acme.id)
    assert row.prefix == prefix and token.split("_", 2)[2] not in row.token_hash

    await h.set_state(uow, acme.id, "suspended")
    assert await verify(token) == Refuse("tenant_inactive")
    await h.set_state(uow, acme.id, "active")

    async with uow() as tx:  # expiry, as a rotation with overlap sets it
        await records.overlap_old_tokens(tx, acme.id, [], now=clock.now(), overlap=timedelta(seconds=60))
        await tx.commit()
    assert isinstance(await verify(token), Accept)
    clock.advance(60)
    assert await verify(token) == Refuse("expired")

    globex_token = (await kube.read_secret(f"tenant-{globex.slug}", "adapter-token")).data["token"]  # type: ignore[union-attr]
    assert isinstance(await verify(globex_token, tenant=globex), Accept)
    async with uow() as tx:  # revocation is immediate
        assert await records.revoke_tokens(tx, globex.id, clock.now()) == [parse_token(globex_token)]
        await tx.commit()
    assert await verify(globex_token, tenant=globex) == Refuse("revoked")
