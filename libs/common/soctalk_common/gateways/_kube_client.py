"""The few kubernetes_asyncio modules the ``KubeGateway`` uses, loaded without the other ~900.

Why this exists: importing *any* module of kubernetes_asyncio first runs the package ``__init__``,
which imports ``kubernetes_asyncio.client``, whose ``__init__`` imports every API class and all ~700
generated model modules (plus ``dynamic``, ``stream``, ``watch``, ``utils``): ~35 MB resident in every
process that talks to Kubernetes, of which the gateway uses nothing. It needs only the kubeconfig /
in-cluster loaders (``kubernetes_asyncio.config``), ``Configuration`` and ``ApiClient.call_api``, and it
sends and reads plain JSON (``_preload_content=False``), so no API or model class is ever touched. The
package has no switch for this, and replacing its kubeconfig handling (exec plugins, OIDC, token
refresh, in-cluster token rotation, client certificates) with our own would be far riskier than this.

What it does: the three packages whose ``__init__`` pulls everything in — ``kubernetes_asyncio``,
``kubernetes_asyncio.client``, ``kubernetes_asyncio.client.models`` — are registered in ``sys.modules``
as *deferred* packages: the very module object a normal import would create (same spec, same
``__path__``), with its ``__init__`` not run yet. Their submodules import normally through ``__path__``.
A module-level ``__getattr__`` (PEP 562) on each deferred package answers a submodule name by importing
that submodule and any other missing name (``client.CoreV1Api``, ``models.V1Pod``, ``__version__``) by
running the package's real ``__init__`` in that same module object first. So other code in the same
process — the test suite's typed clients, the kubelet simulator, ``ApiClient.deserialize`` (which looks
model classes up on ``kubernetes_asyncio.client.models``) — sees the complete package as usual, it is
just loaded on first use instead of at start. If kubernetes_asyncio was already imported, nothing is
deferred and the real modules are used as they are.

The mechanism is confined to this module; ``tests/unit/test_kube_client_import.py`` checks, in fresh
interpreters, that the gateway loads no API/model module, that the completed packages expose exactly
what a normal import exposes, and that both import orders work — so a kubernetes_asyncio upgrade that
changes the package layout fails a test instead of a service.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types
from typing import Any

__all__ = ["ApiClient", "ConfigException", "Configuration", "deferred_packages", "load_incluster_config",
           "load_kube_config"]

_PACKAGES = ("kubernetes_asyncio", "kubernetes_asyncio.client", "kubernetes_asyncio.client.models")
_lock = threading.RLock()
_deferred: dict[str, types.ModuleType] = {}


def deferred_packages() -> list[str]:
    """Packages of kubernetes_asyncio whose ``__init__`` has not run (yet) in this process."""
    with _lock:
        return sorted(_deferred)


def _complete(module: types.ModuleType) -> None:
    """Run the package's real ``__init__`` in the deferred module object (once)."""
    with _lock:
        if _deferred.pop(module.__name__, None) is None:
            return
        module.__dict__.pop("__getattr__", None)
        spec = module.__spec__
        assert spec is not None and spec.loader is not None
        spec.loader.exec_module(module)


def _defer(name: str) -> types.ModuleType:
    spec = importlib.util.find_spec(name)  # for a dotted name this uses the parent's __path__ only
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        raise ImportError(f"{name}: not an importable package")
    module = importlib.util.module_from_spec(spec)

    def __getattr__(attr: str) -> Any:
        if not attr.startswith("__") and importlib.util.find_spec(f"{name}.{attr}") is not None:
            return importlib.import_module(f"{name}.{attr}")  # a submodule: the import system sets the attribute
        _complete(module)
        try:
            return module.__dict__[attr]
        except KeyError:
            raise AttributeError(f"module {name!r} has no attribute {attr!r}") from None

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    _deferred[name] = module
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
    return module


def _load() -> None:
    with _lock:
        if "kubernetes_asyncio" in sys.modules:
            return  # already imported (completely, or deferred by an earlier call): use it as it is
        try:
            for name in _PACKAGES:
                _defer(name)
            client = sys.modules["kubernetes_asyncio.client"]
            from kubernetes_asyncio.client.api_client import ApiClient as _api_client
            from kubernetes_asyncio.client.configuration import Configuration as _configuration

            # kubernetes_asyncio.config imports these two names from the client package.
            client.ApiClient = _api_client  # type: ignore[attr-defined]
            client.Configuration = _configuration  # type: ignore[attr-defined]
            importlib.import_module("kubernetes_asyncio.config")
        except BaseException:
            for name in _PACKAGES:  # leave nothing half-deferred: a later import starts from scratch
                if _deferred.pop(name, None) is not None:
                    sys.modules.pop(name, None)
            for name in [n for n in sys.modules if n.startswith("kubernetes_asyncio.")]:
                sys.modules.pop(name, None)
            raise


_load()

# After _load(): these resolve to the real modules (deferred packages or not).
from kubernetes_asyncio.client.api_client import ApiClient  # noqa: E402
from kubernetes_asyncio.client.configuration import Configuration  # noqa: E402
from kubernetes_asyncio.config.config_exception import ConfigException  # noqa: E402
from kubernetes_asyncio.config.incluster_config import load_incluster_config  # noqa: E402
from kubernetes_asyncio.config.kube_config import load_kube_config  # noqa: E402
