"""Figures of a reliability run, merged into ``reliability/results/latest.json``.

The same document is also written to ``<mode>-latest.json`` (``ci-latest.json`` / ``soak-latest.json``)
so the last soak figures survive later CI runs in a shared tree.

Each test calls :func:`record` with its section name and its figures; sections from the same mode
(``ci`` or ``soak``) are merged, a run in the other mode starts the file afresh (CI figures never
sit next to soak figures). ``summary`` is recomputed from the sections on every write, so the file
always answers the headline questions: tenants, kills, restarts, lost, duplicated, fuzz cases tried
and rejected, canary hits, adapter tokens wrongly accepted. ``reliability/README.md`` explains every
figure.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import time
import uuid
from pathlib import Path
from typing import Any

from soctalk_common.settings import REPO_ROOT

RESULTS = REPO_ROOT / "reliability" / "results" / "latest.json"
RUN_ID = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:6]}"


def soak() -> bool:
    return os.environ.get("SOCTALK_SOAK", "") not in ("", "0", "false", "no")


def mode() -> str:
    return "soak" if soak() else "ci"


def _sum(sections: dict[str, Any], key: str) -> int:
    return int(sum(s.get(key, 0) or 0 for s in sections.values() if isinstance(s, dict)))


def summarize(sections: dict[str, Any]) -> dict[str, Any]:
    crash = sections.get("crash_restart", {})
    return {
        "tenants": _sum(sections, "tenants"),
        "kills": _sum(sections, "kills"),
        "restarts": _sum(sections, "server_restarts"),
        "lost": _sum(sections, "lost"),
        "duplicated": _sum(sections, "duplicated"),
        "fuzz_cases_tried": _sum(sections, "fuzz_tried"),
        "fuzz_cases_rejected": _sum(sections, "fuzz_rejected"),
        "fuzz_cases_valid_accepted": _sum(sections, "fuzz_accepted_valid"),
        "canary_hits": _sum(sections, "canary_hits"),
        "tokens_accepted_wrongly": _sum(sections, "tokens_accepted_wrongly"),
        "tenants_active_after_chaos": crash.get("active"),
    }


@contextlib.contextmanager
def _locked(path: Path):  # type: ignore[no-untyped-def]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def record(section: str, figures: dict[str, Any], path: Path = RESULTS) -> dict[str, Any]:
    """Merge one test's figures under ``sections[section]``; returns the whole document as written."""
    with _locked(path):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            doc = {}
        if doc.get("mode") != mode():
            doc = {}
        sections = dict(doc.get("sections") or {})
        sections[section] = {**figures, "run_id": RUN_ID,
                             "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        doc = {
            "mode": mode(),
            "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": {"cpus": os.cpu_count(), "python": platform.python_version(),
                     "platform": platform.platform()},
            "summary": summarize(sections),
            "sections": dict(sorted(sections.items())),
        }
        text = json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n"
        for target in (path, path.with_name(f"{mode()}-latest.json")):  # the mode's copy survives the other's runs
            tmp = target.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(target)
    return doc
