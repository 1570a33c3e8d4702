"""``python -m soctalk_provisioner``: connect, bootstrap, run until SIGTERM/SIGINT (then drain)."""

from __future__ import annotations

import asyncio

from soctalk_common.bus import Bus
from soctalk_common.db.session import make_engine, make_sessionmaker
from soctalk_common.logging import configure_logging
from soctalk_common.memory import tune_process
from soctalk_common.settings import Settings
from soctalk_common.uow import UnitOfWorkFactory

from soctalk_provisioner.bootstrap import SERVICE, bootstrap


async def main() -> None:
    tune_process()  # malloc thresholds, GC threshold (soctalk_common/memory.py)
    settings = Settings()
    configure_logging(SERVICE, level=settings.log_level, json_output=settings.log_json)
    bus = await Bus.connect(settings.nats_url, name=SERVICE, duplicate_window_s=settings.duplicate_window_s)
    engine = make_engine(settings.database_url)
    try:
        await bus.ensure_streams()
        process = bootstrap(settings, uow=UnitOfWorkFactory(make_sessionmaker(engine)), bus=bus)
        await process.run(install_signals=True)
    finally:
        await bus.close()
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
