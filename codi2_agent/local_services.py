"""Throwaway services on loopback: a Postgres cluster and a ``chroma run`` server.

For the test suite, the load benchmark and trying a multi-worker deployment on one machine
(docs/deploy.md): each starts on 127.0.0.1 with a free port, every wait is bounded in time, and
`stop()` removes what it made. Nothing here is meant for production data (the Postgres cluster
trusts every local connection and runs with ``fsync=off``).

Postgres refuses to run as root. When this process is root, the cluster runs as the unprivileged
``postgres`` user that Debian's ``postgresql`` package creates (else as ``nobody``), through
``runuser`` (else ``su``), in a folder that user owns.
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ChromaServer",
    "LocalServiceError",
    "PostgresCluster",
    "free_port",
    "postgres_binary",
    "start_chroma",
    "start_postgres",
]

logger = logging.getLogger(__name__)


class LocalServiceError(RuntimeError):
    """A local service could not be started (what was missing or what its log said)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


# --- Postgres -------------------------------------------------------------------------------------
def postgres_binary(name: str) -> str:
    """The path of a Postgres server program (``initdb``, ``pg_ctl``): on PATH, or where Debian's
    ``postgresql`` package puts it (/usr/lib/postgresql/<version>/bin, newest version first)."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
        reverse=True,
    )
    if versions:
        return versions[0]
    raise LocalServiceError(
        f"Postgres' {name!r} is not installed: install the server (Debian/Ubuntu: "
        "`apt-get install postgresql`; .ci/run does it when it is missing)"
    )


def _run_as() -> tuple[list[str], str | None]:
    """(the command prefix that runs a program as an unprivileged user, that user) when root: the
    ``postgres`` user Debian's package creates, else ``nobody`` (the cluster needs no home)."""
    if os.geteuid() != 0:
        return [], None
    user = next((u for u in ("postgres", "nobody") if _user_exists(u)), None)
    if user is None:
        raise LocalServiceError(
            "Postgres will not run as root and there is no 'postgres' (or 'nobody') user to run it as"
        )
    runuser = shutil.which("runuser")
    return ([runuser, "-u", user, "--"] if runuser else ["su", user, "-s", "/bin/sh", "-c"]), user


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _as_user(prefix: list[str], command: list[str]) -> list[str]:
    if prefix and prefix[0] == "su":
        return [*prefix, shlex.join(command)]
    return [*prefix, *command]


