"""One way for tests, the demo and ``soctalk dev up`` to get a Kubernetes API to talk to.

``start_cluster()`` starts the emulator in a background thread (its own event loop, so blocking
Helm calls in worker threads are always answered); ``start_cluster("~/.kube/config")`` wraps a
real cluster instead. Either way the caller gets a kubeconfig path both kubernetes_asyncio and the
Helm SDK can use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from kubernetes_asyncio.config import new_client_from_config

from .emulator import KubeEmulator
from .kubelet import SimulatedKubelet

ENV_VAR = "SOCTALK_TEST_KUBECONFIG"


@dataclass
class ClusterHandle:
    kubeconfig_path: str
    is_emulated: bool
    emulator: KubeEmulator | None = None

    def kubelet(self, *, delay: float = 0.0, failing: set[str] | None = None,
                namespace_prefix: str = "tenant-") -> SimulatedKubelet:
        """A (not yet started) simulated kubelet for this cluster: ``await handle.kubelet().start()``."""
        path = self.kubeconfig_path
        return SimulatedKubelet(lambda: new_client_from_config(path), delay=delay, failing=failing,
                                namespace_prefix=namespace_prefix)

    def stop(self) -> None:
        """Stop the emulator (idempotent); a real cluster is left alone."""
        if self.emulator is not None:
            self.emulator.stop()

    def __enter__(self) -> ClusterHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_cluster(kubeconfig: str | None = None) -> ClusterHandle:
    """A real cluster if ``kubeconfig`` is given, else a fresh emulator running in a thread."""
    if kubeconfig:
        path = os.path.abspath(os.path.expanduser(kubeconfig))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"kubeconfig {path} does not exist")
        return ClusterHandle(path, is_emulated=False)
    emulator = KubeEmulator.start_in_thread()
    return ClusterHandle(emulator.kubeconfig_path, is_emulated=True, emulator=emulator)


def cluster_from_env(env_var: str = ENV_VAR) -> ClusterHandle:
    """``start_cluster($SOCTALK_TEST_KUBECONFIG)``: the real cluster when the variable is set."""
    return start_cluster(os.environ.get(env_var) or None)
