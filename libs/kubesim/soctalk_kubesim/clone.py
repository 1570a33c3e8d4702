"""Deep copies of the emulator's JSON-like objects.

Objects the emulator stores and serves are what JSON (or YAML) decoding made: dicts, lists and
scalars, never aliased. ``copy.deepcopy`` handles any object graph (a memo of every node, dispatch per
type) and was a large share of the emulator's CPU; this is the same copy for these values, several
times faster. Anything else falls back to ``copy.deepcopy``.
"""

from __future__ import annotations

import copy
from typing import TypeVar

T = TypeVar("T")
_ATOMS = (str, int, float, bool, type(None))


def clone(value: T) -> T:
    kind = type(value)
    if kind is dict:
        return {k: v if type(v) in _ATOMS else clone(v) for k, v in value.items()}  # type: ignore[attr-defined,return-value]
    if kind is list:
        return [v if type(v) in _ATOMS else clone(v) for v in value]  # type: ignore[attr-defined,return-value]
    if kind in _ATOMS:
        return value
    return copy.deepcopy(value)


__all__ = ["clone"]
