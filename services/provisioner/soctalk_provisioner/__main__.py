"""``python -m soctalk_provisioner``: connect, bootstrap, run until SIGTERM/SIGINT (then drain)."""

from __future__ import annotations

import asyncio
import gc

from soctalk_common.bus import Bus
from soctalk_common.db.session import make_engine, make_sessionmaker
from soctalk_common.logging import configure_logging
from soctalk_common.memory import fix_malloc_thresholds
from soctalk_common.settings import Settings
from soctalk_common.uow import UnitOfWorkFactory

from soctalk_provisioner.bootstrap import SERVICE, bootstrap


async def main() -> None:
    fix_malloc_thresholds()  # freed large buffers go back to the kernel (soctalk_common/memory.py)
    settings = Settings()
    configure_logging(SERVICE, level=settings.log_level, json_output=settings.log_json)
    bus = await Bus.connect(settings.nats_url, name=SERVICE, duplicate_window_s=settings.duplicate_window_s)
    engine = make_engine(settings.database_url)
    try:
        await bus.ensure_streams()
        process = bootstrap(settings, uow=UnitOfWorkFactory(make_sessionmaker(engine)), bus=bus)
        # Many short-lived objects per message: with the default first-generation threshold (700) the
        # cyclic GC runs every few messages and rescans the long-lived heap (~10 % of the CPU per tenant
        # in bench/handlers_cpu.py). As in the heartbeat service.
        gc.set_threshold(10_000, 10, 10)
        await process.run(install_signals=True)
    finally:
        await bus.close()
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
