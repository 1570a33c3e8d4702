"""The whole control plane as separate processes (exactly what ``make demo`` runs).

With ``SOCTALK_TEST_KUBECONFIG`` set, the stack drives that real cluster (with the simulated kubelet,
for control planes without nodes) instead of the in-process emulator.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
from soctalk_cli.devstack import DevStack


@pytest.fixture
async def devstack(tmp_path) -> AsyncIterator[DevStack]:  # type: ignore[no-untyped-def]
    kubeconfig = os.environ.get("SOCTALK_TEST_KUBECONFIG") or None
    ds = DevStack(kubeconfig=kubeconfig, simulate_kubelet=True, kubelet_delay_s=0.2, workdir=tmp_path,
                  extra_env={"SOCTALK_JWT_SIGNING_KEY": "e2e-signing-key-0123456789abcdef0123456789"})
    await ds.start()
    try:
        yield ds
    finally:
        await ds.stop()
        dead = {n: p.returncode for n, p in ds.procs.items() if p.returncode not in (0, -15, None)}
        logs = {n: (tmp_path / "logs" / f"{n}.log").read_text()[-3000:] for n in dead}
        assert not dead, f"services exited abnormally: {dead}\n{logs}"
