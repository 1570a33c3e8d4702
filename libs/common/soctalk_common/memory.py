"""Process-wide memory settings a service applies at start (its ``__main__``).

``fix_malloc_thresholds()``: glibc's malloc serves requests of at least ``M_MMAP_THRESHOLD`` (128 KiB)
with their own ``mmap``, returned to the kernel on ``free``. But each time such a block is freed, glibc
raises the threshold to that block's size (up to 32 MiB) and the trim threshold to twice that, so after a
few large temporary buffers (a big query result, a release manifest, a response body) later ones come
from the main heap, and the holes they leave between long-lived objects are never returned. In a
long-running service that shows as a resident set creeping up while its Python heap stays flat: the
helm-runner gained ~6 MB over a 120 s memory scenario with 10,000 tenants (bench/README.md) while the
objects tracemalloc traced grew by ~1 MB. Setting both thresholds explicitly turns the adjustment off
(glibc does the same when ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` are in the
environment); measured: the helm-runner's growth over the window 6 → 2.4 MB, and no change in install
or render CPU.

Operators keep the last word: if either glibc variable is set, nothing is changed here. On a libc other
than glibc (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os

__all__ = ["GC_GEN0_THRESHOLD", "HELM_GO_ENV", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "fix_malloc_thresholds",
           "helm_go_env", "tune_process"]

MMAP_THRESHOLD = 128 * 1024  # glibc's default, kept fixed
TRIM_THRESHOLD = 128 * 1024  # glibc's default, kept fixed
_M_TRIM_THRESHOLD = -1  # mallopt parameters, <malloc.h>
_M_MMAP_THRESHOLD = -3
_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")

#: The Go runtime inside the Helm SDK (``libhelm_c.so``) reads ``GOGC``/``GOMEMLIMIT`` from the environment
#: the process was *started* with (setting them from Python before the import changes nothing), so a
#: process that runs Helm gets them from whoever starts it: the system chart's helm-runner container,
#: ``soctalk dev up``. GOGC 200 instead of Go's 100: measured on 64 installs of the tenant chart, 16 at a
#: time, ~18 % less CPU (collection was over a third of the SDK's CPU) for ~+30 MB peak (deploy/README.md).
HELM_GO_ENV = {"GOGC": "200"}


def helm_go_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """``HELM_GO_ENV`` minus what ``environ`` (default: this process's environment) already sets."""
    environ = dict(os.environ) if environ is None else environ
    return {k: v for k, v in HELM_GO_ENV.items() if k not in environ}


def fix_malloc_thresholds(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Fix glibc malloc's mmap and trim thresholds; ``True`` if they were set by this call."""
    if any(name in os.environ for name in _ENV):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - glibc only; raises AttributeError elsewhere
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    set_mmap = mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
    set_trim = mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    return bool(set_mmap and set_trim)


#: Services make many short-lived objects per message: with the default first-generation threshold (700)
#: the cyclic GC runs every few messages and rescans the long-lived heap (~10 % of the CPU per tenant in
#: bench/handlers_cpu.py, a similar share per heartbeat). ``gc.freeze()`` saved as much CPU but grew the
#: heap (bench/README.md), so the threshold is raised instead.
GC_GEN0_THRESHOLD = 10_000


def tune_process() -> None:
    """What every service's entry point applies before it starts: the malloc thresholds above and a
    higher first-generation GC threshold."""
    fix_malloc_thresholds()
    gc.set_threshold(GC_GEN0_THRESHOLD, 10, 10)
