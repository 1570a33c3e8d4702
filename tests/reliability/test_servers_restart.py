"""The servers a chaos run restarts: they come back on the same port with their state.

``NatsServer(store_dir=...)`` is how ``DevStack`` runs NATS (store in its workdir): the store folder
need not exist yet, and a stop + start on the same port keeps every JetStream message. Postgres'
``restart()`` (immediate stop, crash recovery) keeps committed rows.
"""

from __future__ import annotations

import shutil

import asyncpg
import pytest
from soctalk_common import stack
from soctalk_common.bus import EVENTS_STREAM, Bus

from tests.support.reliability_stack import workdir

pytestmark = pytest.mark.reliability


async def test_nats_with_a_fresh_store_dir_restarts_on_its_port_with_its_streams(tmp_path):
    srv = stack.NatsServer(store_dir=tmp_path / "workdir" / "nats")  # as DevStack: folder not created yet
    srv.start()
    try:
        bus = await Bus.connect(srv.url)
        await bus.ensure_streams()
        seqs = [await bus.publish(f"soctalk.tenant.t{i}.X", b"{}", msg_id=f"m{i}") for i in range(5)]
        await bus.close()
        port = srv.port
        srv.stop()
        srv.start()
        assert srv.port == port
        bus = await Bus.connect(srv.url)
        info = await bus.js.stream_info(EVENTS_STREAM)
        dup = await bus.publish("soctalk.tenant.t0.X", b"{}", msg_id="m0")  # still inside the dedupe window
        await bus.close()
    finally:
        srv.cleanup()
    assert info.state.messages == 5 and seqs == [1, 2, 3, 4, 5]
    assert dup == 1  # JetStream answered with the original sequence: a duplicate, not a new message


async def test_postgres_restart_keeps_committed_rows():
    root = workdir()
    srv = stack.PostgresServer(data_root=root / "pg")
    (root / "pg").mkdir()
    srv.start()
    try:
        conn = await asyncpg.connect(srv.libpq_url)
        await conn.execute("CREATE TABLE t (id int primary key)")
        await conn.execute("INSERT INTO t SELECT generate_series(1, 100)")
        await conn.close()
        srv.restart()
        conn = await asyncpg.connect(srv.libpq_url)
        n = await conn.fetchval("SELECT count(*) FROM t")
        await conn.close()
    finally:
        srv.cleanup()
        shutil.rmtree(root, ignore_errors=True)
    assert n == 100
