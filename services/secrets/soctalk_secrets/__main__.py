"""``python -m soctalk_secrets``: connect, bootstrap, run until SIGTERM/SIGINT (then drain)."""

from __future__ import annotations

import asyncio
import os

from soctalk_common.bus import Bus
from soctalk_common.db.session import make_engine, make_sessionmaker
from soctalk_common.gateways.kube import KubeGateway
from soctalk_common.gateways.vault import VaultGateway
from soctalk_common.logging import configure_logging
from soctalk_common.memory import tune_process
from soctalk_common.settings import Settings
from soctalk_common.uow import UnitOfWorkFactory

from soctalk_secrets.bootstrap import SERVICE, bootstrap


async def main() -> None:
    tune_process()  # malloc thresholds, GC threshold (soctalk_common/memory.py)
    settings = Settings()
    configure_logging(SERVICE, level=settings.log_level, json_output=settings.log_json)
    bus = await Bus.connect(settings.nats_url, name=SERVICE, duplicate_window_s=settings.duplicate_window_s)
    await bus.ensure_streams()
    engine = make_engine(settings.database_url, pool_size=5)
    in_cluster = not settings.kubeconfig and "KUBERNETES_SERVICE_HOST" in os.environ
    connect = KubeGateway.in_cluster() if in_cluster else KubeGateway.from_kubeconfig(settings.kubeconfig)
    kube = await connect
    vault = None
    if settings.vault_addr and settings.vault_token:
        vault = VaultGateway(settings.vault_addr, settings.vault_token, mount=settings.vault_mount)
    try:
        process = await bootstrap(settings, uow=UnitOfWorkFactory(make_sessionmaker(engine)), bus=bus,
                                  kube=kube, vault=vault)
        await process.run(install_signals=True)
    finally:
        await kube.close()
        if vault is not None:
            vault.close()
        await bus.close()
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
