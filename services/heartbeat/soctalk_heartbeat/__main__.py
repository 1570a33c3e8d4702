"""``python -m soctalk_heartbeat``: connect, bootstrap, run until SIGTERM/SIGINT (graceful drain)."""

from __future__ import annotations

import asyncio
import gc
import os

from soctalk_common.bus import Bus
from soctalk_common.db.session import make_engine, make_sessionmaker
from soctalk_common.logging import configure_logging
from soctalk_common.memory import fix_malloc_thresholds
from soctalk_common.settings import Settings
from soctalk_common.uow import UnitOfWorkFactory

from soctalk_heartbeat.bootstrap import SERVICE, bootstrap


async def main() -> None:
    fix_malloc_thresholds()  # freed large buffers go back to the kernel (soctalk_common/memory.py)
    settings = Settings()
    configure_logging(SERVICE, level=settings.log_level, json_output=settings.log_json)
    bus = await Bus.connect(settings.nats_url, name=f"soctalk-{SERVICE}",
                            duplicate_window_s=settings.duplicate_window_s)
    engine = make_engine(settings.database_url)
    try:
        await bus.ensure_streams()
        process = bootstrap(settings, uow=UnitOfWorkFactory(make_sessionmaker(engine)), bus=bus,
                            # adapters reach the HTTP fallback from their namespaces
                            http_host=os.environ.get("SOCTALK_HTTP_HOST", "0.0.0.0"))  # noqa: S104
        # Thousands of short-lived objects per batch: with the default first-generation threshold
        # (700) the cyclic GC ran, and rescanned every module and validator, a third of the CPU per
        # heartbeat at 10k/s. gc.freeze() did as well for CPU but grew the heap (bench/README.md).
        gc.set_threshold(10_000, 10, 10)
        await process.run(install_signals=True)
    finally:
        await bus.close()
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
