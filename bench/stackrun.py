"""The whole control plane as separate processes (``DevStack``, as ``make demo`` runs it), for the
pipeline and memory scenarios: emulated cluster (or ``SOCTALK_TEST_KUBECONFIG``), simulated kubelet
with zero delay, adapter signing key known to the bench, quiet logs."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
from soctalk_cli.devstack import DevStack

KEY = "bench-adapter-signing-key-0123456789abcdef"


class BenchStack(DevStack):
    """A DevStack whose cluster has the install namespace before the services start (the system
    chart creates it in a real install; the secrets service keeps its install keys there)."""

    async def _start_kubelet(self) -> None:
        await super()._start_kubelet()
        from soctalk_common.gateways.kube import KubeGateway

        kube = await KubeGateway.from_kubeconfig(self.kubeconfig_path)
        try:
            await kube.ensure_namespace("soctalk-system", {})
        finally:
            await kube.close()


@contextlib.asynccontextmanager
async def devstack(*, kubeconfig: str | None = None, extra_env: dict[str, str] | None = None,
                   ) -> AsyncIterator[DevStack]:
    workdir = Path(tempfile.mkdtemp(prefix="soctalk-bench-"))
    env = {"SOCTALK_TOKEN_HASH_KEY": KEY, "SOCTALK_LOG_LEVEL": "WARNING", **(extra_env or {})}
    saved = os.environ.get("SOCTALK_TOKEN_HASH_KEY")
    os.environ["SOCTALK_TOKEN_HASH_KEY"] = KEY  # DevStack reads it from the environment
    ds = BenchStack(kubeconfig=kubeconfig, simulate_kubelet=True, kubelet_delay_s=0.0, workdir=workdir,
                  extra_env=env)
    try:
        await ds.start()
        yield ds
    finally:
        await ds.stop()
        if saved is None:
            os.environ.pop("SOCTALK_TOKEN_HASH_KEY", None)
        else:
            os.environ["SOCTALK_TOKEN_HASH_KEY"] = saved


def dead(ds: DevStack) -> dict[str, str]:
    """Services that exited, with the tail of their log."""
    return {n: (ds.workdir / "logs" / f"{n}.log").read_text()[-1500:]
            for n, alive in ds.alive().items() if not alive}


def peak_rss_mb(pid: int) -> float:
    """The kernel's high-water mark of resident memory (VmHWM), in MiB; RSS now if unavailable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return psutil.Process(pid).memory_info().rss / 2**20
