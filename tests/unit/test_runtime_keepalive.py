"""The runtime's keep-alive: ``in_progress`` at a fixed period while a handler runs, none after."""

from __future__ import annotations

import asyncio

from soctalk_common.runtime import _KeepAlive

from tests.support.waiting import eventually


class _Message:
    """Stands in for the JetStream message: only counts the progress signals it receives."""

    def __init__(self, *, fail: bool = False) -> None:
        self.signals = 0
        self.fail = fail

    async def in_progress(self) -> None:
        self.signals += 1
        if self.fail:
            raise ConnectionError("connection closed")


async def test_signals_progress_periodically_until_cancelled() -> None:
    msg = _Message()
    keep = _KeepAlive(msg, 0.01)
    await eventually(lambda: _ge(msg.signals, 3), what="three progress signals")
    keep.cancel()
    keep.cancel()  # idempotent
    assert keep._handle is None


async def test_a_failing_signal_does_not_stop_the_next_ones() -> None:
    msg = _Message(fail=True)
    keep = _KeepAlive(msg, 0.01)
    await eventually(lambda: _ge(msg.signals, 2), what="signals despite errors")
    keep.cancel()


async def test_nothing_is_sent_by_a_short_handler() -> None:
    msg = _Message()
    keep = _KeepAlive(msg, 30.0)
    await asyncio.sleep(0)
    keep.cancel()
    assert msg.signals == 0


async def _ge(value: int, n: int) -> bool:
    return value >= n
