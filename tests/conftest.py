from __future__ import annotations

import faulthandler
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings

from tests.support.postgres import own_server

# Hypothesis fails an example that takes over 200 ms by default: a timing assertion, which
# a busy CI machine (three test processes and the engines they start on 2 cores) can trip
# where the property holds. Examples are still bounded by the test's own timeouts.
settings.register_profile("lineage-ledger", deadline=None)
settings.load_profile("lineage-ledger")

ROOT = Path(__file__).resolve().parent.parent
_SESSION_HOME = pytest.StashKey[str]()
#: After the last test, how long the interpreter may take to exit before the run is ended.
EXIT_GRACE = 240


def _caches_kept_from_the_real_home() -> dict[str, str]:
    """Where the tools the tests reuse across runs live in the real home: the Fabric and
    Nextflow builds (``make install-fabric``, ``make install-nextflow``) and Go's module and
    build caches (the Fabric tests build the chaincode). Read before HOME changes, pinned by
    environment variable (an existing setting wins), so they are found, and nothing else is."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lineage-ledger"
    kept = {"LINEAGE_LEDGER_FABRIC_CACHE": str(cache), "LINEAGE_LEDGER_NEXTFLOW_CACHE": str(cache)}
    go = shutil.which("go")
    if go:  # `go env`, not $HOME/go: a `go env -w` setting in the real home's go/env counts too
        names = ["GOPATH", "GOMODCACHE", "GOCACHE", "GOENV"]
        config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        # the go command counts its own use in $XDG_CONFIG_HOME/go/telemetry: not in the real home.
        # It may still be writing there when `go env` has returned (CI failed once removing it
        # with "Directory not empty"), so the directory is removed without minding what is late.
        elsewhere = tempfile.mkdtemp(prefix="lineage-ledger-tests-go-")
        env = {**os.environ, "GOENV": os.environ.get("GOENV") or os.path.join(config, "go", "env"),
               "XDG_CONFIG_HOME": elsewhere}
        try:
            found = json.loads(subprocess.run([go, "env", "-json", *names], capture_output=True, text=True,
                                              env=env, timeout=60, check=True).stdout)
            kept.update({name: found[name] for name in names if found.get(name)})
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
        finally:
            shutil.rmtree(elsewhere, ignore_errors=True)
    return {name: value for name, value in kept.items() if name not in os.environ}


def _compile_the_project() -> None:
    """Byte-compile the project's own modules (core, the back-ends, the plugins) into their
    ``__pycache__`` folders, as a first import does where writing bytecode is allowed.

    The tests start hundreds of Python processes that import the project: the CLI, Snakemake
    and its plugin, Airflow's task processes, Parsl's workers, nextflow-ledger. Where
    PYTHONDONTWRITEBYTECODE is set (this machine's environment sets it) no process ever
    writes a ``.pyc``, so in a fresh clone, as CI has, each of them compiled the project's
    modules from source again: 0.47 s of CPU for a ``lineage-ledger log`` against 0.10 s.
    ``compileall`` writes whatever that variable says, skips what is up to date, and takes
    under a second on a fresh clone. Installed packages are compiled by pip already."""
    import compileall

    for folder in (ROOT / "core", ROOT / "ledger_backends", *sorted(ROOT.glob("plugins/*/src"))):
        compileall.compile_dir(str(folder), quiet=2)


def pytest_configure(config):
    """No test, engine or subprocess writes to the real home directory (Airflow's
    ``~/airflow``, Snakemake's caches, the trusted tree heads): HOME and the XDG base
    directories point into a temporary directory for the whole run, and each test gets
    a home of its own below (``private_state``). The project's modules are byte-compiled
    once for every process the tests start (``_compile_the_project``)."""
    _compile_the_project()
    os.environ.update(_caches_kept_from_the_real_home())
    home = tempfile.mkdtemp(prefix="lineage-ledger-tests-home-")
    config.stash[_SESSION_HOME] = home
    os.environ["HOME"] = home
    for name, below in (("XDG_CACHE_HOME", ".cache"), ("XDG_CONFIG_HOME", ".config"), ("XDG_DATA_HOME", ".local/share")):
        os.environ[name] = os.path.join(home, below)


def pytest_unconfigure(config):
    """A test run whose interpreter never exits (a thread that is joined at exit and never
    ends, say) would hold CI until its time limit. Past ``EXIT_GRACE`` seconds, print every
    thread's stack and exit with status 1. Not in an xdist worker: one that has run its last
    test waits, idle, until every other worker is done (minutes, where one runs a long module
    last), and then the controller ends it, killing it if it does not leave within seconds."""
    home = config.stash.get(_SESSION_HOME, None)
    if home:
        shutil.rmtree(home, ignore_errors=True)
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        faulthandler.dump_traceback_later(EXIT_GRACE, exit=True, file=sys.__stderr__)


@pytest.fixture(autouse=True)
def private_state(tmp_path_factory, monkeypatch):
    """Each test remembers verified tree heads in a directory of its own, never in the real
    home (subprocesses inherit it: XDG_STATE_HOME is not stripped by ``run_cli``), and has
    a HOME of its own, so nothing a test leaves in ``~`` is seen by another."""
    state = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    for name, below in (("XDG_CACHE_HOME", ".cache"), ("XDG_CONFIG_HOME", ".config"), ("XDG_DATA_HOME", ".local/share")):
        monkeypatch.setenv(name, str(home / below))
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


@pytest.fixture
def shared_workdir(request, tmp_path_factory, monkeypatch):
    """A fresh working directory, as ``workdir``, but at one absolute path for every test of
    the module (in this test process), emptied before each: where ``made_once`` puts back
    what it made. A module uses it by overriding ``workdir`` with a fixture that returns it."""
    key = request.module.__name__
    place = _SHARED_PLACES.get(key)
    if place is None:
        place = _SHARED_PLACES[key] = tmp_path_factory.mktemp("shared-work")
    shutil.rmtree(place, ignore_errors=True)
    place.mkdir()
    monkeypatch.chdir(place)
    monkeypatch.delenv("LINEAGE_LEDGER_URL", raising=False)
    monkeypatch.delenv("LINEAGE_SPOOL", raising=False)
    return place


#: A module's shared working directory (``shared_workdir``) and what ``made_once`` made there.
_SHARED_PLACES: dict[str, Path] = {}
_MADE: dict[tuple[str, str], Path] = {}


def made_once(build, name: str):
    """A fixture, ``name``, for the tests that start from what ``build(cli, workdir)`` makes
    with the command line (a recorded step, a key, a checkpoint): made once per module, then
    put back for each test as it was, the working directory and the remembered state
    (``private_state``) copied back byte for byte. Records name absolute paths, so the
    module's working directory is ``shared_workdir``, at the same path for each test.
    The tests only start from it: each gets a copy of its own to change."""

    @pytest.fixture(name=name)
    def fixture(request, cli, workdir, private_state, tmp_path_factory):
        assert workdir == _SHARED_PLACES.get(request.module.__name__), "made_once needs workdir = shared_workdir"
        key = (request.module.__name__, name)
        made = _MADE.get(key)
        if made is None:
            build(cli, workdir)
            made = tmp_path_factory.mktemp(f"made-{name}")
            shutil.copytree(workdir, made / "work", symlinks=True)
            shutil.copytree(private_state, made / "state", symlinks=True)
            _MADE[key] = made
        else:
            shutil.copytree(made / "work", workdir, symlinks=True, dirs_exist_ok=True)
            shutil.copytree(made / "state", private_state, symlinks=True, dirs_exist_ok=True)
        return workdir

    return fixture


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
    with own_server() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server):
    return postgres_server.create_database()


#: Tests that share a worker under pytest-xdist whatever their module, by what their
#: module's name says they start: every Fabric network, every MPI job (ranks oversubscribe
#: the processors), every Airflow site (a scheduler and a dozen processes) and every
#: Nextflow JVM, so that two of them never compete with each other for two processors.
#: A benchmark script's smoke test (tests/test_bench_smoke.py) goes by the script's name.
SERVICE_GROUPS = ("fabric", "baash", "airflow", "nextflow")


#: Modules named after a service that start none of it: the plugins' and clients' parts on real
#: files, in the test process or processes of its own, with no Airflow site (scheduler, API
#: server), Fabric network, MPI job or JVM. Each is a unit of its own, so the Airflow group,
#: the longest unit of the run (in a CI at load 10, still running when the other process had
#: done the BAASH and Nextflow groups), does not carry them.
STARTS_NO_SERVICE = frozenset({
    "test_airflow_digests.py", "test_airflow_journal_only.py", "test_airflow_late.py", "test_airflow_shipper.py",
    "test_baash_checkpoint.py", "test_fabric_client.py", "test_nextflow_units.py",
})


def _work_unit(nodeid: str) -> str:
    """The unit of work a test is in under pytest-xdist: its module (whose module-scoped
    set-up, an Airflow site or a Fabric network, is then made once), or a service's group."""
    module, _, test = nodeid.partition("::")
    name = os.path.basename(module)
    if name in STARTS_NO_SERVICE:
        return module
    script = test.partition("[")[2]  # test_service_benchmark_runs_quick[bench_fabric.py]
    if script.startswith("bench_"):
        name += " " + script
    return next((service for service in SERVICE_GROUPS if service in name), module)


#: The services' groups in the order they are started, the longest first (measured at load
#: 11-15, one process each: 18 tests of the Airflow group's 85 took 718 s, the whole BAASH
#: group 855 s, the Fabric group 765 s; each of them far longer than any module).
#: Longest first: a long unit given out late runs alone at the end while the other process has
#: nothing left to do, and the run waits for it. The modules come after them, those of the
#: most tests first.
_LONGEST_FIRST = ("airflow", "baash", "nextflow", "fabric")


def _work_unit_order(unit: str, tests: int) -> tuple[int, int]:
    """Where a unit of ``tests`` tests comes in the queue (lowest first)."""
    rank = _LONGEST_FIRST.index(unit) if unit in _LONGEST_FIRST else len(_LONGEST_FIRST)
    return rank, -tests


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``make test`` runs the tests in several processes where there are two processors or more
    (pytest-xdist), a module or a service's group (``_work_unit``) at a time, in the order of
    ``_work_unit_order``. (Not ``--dist loadgroup`` with ``xdist_group`` marks: pytest-xdist
    3.8 sets the group on a test's ``_nodeid``, which pytest 9 no longer reads, so the marks
    grouped nothing.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ByWorkUnit(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _work_unit(nodeid)

        def _assign_work_unit(self, node) -> None:
            # The queue is in collection order, or by test count; the next unit given out is
            # the first by _work_unit_order.
            first = min(self.workqueue, key=lambda unit: _work_unit_order(unit, len(self.workqueue[unit])))
            self.workqueue.move_to_end(first, last=False)
            super()._assign_work_unit(node)

    return ByWorkUnit(config, log)


def _utf8_safe(text: str) -> str:
    """``text`` with each lone surrogate (a byte of a name that is not UTF-8, as Python reads
    it) written ``\\xNN``: what a report may carry between processes."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under pytest-xdist a worker sends each report to the controller as UTF-8 (execnet): a
    captured log line or a failure's text holding a name that is not UTF-8 (the tests of
    such names) made the worker fail to encode it, INTERNALERROR, and the rest of its tests
    never ran. The report's text is made UTF-8 here, each such byte shown ``\\xNN``."""
    outcome = yield
    report = outcome.get_result()
    report.sections = [(title, _utf8_safe(content)) for title, content in report.sections]
    if report.longrepr is not None:
        shown = str(report.longrepr)
        if _utf8_safe(shown) != shown:
            report.longrepr = _utf8_safe(shown)
