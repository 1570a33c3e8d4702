"""Gateways to systems outside Postgres: Kubernetes (``kube``) and Helm (``helm``).

Import the submodules directly (``from soctalk_common.gateways.kube import KubeGateway``); this
package does not import them, so loading one driver never drags in the other.
"""
