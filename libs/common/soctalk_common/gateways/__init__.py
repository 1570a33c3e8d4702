"""Gateways to systems outside Postgres: Kubernetes (``kube``) and Helm (``helm``).

Import the submodules directly (``from soctalk_common.gateways.kube import KubeGateway``); this
package does not import them, so loading one driver never drags in the other.
"""

from soctalk_common.errors import GatewayError, PermanentError


class ConfigurationError(GatewayError, PermanentError):
    """No usable cluster configuration: a missing or unreadable kubeconfig, no in-cluster account."""


__all__ = ["ConfigurationError"]
