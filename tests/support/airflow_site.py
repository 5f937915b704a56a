"""A real Airflow 3 site for the tests: its own AIRFLOW_HOME, SQLite metadata DB, DAGs folder.

``airflow db migrate`` is slow (seconds), so one site serves the whole test session; every
test gets its own ledger, spool and data directory through ``[lineage_ledger]`` variables.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
EXAMPLE_DAG = ROOT / "examples" / "airflow" / "lineage_example.py"
TEST_DAGS = Path(__file__).resolve().parent / "airflow_dags"


def private_airflow_home() -> Path:
    """This test session's AIRFLOW_HOME, set in the environment before anything imports Airflow.

    Airflow fixes its home (and the SQLite metadata database in it) when it is first imported;
    without AIRFLOW_HOME that is ``~/airflow`` in the real home. Every Airflow test module
    calls this at import time, so whichever module pytest collects or runs first, Airflow
    starts in the same private directory and ``make_site`` migrates the database there.
    """
    home = os.environ.get("LINEAGE_TESTS_AIRFLOW_HOME")
    if not home:
        home = tempfile.mkdtemp(prefix="ll-airflow-home-")
        os.environ["LINEAGE_TESTS_AIRFLOW_HOME"] = home
        atexit.register(shutil.rmtree, home, True)
    os.environ["AIRFLOW_HOME"] = home
    if "airflow" in sys.modules:
        from airflow.configuration import AIRFLOW_HOME

        if os.path.realpath(AIRFLOW_HOME) != os.path.realpath(home):
            raise RuntimeError(f"Airflow was imported with AIRFLOW_HOME={AIRFLOW_HOME} before the tests set theirs")
    return Path(home)


def airflow_installed() -> bool:
    return importlib.util.find_spec("airflow") is not None and (BIN / "airflow").exists()


@dataclass
class AirflowSite:
    home: Path
    dags: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def openlineage_events(self) -> Path:
        return self.home / "openlineage.jsonl"

    def cli(self, *args: str, env: dict[str, str] | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
        """Run the ``airflow`` command of this venv against the site."""
        full = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "LINEAGE_"))}
        full.update(self.env)
        full.update(env or {})
        return subprocess.run([str(BIN / "airflow"), *args], env=full, capture_output=True, text=True,
                              timeout=timeout, cwd=self.home)

    def load_dag(self, name: str) -> ModuleType:
        """Import a DAG file of the site afresh (its paths come from the current environment)."""
        path = self.dags / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"_airflow_test_{name}_{os.urandom(4).hex()}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


def make_site(home: Path) -> AirflowSite:
    dags = home / "dags"
    dags.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLE_DAG, dags / EXAMPLE_DAG.name)
    for dag_file in TEST_DAGS.glob("*.py"):
        shutil.copy(dag_file, dags / dag_file.name)
    site = AirflowSite(home, dags)
    site.env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
        # OpenLineage writes its events to a file the tests read back.
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
            {"type": "file", "log_file_path": str(site.openlineage_events), "append": True}),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "lineage-ledger-tests",
    }
    database = home / "airflow.db"  # the default SQL_ALCHEMY_CONN: sqlite:///{AIRFLOW_HOME}/airflow.db
    handed = os.environ.get(MIGRATED_BY_PARENT)
    if not _migrated_copy and handed and os.path.isfile(handed):
        _migrated_copy.append(Path(handed))
    if database.resolve() in _migrated_here and database.exists():
        return site  # the session's home again (the next module): migrated by this process already
    if _migrated_copy and _migrated_copy[0].exists() and not database.exists():
        shutil.copy2(_migrated_copy[0], database)  # a fresh home: the same rows, no path in them
    else:
        result = site.cli("db", "migrate", timeout=300)
        if result.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        if not _migrated_copy:
            keep = Path(tempfile.mkdtemp(prefix="ll-airflow-migrated-"))
            atexit.register(shutil.rmtree, keep, True)
            shutil.copy2(database, keep / "airflow.db")
            _migrated_copy.append(keep / "airflow.db")
    _migrated_here.add(database.resolve())
    return site


#: ``airflow db migrate`` starts a fresh Airflow (about 4 s) for each site. A site whose
#: database this process migrated already (the session's private home, made again by each
#: Airflow test module) is not migrated again; a site in a fresh home gets a copy of the
#: first database this process migrated: its rows (the log templates, the default pool) name
#: no path, so it is the database ``db migrate`` would make there.
_migrated_here: set[Path] = set()
_migrated_copy: list[Path] = []
#: The database a parent test session migrated, for the pytest it starts (test_airflow_order):
#: that child then copies it as a fresh home here does, instead of migrating one of its own.
MIGRATED_BY_PARENT = "LINEAGE_TESTS_AIRFLOW_MIGRATED_DB"


def migrated_database() -> Path:
    """This process's freshly migrated metadata database (read only: copy it), migrated in a
    throwaway home if no site was made yet."""
    if not _migrated_copy:
        scratch = tempfile.mkdtemp(prefix="ll-airflow-scratch-")
        atexit.register(shutil.rmtree, scratch, True)
        make_site(Path(scratch))
    return _migrated_copy[0]


def openlineage_events(site: AirflowSite) -> Iterator[dict]:
    if site.openlineage_events.exists():
        for line in site.openlineage_events.read_text().splitlines():
            if line.strip():
                yield json.loads(line)


def end_in_process_airflow(saved_signals: dict[int, object]) -> None:
    """Undo what ``dag.test()`` left in this process that would outlive the Airflow tests.

    * Airflow's task runner installs a SIGTERM handler that calls the last task's
      ``on_kill()`` and does not exit: a SIGTERM meant for pytest would be swallowed.
    * OpenLineage's listener emits DAG-run events from a ``ProcessPoolExecutor`` forked
      from this process, and ``concurrent.futures`` joins its manager thread when the
      interpreter exits. A worker forked while another thread held a lock may never read
      its stop sentinel, and pytest then hangs after printing its summary. (This stopped
      a CI run for 90 minutes.) The pool is shut down here, and a worker that has not
      left within 10 s is killed, so the manager thread ends.
    """
    for signum, handler in saved_signals.items():
        signal.signal(signum, handler)  # type: ignore[arg-type]
    try:
        from airflow.listeners.listener import get_listener_manager
    except ImportError:
        return
    for listener in get_listener_manager().pm.get_plugins():
        pool = getattr(listener, "_executor", None)  # OpenLineageListener's DAG-run pool
        if not isinstance(pool, ProcessPoolExecutor):
            continue
        listener._executor = None  # a later event would start a fresh pool
        workers = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for worker in workers:
            worker.join(10)
            if worker.is_alive():
                worker.kill()
                worker.join(10)