@dataclass
class PostgresCluster:
    """A running throwaway cluster: `url` connects as its superuser ``postgres`` to database
    ``postgres``; `database_url(name)` to another database of it."""

    folder: Path
    port: int
    _prefix: list[str] = field(default_factory=list, repr=False)

    @property
    def url(self) -> str:
        return self.database_url("postgres")

    def database_url(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    @property
    def log(self) -> Path:
        return self.folder / "server.log"

    def create_database(self, name: str) -> str:
        """Create database `name` (letters, digits, underscores); returns its URL."""
        import psycopg

        if not name.replace("_", "").isalnum():
            raise ValueError(f"database names here are letters, digits and underscores, not {name!r}")
        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.database_url(name)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server (fast shutdown, then SIGKILL if it lingers) and delete its folder."""
        data = self.folder / "data"
        if data.exists():
            command = _as_user(
                self._prefix,
                [
                    postgres_binary("pg_ctl"),
                    "stop",
                    "-D",
                    str(data),
                    "-m",
                    "fast",
                    "-w",
                    "-t",
                    str(round(timeout)),
                ],
            )
            try:
                subprocess.run(command, capture_output=True, timeout=timeout + 10, check=True)
            except (subprocess.SubprocessError, OSError) as exc:
                logger.warning("pg_ctl stop failed (%s); killing the postmaster", exc)
                self._kill(data)
        shutil.rmtree(self.folder, ignore_errors=True)

    @staticmethod
    def _kill(data: Path) -> None:
        try:
            pid = int((data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass


def start_postgres(*, timeout: float = 60.0, attempts: int = 3) -> PostgresCluster:
    """initdb a cluster in a new temporary folder and start it on 127.0.0.1 (a free port).

    Raises:
        LocalServiceError: the binaries are missing, or the server did not come up within `timeout`
            (its log's end is in the message).
    """
    initdb, pg_ctl = postgres_binary("initdb"), postgres_binary("pg_ctl")
    prefix, user = _run_as()
    folder = Path(tempfile.mkdtemp(prefix="codi2-postgres-", dir=_reachable_temp() if user else None))
    if user is not None:
        shutil.chown(folder, user=user)
    cluster = PostgresCluster(folder, 0, prefix)
    data = folder / "data"
    try:
        init = _as_user(
            prefix, [initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]
        )
        done = subprocess.run(init, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise LocalServiceError(
                f"initdb failed ({done.returncode}): {(done.stderr or done.stdout)[-2000:]}"
            )
        for _ in range(attempts):  # a port found free can be taken before the server binds it
            cluster.port = free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {cluster.port} -k {folder} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
            )
            start = _as_user(
                prefix,
                [
                    pg_ctl,
                    "start",
                    "-D",
                    str(data),
                    "-l",
                    str(cluster.log),
                    "-w",
                    "-t",
                    str(round(timeout)),
                    "-o",
                    options,
                ],
            )
            done = subprocess.run(start, capture_output=True, text=True, timeout=timeout + 10)
            if done.returncode == 0 and _accepts(cluster.url, timeout):
                return cluster
            logger.warning("Postgres did not start on port %d: %s", cluster.port, _tail(cluster.log, 500))
            cluster._kill(data)
        raise LocalServiceError(f"Postgres did not start in {attempts} attempts:\n{_tail(cluster.log)}")
    except BaseException:
        cluster.stop()
        raise


def _reachable_temp() -> str:
    """A temporary folder another user can reach (every parent searchable by others): the usual
    one, unless TMPDIR points somewhere private, then /tmp."""
    usual = Path(tempfile.gettempdir()).resolve()
    if all(p.stat().st_mode & stat.S_IXOTH for p in (usual, *usual.parents)):
        return str(usual)
    return "/tmp"


def _accepts(url: str, timeout: float) -> bool:
    import psycopg

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(url, connect_timeout=2):
                return True
        except psycopg.OperationalError:
            time.sleep(0.1)
    return False


# --- Chroma ---------------------------------------------------------------------------------------
@dataclass
class ChromaServer:
    """A running ``chroma run`` server (`host`, `port`), its data folder and log."""

    host: str
    port: int
    folder: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def log(self) -> Path:
        return self.folder / "server.log"

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server (SIGKILL if it lingers); its folder is left to its owner."""
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout)


def _chroma_executable() -> str:
    beside = Path(sys.executable).parent / "chroma"  # this environment's own, not whatever is on PATH
    if beside.is_file():
        return str(beside)
    found = shutil.which("chroma")
    if found is None:
        raise LocalServiceError("the `chroma` command is not installed next to this Python (chromadb)")
    return found


def start_chroma(folder: str | Path, *, timeout: float = 60.0) -> ChromaServer:
    """Start ``chroma run`` on a free loopback port with its data in `folder`; returns once its
    heartbeat answers (`LocalServiceError` after `timeout` seconds)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}
    command = [
        _chroma_executable(),
        "run",
        "--path",
        str(folder / "db"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with (folder / "server.log").open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = ChromaServer("127.0.0.1", port, folder, process)
    url = f"http://127.0.0.1:{port}/api/v2/heartbeat"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LocalServiceError(f"chroma exited with {process.returncode}:\n{_tail(server.log)}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as answer:
                if answer.status == 200:
                    return server
        except OSError:
            time.sleep(0.1)
    server.stop()
    raise LocalServiceError(f"chroma did not answer {url} within {timeout:g} s:\n{_tail(server.log)}")
