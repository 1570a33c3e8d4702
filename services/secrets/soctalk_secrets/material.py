"""Material held while one message is handled: registered for log scrubbing, forgotten afterwards.

Seed 000: "SocTalk stores references and version labels; it does not keep the material in memory
beyond the provisioning call". Every value a handler generates, reads back or unseals goes through
:func:`hold`: from then on the log pipeline replaces it wherever it appears (``register_secret``), and
failure reasons are scrubbed of it before they reach an event. When the handler returns,
:func:`material_scope` forgets them all.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterable, Iterator
from contextvars import ContextVar

from soctalk_common.logging import forget_secret, register_secret
from soctalk_common.redact import scrub_text

_held: ContextVar[set[str] | None] = ContextVar("soctalk_secrets_held", default=None)
# How many scopes hold each value: concurrent handlers may hold the same one (a duplicate delivery
# reading back the same Secret); it is forgotten only when the last of them is done.
_holders: Counter[str] = Counter()
_MIN_LEN = 8  # shorter values (fixed usernames such as "admin") are not secret


@contextlib.contextmanager
def material_scope() -> Iterator[set[str]]:
    values: set[str] = set()
    token = _held.set(values)
    try:
        yield values
    finally:
        _held.reset(token)
        for v in values:
            _holders[v] -= 1
            if _holders[v] <= 0:
                del _holders[v]
                forget_secret(v)


def hold(values: Iterable[str]) -> None:
    """Register material for scrubbing for the rest of the current scope."""
    held = _held.get()
    for v in values:
        if isinstance(v, str) and len(v) >= _MIN_LEN:
            register_secret(v)
            if held is not None and v not in held:
                held.add(v)
                _holders[v] += 1


def scrub(text: str, values: Iterable[str] = ()) -> str:
    """``text`` without any held value (or one of ``values``) and without secret-shaped strings."""
    held = _held.get() or set()
    return scrub_text(text, {*held, *values})
