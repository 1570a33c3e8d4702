"""Install keys the secrets service owns, ensured at start (idempotent across replicas).

* The **sealing keypair** (X25519): the private half in Secret ``soctalk-sealing-key`` in the system
  namespace (only this service reads it), the public half in ``system_keys`` (name ``sealing``) where
  ``soctalk keys public`` prints it. Two replicas starting together race on creating the Secret; the
  loser gets 409 and reads the winner's key back, so there is exactly one keypair.
* The **adapter token signing key** (HMAC of token hashes): ``settings.token_hash_key`` when set
  (the chart mounts it from ``soctalk-adapter-signing-key``); otherwise read from, or created in, that
  Secret. Both values are registered for log scrubbing for the life of the process.
"""

from __future__ import annotations

import secrets

import structlog
from soctalk_common.db import models as m
from soctalk_common.errors import Conflict, PermanentError, TemporaryError
from soctalk_common.logging import register_secret
from soctalk_common.sealing import generate_keypair, public_key_from_private
from soctalk_common.uow import UnitOfWorkFactory
from sqlalchemy.dialects.postgresql import insert as pg_insert

from soctalk_secrets.domain import MANAGED_BY
from soctalk_secrets.stores import KubePort

log = structlog.get_logger(__name__)

SEALING_SECRET = "soctalk-sealing-key"
SEALING_KEY_NAME = "sealing"  # system_keys.name
SIGNING_SECRET = "soctalk-adapter-signing-key"
_MIN_SIGNING_KEY = 16


async def _read_or_create(kube: KubePort, namespace: str, name: str, make: dict[str, str], key: str) -> str:
    rec = await kube.read_secret(namespace, name)
    if rec is None:
        try:
            await kube.create_secret(namespace, name, make, labels={"managed-by": MANAGED_BY})
            log.info("secrets.install_key_created", secret_name=name, secret_namespace=namespace)
            return make[key]
        except Conflict:  # another replica created it first: use theirs
            rec = await kube.read_secret(namespace, name)
            if rec is None:
                raise TemporaryError(f"secret {namespace}/{name}: conflict, then not found") from None
    value = rec.data.get(key)
    if not value:
        raise PermanentError(f"secret {namespace}/{name} has no key {key!r}")
    return value


async def ensure_sealing_key(kube: KubePort, uow: UnitOfWorkFactory, namespace: str) -> str:
    """The install's sealing private key (created on first start); its public half is published."""
    private, public = generate_keypair()
    private = await _read_or_create(kube, namespace, SEALING_SECRET,
                                    {"private_key": private, "public_key": public}, "private_key")
    register_secret(private)
    public = public_key_from_private(private)  # the Secret is the truth; the row follows it
    stmt = pg_insert(m.SystemKey).values(name=SEALING_KEY_NAME, public_key=public)
    stmt = stmt.on_conflict_do_update(index_elements=[m.SystemKey.name], set_={"public_key": public},
                                      where=m.SystemKey.public_key != public)
    async with uow.sessionmaker() as s, s.begin():
        await s.execute(stmt)
    return private


async def adapter_signing_key(configured: str | None, kube: KubePort, namespace: str) -> bytes:
    """The HMAC key of adapter token hashes, as bytes (UTF-8 of the configured / stored string)."""
    value = configured or await _read_or_create(kube, namespace, SIGNING_SECRET,
                                                {"key": secrets.token_urlsafe(48)}, "key")
    if len(value.encode()) < _MIN_SIGNING_KEY:
        raise PermanentError(f"the adapter token signing key must be at least {_MIN_SIGNING_KEY} bytes")
    register_secret(value)
    return value.encode()
