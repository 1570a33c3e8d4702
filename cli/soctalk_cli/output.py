"""Output for people (rich tables) and programs (``--output json``: one JSON document or JSON lines)."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


class Output(StrEnum):
    text = "text"
    json = "json"


# Exit codes that mean something (documented in docs/cli.md).
EXIT_OK = 0
EXIT_FAILED = 1  # the operation ran and failed (tenant failed, verdict blocked, lint errors)
EXIT_USAGE = 2  # bad arguments or an invalid input file
EXIT_NOT_FOUND = 3  # unknown tenant / object
EXIT_UNAVAILABLE = 4  # NATS / Postgres / cluster unreachable
EXIT_TIMEOUT = 5  # a wait ran out of time


def emit_json(obj: Any) -> None:
    print(json.dumps(obj, default=str, sort_keys=True))


def table(title: str | None, columns: list[str], rows: list[list[Any]]) -> None:
    t = Table(title=title, show_lines=False)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*["" if v is None else str(v) for v in r])
    console.print(t)
