"""``python -m soctalk_helm_runner``: connect, bootstrap, run until SIGTERM/SIGINT (then drain)."""

from __future__ import annotations

import asyncio
import os

from soctalk_common.bus import Bus
from soctalk_common.db.session import make_engine, make_sessionmaker
from soctalk_common.gateways import ConfigurationError
from soctalk_common.gateways.helm import HelmGateway
from soctalk_common.gateways.kube import KubeGateway
from soctalk_common.logging import configure_logging
from soctalk_common.memory import tune_process
from soctalk_common.settings import Settings
from soctalk_common.uow import UnitOfWorkFactory

from soctalk_helm_runner.bootstrap import SERVICE, bootstrap


async def _kube(settings: Settings) -> KubeGateway:
    """The kubeconfig from settings / $KUBECONFIG / ~/.kube/config, else the pod's service account."""
    try:
        return await KubeGateway.from_kubeconfig(settings.kubeconfig)
    except ConfigurationError:
        if settings.kubeconfig or not os.environ.get("KUBERNETES_SERVICE_HOST"):
            raise
        return await KubeGateway.in_cluster()


async def main() -> None:
    tune_process()  # malloc thresholds, GC threshold (soctalk_common/memory.py)
    settings = Settings()
    configure_logging(SERVICE, level=settings.log_level, json_output=settings.log_json)
    bus = await Bus.connect(settings.nats_url, name=SERVICE, duplicate_window_s=settings.duplicate_window_s)
    engine = make_engine(settings.database_url)
    kube = await _kube(settings)
    helm = HelmGateway(settings.kubeconfig, default_timeout=settings.helm_timeout_s)
    try:
        await bus.ensure_streams()
        process = bootstrap(settings, uow=UnitOfWorkFactory(make_sessionmaker(engine)), bus=bus, kube=kube,
                            helm=helm)
        await process.run(install_signals=True)
    finally:
        helm.close()
        await kube.close()
        await bus.close()
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
