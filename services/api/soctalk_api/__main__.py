"""``python -m soctalk_api``: the HTTP API process (uvicorn), wired in one place."""

from __future__ import annotations

import asyncio
import os

import uvicorn
from soctalk_common.bus import Bus
from soctalk_common.db.session import make_engine, make_sessionmaker
from soctalk_common.logging import configure_logging
from soctalk_common.memory import tune_process
from soctalk_common.settings import Settings

from soctalk_api.app import ApiDeps, create_app


async def main() -> None:
    tune_process()  # malloc thresholds, GC threshold (soctalk_common/memory.py)
    settings = Settings()
    configure_logging("api", level=settings.log_level, json_output=settings.log_json)
    bus = await Bus.connect(settings.nats_url, name="api")
    await bus.ensure_streams()
    engine = make_engine(settings.database_url, pool_size=5)
    app = create_app(ApiDeps(settings=settings, bus=bus, sessionmaker=make_sessionmaker(engine)))
    host = os.environ.get("SOCTALK_HTTP_HOST", "0.0.0.0")  # noqa: S104 - pod IP for probes and the ingress
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=settings.http_port or 8080, log_level="warning"))
    try:
        await server.serve()
    finally:
        await bus.close()
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
