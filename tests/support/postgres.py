"""A real PostgreSQL server for the tests: initdb in a temp dir, a loopback port.

Debian's server binaries live in /usr/lib/postgresql/<version>/bin. PostgreSQL refuses to
run as root, so under root the server runs as the ``postgres`` user (or ``nobody``).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["PostgresServer", "crash", "find_server_binaries", "own_server", "password_server", "restart", "server_pids",
           "signal_server", "stopped"]


def find_server_binaries() -> str | None:
    for directory in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(directory, "initdb")):
            return directory
    found = shutil.which("initdb")
    return os.path.dirname(os.path.realpath(found)) if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


#: (bin directory, the server's uid) -> a data directory fresh from initdb (_initialised_cluster).
_CLUSTERS: dict[tuple[str, int | None], str] = {}
_CLUSTERS_LOCK = threading.Lock()


class _PortTaken(Exception):
    """The port picked for a server was taken before it bound it."""


class PostgresServer:
    def __init__(self, bindir: str) -> None:
        self.bindir = bindir
        self.base = tempfile.mkdtemp(prefix="ll-pg-")
        os.chmod(self.base, 0o755)
        self.data = os.path.join(self.base, "data")
        self.port = _free_port()
        self.process: subprocess.Popen | None = None
        self._user = None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    self._user = pwd.getpwnam(name)
                    break
                except KeyError:
                    continue
            os.chown(self.base, self._user.pw_uid, self._user.pw_gid)

    def _as_user(self, argv: list[str]) -> list[str]:
        if self._user is None:
            return argv
        return ["setpriv", f"--reuid={self._user.pw_uid}", f"--regid={self._user.pw_gid}", "--clear-groups", *argv]

    def start(self) -> PostgresServer:
        """Start the server, on a port of its own: the port picked for it may be taken by
        the time it binds it (another run's server, any listener; see
        tests/test_pg_server_port.py), and then a new one is picked, on the first start
        only. A restart keeps its port, which the clients were given."""
        if not os.path.exists(self.data):
            subprocess.run(self._as_user(["cp", "-a", self._initialised_cluster(), self.data]),
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.base)
        for _ in range(10):
            try:
                self._launch()
                self._wait_ready()
                self._started = True
                return self
            except _PortTaken:
                if getattr(self, "_started", False):
                    raise RuntimeError(f"port {self.port} of the PostgreSQL server at {self.data} is taken by "
                                       "another process") from None
                self.port = _free_port()
        raise RuntimeError(f"no free port for PostgreSQL after 10 tries; see {self.base}/server.log")

    def _initialised_cluster(self) -> str:
        """A data directory fresh from ``initdb``, made once per test process and binary
        directory, that each server's data directory is a copy of: initdb (bootstrapping the
        catalogue and the template databases) ran for each of the dozen servers a run starts,
        6-10 s each on the loaded 2-core machine where a copy took 0.5-6 s. The copy is the
        same cluster as a fresh initdb's but for its system identifier, which no test reads.
        Owned by the server's user, in a directory of its own removed at exit."""
        key = (self.bindir, self._user.pw_uid if self._user else None)
        with _CLUSTERS_LOCK:
            if key not in _CLUSTERS:
                base = tempfile.mkdtemp(prefix="ll-pg-initdb-")
                atexit.register(shutil.rmtree, base, ignore_errors=True)
                os.chmod(base, 0o755)
                if self._user is not None:
                    os.chown(base, self._user.pw_uid, self._user.pw_gid)
                data = os.path.join(base, "data")
                subprocess.run(
                    self._as_user([os.path.join(self.bindir, "initdb"), "-D", data, "-A", "trust",
                                   "-U", "ledger", "--no-sync", "-E", "UTF8"]),
                    check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=base,
                )
                _CLUSTERS[key] = data
            return _CLUSTERS[key]

    def _launch(self) -> None:
        log = os.path.join(self.base, "server.log")
        self._log_from = os.path.getsize(log) if os.path.exists(log) else 0
        with open(log, "ab") as stderr:
            self.process = subprocess.Popen(
                self._as_user([os.path.join(self.bindir, "postgres"), "-D", self.data, "-p", str(self.port),
                               "-h", "127.0.0.1", "-k", self.base, "-c", "fsync=off"]),
                stdout=subprocess.DEVNULL, stderr=stderr, cwd=self.base,
            )

    def _wait_ready(self, timeout: float = 120.0) -> None:
        """Until this server answers on its port: a server that answers there with another
        data directory is another's, and this one could not bind the port."""
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.dsn("postgres"), connect_timeout=5) as conn:
                    answering = conn.execute("SHOW data_directory").fetchone()[0]
            except psycopg.OperationalError:
                if self.process and self.process.poll() is not None:
                    self.process = None
                    if self._could_not_bind():
                        raise _PortTaken from None
                    raise RuntimeError(f"PostgreSQL did not start; see {self.base}/server.log") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL did not start; see {self.base}/server.log") from None
                time.sleep(0.1)
                continue
            if os.path.realpath(answering) == os.path.realpath(self.data):
                return
            if self.process is not None:  # this one cannot have bound the port: it ends, or is ended
                self.process.send_signal(signal.SIGINT)
                self._wait_for_end()
            raise _PortTaken

    def _could_not_bind(self) -> bool:
        with open(os.path.join(self.base, "server.log"), "rb") as log:
            log.seek(self._log_from)
            said = log.read()
        return b"could not bind" in said or b"could not create any TCP/IP sockets" in said

    def standby(self) -> PostgresServer:
        """A hot standby of this server (``pg_basebackup -R``: streaming replication) on a
        port of its own, started and taking read-only sessions; :meth:`promote` makes it a
        primary, as a failover does."""
        standby = PostgresServer(self.bindir)
        subprocess.run(
            standby._as_user([os.path.join(self.bindir, "pg_basebackup"), "-D", standby.data, "-R", "-X", "stream", "-c", "fast",
                              "-h", "127.0.0.1", "-p", str(self.port), "-U", "ledger", "--no-sync"]),
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=standby.base, timeout=120,
        )
        return standby.start()

    def in_recovery(self) -> bool:
        import psycopg

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            return bool(conn.execute("SELECT pg_is_in_recovery()").fetchone()[0])

    def promote(self, timeout: float = 60.0) -> None:
        """``pg_ctl promote`` and wait until the server takes writes."""
        subprocess.run(self._as_user([os.path.join(self.bindir, "pg_ctl"), "promote", "-D", self.data, "-w",
                                      "-t", str(int(timeout))]),
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.base,
                       timeout=timeout + 30)
        deadline = time.monotonic() + timeout
        while self.in_recovery():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the standby did not leave recovery; see {self.base}/server.log")
            time.sleep(0.1)

    def dsn(self, database: str) -> str:
        return f"postgresql://ledger@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def _postmaster_pid(self) -> int | None:
        try:
            with open(os.path.join(self.data, "postmaster.pid")) as handle:
                return int(handle.readline())
        except (OSError, ValueError):
            return None

    def stop(self, *, immediate: bool = False) -> None:
        pid = self._postmaster_pid()
        if pid is not None:
            try:
                os.kill(pid, signal.SIGQUIT if immediate else signal.SIGINT)
            except ProcessLookupError:
                pass
        self._wait_for_end()

    def _wait_for_end(self) -> None:
        """Wait for the server process to end (killed after 30 s), and forget it."""
        if self.process is not None:
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


