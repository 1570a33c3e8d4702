"""The whole control plane on one machine: ``soctalk dev up`` and ``make demo``.

Starts (or reuses, via ``NATS_URL`` / ``DATABASE_URL`` / ``VAULT_ADDR`` / ``--kubeconfig``) NATS,
Postgres, OpenBao and a Kubernetes API (the in-process emulator by default), applies migrations, then
runs the relay, the four services and the HTTP API as child processes of this one, each logging JSON to
``<workdir>/logs/<name>.log``. The simulated kubelet runs in this process when the cluster is emulated
(or when asked to, for a real control plane without nodes). ``stop()`` terminates the children,
waits for them to drain, and tears down whatever it started — by PID, nothing left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from soctalk_common import stack
from soctalk_common.db.migrate import upgrade_async
from soctalk_common.memory import helm_go_env

SERVICES: list[tuple[str, str]] = [
    ("relay", "soctalk_common.relay"),
    ("provisioner", "soctalk_provisioner"),
    ("secrets", "soctalk_secrets"),
    ("helm-runner", "soctalk_helm_runner"),
    ("heartbeat", "soctalk_heartbeat"),
    ("api", "soctalk_api"),
]


@dataclass
class DevStack:
    kubeconfig: str | None = None
    simulate_kubelet: bool | None = None  # None: only when the cluster is emulated
    kubelet_delay_s: float = 0.5
    profile: str = "small-dev"
    secrets_backend: str = "kubernetes"
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="soctalk-dev-")))
    api_port: int = field(default_factory=stack.free_port)
    heartbeat_port: int = field(default_factory=stack.free_port)
    extra_env: dict[str, str] = field(default_factory=dict)

    nats_url: str = ""
    database_url: str = ""
    vault_addr: str = ""
    vault_token: str = ""
    kubeconfig_path: str = ""
    emulated: bool = True
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    _owned: list[object] = field(default_factory=list)
    _cluster: object | None = None
    _kubelet: object | None = None

    # ------------------------------------------------------------------------------------------
    async def start(self) -> DevStack:
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        self._start_servers()
        self._start_cluster()
        await self._ensure_system_namespace()
        await upgrade_async(self.database_url)
        from soctalk_common.bus import Bus

        bus = await Bus.connect(self.nats_url)
        await bus.ensure_streams()
        await bus.close()
        if self.simulate_kubelet or (self.simulate_kubelet is None and self.emulated):
            await self._start_kubelet()
        for name, module in SERVICES:
            self._spawn(name, module)
        return self

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "NATS_URL": self.nats_url, "DATABASE_URL": self.database_url, "VAULT_ADDR": self.vault_addr,
            "VAULT_TOKEN": self.vault_token, "KUBECONFIG": self.kubeconfig_path,
            "SOCTALK_DEFAULT_PROFILE": self.profile, "SOCTALK_SECRETS_BACKEND": self.secrets_backend,
            "SOCTALK_TOKEN_HASH_KEY": self._token_key, "SOCTALK_LOG_JSON": "true",
            "PYTHONUNBUFFERED": "1", "SOCTALK_HTTP_HOST": "127.0.0.1",
        })
        env.update(self.extra_env)
        return env

    def _start_servers(self) -> None:
        self._token_key = os.environ.get("SOCTALK_TOKEN_HASH_KEY") or secrets.token_urlsafe(32)
        if url := os.environ.get("NATS_URL"):
            self.nats_url = url
        else:
            n = stack.NatsServer(store_dir=self.workdir / "nats").start()
            self._owned.append(n)
            self.nats_url = n.url
        if url := os.environ.get("DATABASE_URL"):
            self.database_url = url
        else:
            p = stack.PostgresServer(data_root=self.workdir / "pg")
            (self.workdir / "pg").mkdir(exist_ok=True)
            p.start()
            self._owned.append(p)
            self.database_url = p.url
        if addr := os.environ.get("VAULT_ADDR"):
            self.vault_addr, self.vault_token = addr, os.environ.get("VAULT_TOKEN", "")
        else:
            b = stack.OpenBaoServer().start()
            self._owned.append(b)
            self.vault_addr, self.vault_token = b.addr, b.token

    def _start_cluster(self) -> None:
        from soctalk_kubesim import start_cluster

        handle = start_cluster(self.kubeconfig)
        self._cluster = handle
        self.kubeconfig_path = handle.kubeconfig_path
        self.emulated = handle.is_emulated

    async def _ensure_system_namespace(self) -> None:
        """What ``helm install soctalk-system`` provides on a real cluster: the install namespace."""
        from soctalk_common.gateways.kube import KubeGateway

        kube = await KubeGateway.from_kubeconfig(self.kubeconfig_path)
        try:
            await kube.ensure_namespace("soctalk-system", {"app.kubernetes.io/part-of": "soctalk"})
        finally:
            await kube.close()

    async def _start_kubelet(self) -> None:
        assert self._cluster is not None
        self._kubelet = await self._cluster.kubelet(  # type: ignore[attr-defined]
            delay=self.kubelet_delay_s, namespace_prefix="tenant-").start()

    def _spawn(self, name: str, module: str) -> None:
        log = open(self.workdir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        port = {"api": self.api_port, "heartbeat": self.heartbeat_port}.get(name) or self.ports.setdefault(
            name, stack.free_port())
        env = self.env() | {"SOCTALK_HTTP_PORT": str(port), "SOCTALK_SERVICE": name}
        if name == "helm-runner":  # as the system chart sets them: read by the Helm SDK at process start
            env |= helm_go_env(env)
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", module], env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> dict[str, bool]:
        return {n: p.poll() is None for n, p in self.procs.items()}

    def restart(self, name: str) -> None:
        """Start a service again after it died or was killed (reliability tests)."""
        module = dict(SERVICES)[name]
        self._spawn(name, module)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        p = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, sig)
        p.wait(timeout=30)

    async def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs.values():
            try:
                await asyncio.to_thread(p.wait, 30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
        if self._kubelet is not None:
            await self._kubelet.stop()  # type: ignore[attr-defined]
        if self._cluster is not None:
            self._cluster.stop()  # type: ignore[attr-defined]
        for srv in reversed(self._owned):
            srv.cleanup()  # type: ignore[attr-defined]

    def describe(self) -> list[tuple[str, str]]:
        rows = [("NATS", self.nats_url), ("Postgres", _hide_password(self.database_url)),
                ("OpenBao", self.vault_addr),
                ("Kubernetes", f"{'emulator' if self.emulated else 'cluster'} ({self.kubeconfig_path})"),
                ("HTTP API", f"http://127.0.0.1:{self.api_port}/api/mssp/tenants"),
                ("Heartbeat HTTP", f"http://127.0.0.1:{self.heartbeat_port}/v1/heartbeat/<tenant_id>"),
                ("Logs", str(self.workdir / "logs"))]
        return rows


def _hide_password(url: str) -> str:
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.split("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
