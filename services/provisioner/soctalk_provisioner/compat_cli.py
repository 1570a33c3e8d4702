"""``soctalk compat check --system V --tenant V``: the function behind the command (wiring is the CLI's)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from soctalk_common.compat import Verdict, load_compatibility

from soctalk_provisioner.compatibility import gate

EXIT_OK = 0
EXIT_BLOCKED = 1
EXIT_BAD_FILE = 2


def check(system: str, tenant: str, path: str | Path, *, out: TextIO | None = None) -> tuple[Verdict, int]:
    """Print the verdict for the pair and return it with the exit code: 0 supported or deprecated
    (deprecated prints a warning), 1 blocked (including unknown pairs and malformed versions),
    2 when the matrix file cannot be read (the verdict is then ``blocked``)."""
    out = out or sys.stdout
    try:
        entries = load_compatibility(path)
    except (OSError, ValueError) as exc:
        v = Verdict(system=system, tenant=tenant, status="blocked", notes=f"cannot read {path}: {exc}",
                    known=False)
        print(f"error: {v.notes}", file=out)
        return v, EXIT_BAD_FILE
    v = gate(entries, system, tenant)
    line = f"system {v.system} × tenant {v.tenant}: {v.status}" + (f" — {v.notes}" if v.notes else "")
    print(("warning: " if v.warn else "") + line, file=out)
    return v, EXIT_BLOCKED if v.status == "blocked" else EXIT_OK
