"""The KubeGateway loads only the kubernetes_asyncio modules it uses (soctalk_common.gateways._kube_client).

Each case runs in a fresh interpreter: what is imported is process-wide state.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap


def _run(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_gateway_loads_no_api_or_model_module() -> None:
    got = _run("""
        import json, sys
        import soctalk_common.gateways.kube
        from soctalk_common.gateways._kube_client import deferred_packages
        mods = [m for m in sys.modules if m.startswith("kubernetes_asyncio")]
        print(json.dumps({"mods": mods, "deferred": deferred_packages()}))
    """)
    heavy = [m for m in got["mods"] if m.startswith(("kubernetes_asyncio.client.api.",
                                                     "kubernetes_asyncio.client.models.",
                                                     "kubernetes_asyncio.dynamic", "kubernetes_asyncio.watch",
                                                     "kubernetes_asyncio.stream"))]
    assert heavy == []
    assert len(got["mods"]) < 30, got["mods"]  # ~15 today; the package has ~930
    assert got["deferred"] == ["kubernetes_asyncio", "kubernetes_asyncio.client", "kubernetes_asyncio.client.models"]


def test_deferred_packages_complete_to_what_a_normal_import_gives() -> None:
    """After the gateway, other code still gets the whole package (typed clients, models, watch)."""
    listing = textwrap.dedent("""
        import kubernetes_asyncio, kubernetes_asyncio.client, kubernetes_asyncio.client.models
        pkgs = {n: sorted(k for k in vars(sys.modules[n]) if not k.startswith("__")) for n in
                ("kubernetes_asyncio", "kubernetes_asyncio.client", "kubernetes_asyncio.client.models")}
        print(json.dumps(pkgs))
    """)
    normal = _run("import json, sys\n" + listing)
    deferred = _run(textwrap.dedent("""
        import json, sys
        import soctalk_common.gateways.kube
        import kubernetes_asyncio
        from kubernetes_asyncio import client, watch
        from kubernetes_asyncio.client import CoreV1Api
        from kubernetes_asyncio.client.models import V1Pod
        assert client.CoreV1Api is CoreV1Api and client.V1Pod is V1Pod and watch.Watch
        assert kubernetes_asyncio.__version__
        for m in ("kubernetes_asyncio", "kubernetes_asyncio.client", "kubernetes_asyncio.client.models"):
            getattr(sys.modules[m], "__all__", None)  # completes each package
        from soctalk_common.gateways._kube_client import deferred_packages
        assert deferred_packages() == [], deferred_packages()
    """) + listing)
    assert deferred == normal


def test_model_lookup_by_name_completes_the_models_package() -> None:
    """``ApiClient.deserialize`` finds model classes by name on ``kubernetes_asyncio.client.models``."""
    got = _run("""
        import asyncio, json
        from soctalk_common.gateways._kube_client import ApiClient, deferred_packages

        async def main():
            api = ApiClient()
            try:
                pod = api._ApiClient__deserialize({"metadata": {"name": "p"}}, "V1Pod")
                return type(pod).__name__, pod.metadata.name
            finally:
                await api.close()

        kind, name = asyncio.run(main())
        print(json.dumps({"kind": kind, "name": name, "deferred": deferred_packages()}))
    """)
    assert (got["kind"], got["name"]) == ("V1Pod", "p")
    assert "kubernetes_asyncio.client.models" not in got["deferred"]


def test_an_already_imported_package_is_used_as_it_is() -> None:
    got = _run("""
        import json
        import kubernetes_asyncio
        from kubernetes_asyncio import client, config
        from soctalk_common.gateways import _kube_client as k
        print(json.dumps({"deferred": k.deferred_packages(), "same": k.ApiClient is client.ApiClient
                          and k.Configuration is client.Configuration
                          and k.load_kube_config is config.load_kube_config}))
    """)
    assert got == {"deferred": [], "same": True}
