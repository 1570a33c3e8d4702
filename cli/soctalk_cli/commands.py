"""Registration of the remaining command groups (tenants, secrets, compat, keys, charts, dev, adapter)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    return None
