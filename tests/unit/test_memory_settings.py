"""soctalk_common.memory: glibc's malloc thresholds fixed at service start (each case in a fresh
interpreter: malloc's state is process-wide)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc malloc only")

# After a large block is freed, is a 512 KiB block still given its own mapping (returned to the kernel
# on free)? glibc marks such chunks IS_MMAPPED (bit 0x2 of the size word just before the pointer).
PATTERN = textwrap.dedent("""
    import ctypes, json, sys
    from soctalk_common.memory import fix_malloc_thresholds

    fixed = fix_malloc_thresholds() if sys.argv[1] == "fix" else False
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.free(libc.malloc(8 << 20))  # with adjusting thresholds, glibc now raises its mmap threshold to 8 MiB
    block = libc.malloc(512 << 10)
    mmapped = bool(ctypes.c_size_t.from_address(block - 8).value & 0x2)
    libc.free(block)
    print(json.dumps({"fixed": fixed, "mmapped": mmapped}))
""")


def _run(*args: str, env: dict[str, str] | None = None) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", PATTERN, *args], capture_output=True, text=True, timeout=60,
                         check=False, env={**base, **(env or {})})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_large_blocks_keep_their_own_mappings_after_a_larger_one_was_freed() -> None:
    assert _run("fix") == {"fixed": True, "mmapped": True}
    # What it changes: with glibc's adjusting thresholds the block would come from the main heap.
    assert _run("default") == {"fixed": False, "mmapped": False}


def test_an_operator_setting_wins() -> None:
    assert _run("fix", env={"MALLOC_MMAP_THRESHOLD_": str(16 << 20)}) == {"fixed": False, "mmapped": False}


def test_tune_process_raises_the_first_generation_gc_threshold() -> None:
    import gc

    from soctalk_common.memory import GC_GEN0_THRESHOLD, tune_process

    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        tune_process()
        assert gc.get_threshold()[0] == GC_GEN0_THRESHOLD
    finally:
        gc.set_threshold(*before)


def test_the_helm_go_settings_yield_to_the_operator() -> None:
    from soctalk_common.memory import HELM_GO_ENV, helm_go_env

    assert helm_go_env({}) == HELM_GO_ENV == {"GOGC": "200"}
    assert helm_go_env({"GOGC": "50"}) == {}  # set by whoever started us: kept
