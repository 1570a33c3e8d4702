"""Label and field selectors, parsed once and matched against object dicts."""

from __future__ import annotations

import re
from collections.abc import Callable

Matcher = Callable[[dict], bool]

_TERM = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9_./-]+)\s*"
    r"(?:(?P<op>==|=|!=|\s+in\s+|\s+notin\s+)\s*(?P<value>.*?))?\s*$"
)


class SelectorError(ValueError):
    pass


def _split_terms(selector: str) -> list[str]:
    """Split on commas that are not inside ``( ... )``."""
    terms, depth, current = [], 0, ""
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    terms.append(current)
    return [t for t in terms if t.strip()]


def _set_values(raw: str) -> set[str]:
    raw = raw.strip()
    if not (raw.startswith("(") and raw.endswith(")")):
        raise SelectorError(f"set-based selector needs parentheses: {raw!r}")
    return {v.strip() for v in raw[1:-1].split(",") if v.strip()}


def _requirement(op: str, key: str, values: set[str], labels: dict[str, str]) -> bool:
    if op == "exists":
        return key in labels
    if op == "!exists":
        return key not in labels
    if op in ("=", "==", "in"):
        return labels.get(key) in values
    return labels.get(key) not in values  # "!=", "notin"


def label_matcher(selector: str | None) -> Matcher:
    """``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``, ``a notin (x)``, ``a``, ``!a``."""
    requirements: list[tuple[str, str, set[str]]] = []
    for term in _split_terms(selector or ""):
        match = _TERM.match(term)
        if not match:
            raise SelectorError(f"unable to parse requirement {term!r}")
        key, op, value, neg = match["key"], (match["op"] or "").strip(), match["value"], match["neg"]
        if neg and op:
            raise SelectorError(f"unable to parse requirement {term!r}")
        if not op:
            requirements.append(("!exists" if neg else "exists", key, set()))
        elif op in ("in", "notin"):
            requirements.append((op, key, _set_values(value)))
        else:
            requirements.append((op, key, {value}))

    def matches(obj: dict) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(_requirement(op, key, values, labels) for op, key, values in requirements)

    return matches


def _field(obj: dict, dotted: str) -> str | None:
    value: object = obj
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return None if value is None else str(value)


def field_matcher(selector: str | None) -> Matcher:
    """``metadata.name=x``, ``metadata.namespace!=y``, ``type=helm.sh/release.v1`` and similar."""
    requirements: list[tuple[str, str, bool]] = []  # (path, value, equal)
    for term in _split_terms(selector or ""):
        if "!=" in term:
            path, value = term.split("!=", 1)
            requirements.append((path.strip(), value.strip(), False))
        elif "=" in term:
            path, value = term.replace("==", "=").split("=", 1)
            requirements.append((path.strip(), value.strip(), True))
        else:
            raise SelectorError(f"invalid field selector {term!r}")

    def matches(obj: dict) -> bool:
        return all((_field(obj, path) == value) == equal for path, value, equal in requirements)

    return matches
