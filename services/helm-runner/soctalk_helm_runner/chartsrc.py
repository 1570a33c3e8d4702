"""Where a version of the ``soctalk-tenant`` chart is on local disk.

Charts are baked into the image (never fetched at install time). For version ``vX.Y.Z`` the first of
these whose ``Chart.yaml`` says that version is used, all under ``settings.charts_dir``:

1. ``soctalk-tenant/`` — the chart this build ships (the current version);
2. ``soctalk-tenant-vX.Y.Z/`` or ``soctalk-tenant-X.Y.Z/`` — another version, unpacked;
3. ``soctalk-tenant-X.Y.Z.tgz`` (``helm package`` output) or ``soctalk-tenant-vX.Y.Z.tgz`` —
   unpacked once per process into a private temporary directory.

Anything else is refused with :class:`UnknownChartVersion`, naming the versions that are available.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tarfile
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import yaml
from soctalk_common.compat import version_label
from soctalk_common.errors import PermanentError

from soctalk_helm_runner.domain import CHART

_unpacked: dict[tuple[str, int], Path] = {}
_lock = threading.Lock()


class UnknownChartVersion(PermanentError):
    """The requested chart version is not available locally (or is not a version at all)."""


@dataclass(frozen=True)
class ChartSource:
    version: str  # v-prefixed label
    path: Path  # an unpacked chart directory


def _declared(directory: Path) -> str | None:
    meta = directory / "Chart.yaml"
    try:
        st = meta.stat()
        return _declared_in(str(meta), st.st_mtime_ns, st.st_size)
    except OSError:
        return None


@functools.lru_cache(maxsize=64)
def _declared_in(meta: str, _mtime_ns: int, _size: int) -> str | None:
    """The version ``Chart.yaml`` declares, parsed once per file version (every install asks)."""
    try:
        doc = yaml.safe_load(Path(meta).read_text(encoding="utf-8")) or {}
        if doc.get("name") != CHART:
            return None
        return version_label(str(doc.get("version", "")))
    except (yaml.YAMLError, ValueError, OSError):
        return None


def _unpack(archive: Path) -> Path:
    key = (str(archive.resolve()), archive.stat().st_mtime_ns)
    with _lock:
        if key in _unpacked and _unpacked[key].is_dir():
            return _unpacked[key]
        target = Path(tempfile.mkdtemp(prefix="soctalk-chart-"))
        atexit.register(shutil.rmtree, target, True)
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(target, filter="data")
        found = target / CHART
        if not (found / "Chart.yaml").is_file():
            raise UnknownChartVersion(f"{archive} does not contain a {CHART} chart")
        _unpacked[key] = found
        return found


def _candidates(root: Path, label: str) -> list[Path]:
    bare = label[1:]
    return [root / CHART, root / f"{CHART}-{label}", root / f"{CHART}-{bare}"]


def locate(charts_dir: Path | str, version: str) -> ChartSource:
    """The local chart directory for ``version`` (see the module doc); ``UnknownChartVersion`` if none."""
    try:
        label = version_label(version)
    except ValueError:
        raise UnknownChartVersion(f"{version!r} is not a chart version (expected vX.Y.Z)") from None
    root = Path(charts_dir)
    for directory in _candidates(root, label):
        if _declared(directory) == label:
            return ChartSource(label, directory)
    for archive in (root / f"{CHART}-{label[1:]}.tgz", root / f"{CHART}-{label}.tgz"):
        if archive.is_file():
            directory = _unpack(archive)
            if _declared(directory) == label:
                return ChartSource(label, directory)
    have = ", ".join(available(root)) or "none"
    raise UnknownChartVersion(f"{CHART} chart {label} is not available under {root} (available: {have})")


def available(charts_dir: Path | str) -> list[str]:
    """Chart versions found under ``charts_dir`` (directories and packaged archives)."""
    root = Path(charts_dir)
    found: set[str] = set()
    if root.is_dir():
        for entry in root.iterdir():
            if entry.is_dir() and entry.name.startswith(CHART) and (label := _declared(entry)):
                found.add(label)
            elif entry.is_file() and entry.name.startswith(f"{CHART}-") and entry.name.endswith(".tgz"):
                try:
                    found.add(version_label(entry.name[len(CHART) + 1:-len(".tgz")]))
                except ValueError:
                    continue
    return sorted(found, key=_sort_key)


def _sort_key(label: str) -> tuple[int, ...]:
    core = label[1:].split("-")[0].split("+")[0]
    try:
        return tuple(int(p) for p in core.split("."))
    except ValueError:
        return (0,)