# -- a server that stops answering (its processes SIGSTOPped), for the hang tests -------------
@contextlib.contextmanager
def own_server() -> Iterator[PostgresServer]:
    """A server of the caller's own (stopping the session's would stop every other test),
    skipped where there is no server binary; never left stopped, as cleanup would wait on it."""
    bindir = find_server_binaries()
    if bindir is None:
        pytest.skip("no PostgreSQL server binary (initdb) on this machine; .ci/run installs Debian's postgresql")
    server = PostgresServer(bindir)
    try:  # a failed start or a failed test must not leave a server (or its files) behind
        yield server.start()
    finally:
        if server._postmaster_pid() is not None and server.process is not None:
            signal_server(server, signal.SIGCONT)  # never leave it stopped: cleanup would wait on it
        server.cleanup()



@contextlib.contextmanager
def password_server(password: str, *, role: str = "secretive", database: str = "secretdb") -> Iterator[PostgresServer]:
    """A server of the caller's own that asks ``role`` for ``password`` over TCP (the
    session's server trusts every role, so no test of a password could fail against it);
    ``database`` is made, owned by ``role``. Role 'ledger' stays trusted for the set-up."""
    import psycopg
    from psycopg import sql

    with own_server() as server:
        with open(os.path.join(server.data, "pg_hba.conf"), "w") as hba:
            hba.write("local all all trust\nhost all ledger 127.0.0.1/32 trust\n"
                      "host all all 127.0.0.1/32 scram-sha-256\n")
        os.kill(server._postmaster_pid(), signal.SIGHUP)
        with psycopg.connect(server.dsn("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(role)))
        # The reload is asynchronous: wait until a wrong password is refused, so that no test
        # reads a refusal it expects from a server that still trusts everyone.
        deadline = time.monotonic() + 60
        while True:
            try:
                psycopg.connect(host="127.0.0.1", port=server.port, dbname=database, user=role,
                                password=password + "-not-it", connect_timeout=10).close()
            except psycopg.OperationalError:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"pg_hba.conf was not reloaded; see {server.base}/server.log")
            time.sleep(0.1)
        yield server


def server_pids(server: PostgresServer) -> list[int]:
    """The postmaster and every process it started (backends, checkpointer, ...)."""
    postmaster = int(Path(server.data, "postmaster.pid").read_text().split()[0])
    children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(postmaster)], capture_output=True, text=True,
                              check=True).stdout.split()
    return [postmaster, *map(int, children)]


