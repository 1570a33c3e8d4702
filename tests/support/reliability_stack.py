"""The process stack of the reliability suite: ``DevStack`` plus the levers a chaos run needs.

``ReliabilityStack`` is the demo's ``DevStack`` (same servers, same child processes, same logs) with:

* ``skip``: services not to start (e.g. the helm-runner in suites that do not install charts);
* ``restart_nats()``: stop and start the stack's own nats-server on the same port and store dir
  (JetStream state on disk survives, clients reconnect);
* ``restart_postgres()``: ``PostgresServer.restart()`` (every connection cut, in-flight transactions
  rolled back, same port and data);
* ``supervise()``: restart any service that died, as a kubelet would (``restartPolicy: Always``), with
  the restarts and abnormal exits counted — a service that cannot start while NATS or Postgres is
  down exits and is started again, it must never stay down.

* ``workdir``: a fresh folder an unprivileged Postgres can traverse (see :func:`workdir`).

Everything else (``kill``, ``restart``, ``alive``, ``procs``, URLs) is ``DevStack``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from soctalk_cli.devstack import SERVICES, DevStack
from soctalk_common import stack

#: Settings that make a crash run converge in CI time without changing any rule: short redelivery
#: after a killed consumer (AckWait; handlers keep long work alive with in-progress acks), short
#: backoff, and a lease that a SIGKILLed holder gives up quickly.
FAST_RECOVERY_ENV = {
    "SOCTALK_ACK_WAIT_S": "6",
    "SOCTALK_RETRY_BASE_DELAY_S": "0.2",
    "SOCTALK_RETRY_MAX_DELAY_S": "3",
    "SOCTALK_LEASE_TTL_S": "15",
    "SOCTALK_TIMER_POLL_S": "0.5",
    "SOCTALK_LOG_LEVEL": "INFO",
}

SIGNING_KEY = "reliability-jwt-signing-key-0123456789abcdef"


def workdir(prefix: str = "soctalk-rel-") -> Path:
    """A fresh work folder under the system temp dir that an unprivileged Postgres can traverse.

    As root, ``PostgresServer`` runs as ``nobody`` and only chowns its own data folder; pytest's
    ``tmp_path`` lives under a 0700 root folder nobody cannot enter, so stacks use this instead.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o711)
    return path


@dataclass
class ReliabilityStack(DevStack):
    workdir: Path = field(default_factory=workdir)
    simulate_kubelet: bool | None = True  # also on a real cluster: node-less control planes
    skip: frozenset[str] = frozenset()
    restarts: Counter[str] = field(default_factory=Counter)
    exits: list[tuple[str, int | None]] = field(default_factory=list)

    # -- which services run ------------------------------------------------------------------------
    @property
    def services(self) -> list[str]:
        return [name for name, _ in SERVICES if name not in self.skip]

    def _spawn(self, name: str, module: str) -> None:
        if name in self.skip:
            return
        super()._spawn(name, module)

    # -- the servers this stack owns -----------------------------------------------------------------
    @property
    def nats(self) -> stack.NatsServer:
        return next(s for s in self._owned if isinstance(s, stack.NatsServer))

    @property
    def postgres(self) -> stack.PostgresServer:
        return next(s for s in self._owned if isinstance(s, stack.PostgresServer))

    async def restart_nats(self) -> float:
        """Stop and start nats-server on the same port and store dir; returns the seconds it was down."""
        srv = self.nats
        t0 = time.monotonic()
        await asyncio.to_thread(srv.stop)
        await asyncio.to_thread(srv.start)
        return time.monotonic() - t0

    async def restart_postgres(self) -> float:
        """``PostgresServer.restart()`` (immediate stop, then start); returns the seconds it was down."""
        t0 = time.monotonic()
        await asyncio.to_thread(self.postgres.restart)
        return time.monotonic() - t0

    # -- processes ---------------------------------------------------------------------------------
    def log_path(self, name: str) -> Path:
        return self.workdir / "logs" / f"{name}.log"

    def sigkill(self, name: str) -> None:
        """SIGKILL the service's process group and start it again at once (the crash under test)."""
        self.kill(name, signal.SIGKILL)
        self.exits.append((name, self.procs[name].returncode))
        self.restart(name)
        self.restarts[name] += 1

    def revive_dead(self) -> list[str]:
        """Start again every service that exited on its own (one supervisor pass)."""
        revived = []
        for name in self.services:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                self.exits.append((name, proc.returncode))
                self.restart(name)
                self.restarts[name] += 1
                revived.append(name)
        return revived

    async def supervise(self, stop: asyncio.Event, every_s: float = 0.5) -> None:
        while not stop.is_set():
            self.revive_dead()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)

    async def healthy(self, name: str) -> bool:
        port = {"api": self.api_port, "heartbeat": self.heartbeat_port}.get(name) or self.ports.get(name)
        if port is None:
            return False
        path = "/openapi.json" if name == "api" else "/healthz"
        try:
            async with httpx.AsyncClient(timeout=1.0) as c:
                return (await c.get(f"http://127.0.0.1:{port}{path}")).status_code == 200
        except httpx.HTTPError:
            return False

    async def all_healthy(self) -> bool:
        results = await asyncio.gather(*(self.healthy(n) for n in self.services if n != "relay"))
        return all(results) and all(self.alive().values())


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
