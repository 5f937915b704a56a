from __future__ import annotations

import faulthandler
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.postgres import PostgresServer, find_server_binaries

ROOT = Path(__file__).resolve().parent.parent
#: After the last test, how long the interpreter may take to exit before the run is ended.
EXIT_GRACE = 240


def pytest_unconfigure(config):
    """A test run whose interpreter never exits (a thread that is joined at exit and never
    ends, say) would hold CI until its time limit. Past ``EXIT_GRACE`` seconds, print every
    thread's stack and exit with status 1."""
    faulthandler.dump_traceback_later(EXIT_GRACE, exit=True, file=sys.__stderr__)


@pytest.fixture(autouse=True)
def private_state(tmp_path_factory, monkeypatch):
    """Each test remembers verified tree heads in a directory of its own, never in the real
    home (subprocesses inherit it: XDG_STATE_HOME is not stripped by ``run_cli``)."""
    state = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    monkeypatch.delenv("LINEAGE_STATE_DIR", raising=False)
    return state


@pytest.fixture
def url(tmp_path):
    """A SQLite ledger of its own (the capture tests)."""
    return f"sqlite:///{tmp_path}/ledger.db"


@pytest.fixture
def spool(tmp_path):
    return str(tmp_path / "spool")


@pytest.fixture(params=["thread", "process"])
def Capture(request):  # noqa: N802 - stands for the class
    """Both captures keep the same promises: on the capture's thread, or in a child process."""
    from lineage_ledger import ProcessCapture, TaskCapture

    return TaskCapture if request.param == "thread" else ProcessCapture


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh working directory with its own default ledger and spool."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LINEAGE_LEDGER_URL", raising=False)
    monkeypatch.delenv("LINEAGE_SPOOL", raising=False)
    return tmp_path


def run_cli(*args, cwd, env=None, program: str = "lineage-ledger", check_rc: int | None = None,
            prefix: tuple[str, ...] = (), **kw):
    """Run a console script of this project as a user would, in a subprocess."""
    script = Path(sys.executable).parent / program
    command = [*prefix, str(script), *[a if isinstance(a, bytes) else str(a) for a in args]]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
    full_env.update(env or {})
    result = subprocess.run(command, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=120, **kw)
    if check_rc is not None:
        assert result.returncode == check_rc, (result.returncode, result.stdout, result.stderr)
    return result


@pytest.fixture
def cli(workdir):
    def call(*args, **kw):
        return run_cli(*args, cwd=kw.pop("cwd", workdir), **kw)

    return call


@pytest.fixture(scope="session")
def postgres_server():
    bindir = find_server_binaries()
    if bindir is None:
        pytest.skip("no PostgreSQL server binary (initdb) on this machine; .ci/run installs Debian's postgresql")
    server = PostgresServer(bindir).start()
    yield server
    server.cleanup()


@pytest.fixture
def postgres_url(postgres_server):
    return postgres_server.create_database()
