"""Kubernetes for tests and ``make demo``: an in-process API server and a simulated kubelet.

* ``KubeEmulator`` — an aiohttp server speaking enough of the Kubernetes API for kubernetes_asyncio,
  Helm v4 and kubectl (see ``emulator`` for what is and is not emulated).
* ``SimulatedKubelet`` — marks workloads ready (or failing) through any API server.
* ``start_cluster`` / ``cluster_from_env`` — an emulator in a thread, or a real cluster's kubeconfig.
"""

from .cluster import ClusterHandle, cluster_from_env, start_cluster
from .emulator import Fault, KubeEmulator
from .kubelet import SimulatedKubelet

__all__ = ["ClusterHandle", "Fault", "KubeEmulator", "SimulatedKubelet", "cluster_from_env", "start_cluster"]