def signal_server(server: PostgresServer, signum: int) -> None:
    for pid in server_pids(server):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


@contextlib.contextmanager
def stopped(server: PostgresServer) -> Iterator[None]:
    """``server`` SIGSTOPped for the block: it keeps its connections and answers nothing."""
    signal_server(server, signal.SIGSTOP)
    try:
        yield
    finally:
        signal_server(server, signal.SIGCONT)


# -- a server that goes away and comes back, for the deployment tests ------------------------
def crash(server: PostgresServer, *, how: str) -> None:
    """Take ``server`` down as a deployment loses it, and wait until its postmaster is gone.

    ``how``: ``"kill"``, SIGKILL to the postmaster alone (the OOM killer's choice; the
    backends it leaves notice and end on their own); ``"kill-all"``, SIGKILL to the
    postmaster and every backend (the machine's power cut, as the clients see it); ``"fast"``,
    a fast shutdown (SIGINT: ``pg_ctl stop -m fast``, what a package upgrade or a reboot does:
    sessions are ended, in-flight transactions rolled back)."""
    if how not in ("kill", "kill-all", "fast"):
        raise ValueError(how)
    pids = server_pids(server)
    targets = pids if how == "kill-all" else pids[:1]
    for pid in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT if how == "fast" else signal.SIGKILL)
    if server.process is not None:
        server.process.wait(timeout=60)
        server.process = None


def restart(server: PostgresServer, timeout: float = 60.0) -> PostgresServer:
    """Start ``server`` again on its data and port after :func:`crash`. After a SIGKILL the
    postmaster's orphaned backends still hold its shared memory for a moment, and it refuses
    to start ("pre-existing shared memory block is still in use"): tried again until
    ``timeout``; crash recovery (the WAL replayed) is part of the start."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return server.start()
        except RuntimeError:
            if server.process is not None:
                server.process.wait(timeout=30)
                server.process = None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
