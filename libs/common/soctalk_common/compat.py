"""Chart compatibility matrix: which soctalk-tenant versions a soctalk-system version may apply.

``compatibility.yaml`` (repo root) is the source; it feeds the ``chart_compatibility`` table and
the provisioner's upgrade gate (seed 001). Everything here is pure: parse, normalise, decide.

What a caller can rely on:

* Version labels are normalised to ``vMAJOR.MINOR.PATCH[-pre][+build]``: ``"1.0.0"`` and
  ``"v1.0.0"`` are the same label everywhere (file, lookups, results).
* A pair that the matrix does not list is ``blocked`` (unknown combinations are refused).
* ``blocked`` refuses, ``deprecated`` is allowed with a warning, ``supported`` proceeds.
* Malformed input raises ``ValueError`` naming the offending entry, never a partial result.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, field_validator

Status = Literal["supported", "deprecated", "blocked"]
STATUSES: tuple[Status, ...] = ("supported", "deprecated", "blocked")

_SEMVER = re.compile(
    r"^v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$",
    re.ASCII,
)


def version_label(version: str) -> str:
    """The canonical ``v``-prefixed label of a semantic version (``"1.1.0"`` → ``"v1.1.0"``).

    Raises ``ValueError`` when ``version`` is not a semantic version.
    """
    text = str(version).strip()
    if not _SEMVER.match(text):
        raise ValueError(f"not a semantic version: {version!r}")
    return text if text.startswith("v") else f"v{text}"


class CompatEntry(BaseModel):
    """One row of ``chart_compatibility``: a (system, tenant) pair and its status."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    system: str
    tenant: str
    status: Status
    notes: str | None = None

    @field_validator("system", "tenant")
    @classmethod
    def _label(cls, value: str) -> str:
        return version_label(value)


class Verdict(BaseModel):
    """The decision for one pair. ``known`` is False when the matrix does not list the pair."""

    model_config = ConfigDict(frozen=True)

    system: str
    tenant: str
    status: Status
    notes: str | None = None
    known: bool = True

    @property
    def allowed(self) -> bool:
        """True unless blocked (deprecated is allowed, with a warning)."""
        return self.status != "blocked"

    @property
    def warn(self) -> bool:
        return self.status == "deprecated"


def parse_compatibility(document: Any) -> list[CompatEntry]:
    """Entries from the parsed YAML document (a list of ``{system, tenant: [...]}`` blocks).

    Raises ``ValueError`` naming the entry for a wrong shape, a bad version, an unknown status
    or a pair listed twice.
    """
    if not isinstance(document, list):
        raise ValueError("compatibility matrix must be a list of {system, tenant} entries")
    entries: list[CompatEntry] = []
    seen: set[tuple[str, str]] = set()
    for i, block in enumerate(document):
        where = f"entry {i}"
        if not isinstance(block, dict) or set(block) - {"system", "tenant"} or "system" not in block:
            raise ValueError(f"{where}: expected keys 'system' and 'tenant', got {block!r}")
        try:
            system = version_label(block["system"])
        except ValueError as exc:
            raise ValueError(f"{where}: system: {exc}") from None
        where = f"entry {i} (system {system})"
        tenants = block.get("tenant")
        if not isinstance(tenants, list) or not tenants:
            raise ValueError(f"{where}: 'tenant' must be a non-empty list")
        for j, row in enumerate(tenants):
            row_where = f"{where}, tenant {j}"
            if not isinstance(row, dict) or set(row) - {"version", "status", "notes"}:
                raise ValueError(f"{row_where}: expected keys version, status, notes; got {row!r}")
            status = row.get("status")
            if status not in STATUSES:
                raise ValueError(
                    f"{row_where}: unknown status {status!r} (expected one of {', '.join(STATUSES)})"
                )
            notes = row.get("notes")
            if notes is not None and not isinstance(notes, str):
                raise ValueError(f"{row_where}: notes must be a string")
            try:
                entry = CompatEntry(
                    system=system, tenant=str(row.get("version", "")), status=status, notes=notes
                )
            except ValueError as exc:
                raise ValueError(
                    f"{row_where}: version: {row.get('version')!r} is not a semantic version"
                ) from exc
            key = (entry.system, entry.tenant)
            if key in seen:
                raise ValueError(f"{row_where}: pair system {key[0]} × tenant {key[1]} is listed twice")
            seen.add(key)
            entries.append(entry)
    return entries


def load_compatibility(path: str | Path) -> list[CompatEntry]:
    """Read and validate ``compatibility.yaml``; see :func:`parse_compatibility` for errors."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: invalid YAML: {exc}") from None
    try:
        return parse_compatibility(document)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def verdict(entries: Iterable[CompatEntry], system: str, tenant: str) -> Verdict:
    """The status of applying tenant chart ``tenant`` under system ``system``.

    Unknown pairs are ``blocked`` with a note saying so. Raises ``ValueError`` only when a
    version is not semantic.
    """
    sys_label, tenant_label = version_label(system), version_label(tenant)
    for entry in entries:
        if entry.system == sys_label and entry.tenant == tenant_label:
            return Verdict(system=sys_label, tenant=tenant_label, status=entry.status, notes=entry.notes)
    return Verdict(
        system=sys_label,
        tenant=tenant_label,
        status="blocked",
        notes=f"unknown combination: system {sys_label} × tenant {tenant_label} is not in the matrix",
        known=False,
    )


def table_rows(entries: Sequence[CompatEntry]) -> list[dict[str, str | None]]:
    """Rows for the ``chart_compatibility`` table (column names as in seed 001)."""
    return [
        {
            "soctalk_system_version": e.system,
            "tenant_chart_version": e.tenant,
            "status": e.status,
            "notes": e.notes,
        }
        for e in entries
    ]
