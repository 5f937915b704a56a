"""How the audit's worker processes start (helper-152, 48th session).

They were ``python -m lineage_ledger._log.audit_parallel``, and Python puts the current
directory first on ``sys.path`` for ``-m`` (and ``-c``): a ``json.py`` in the directory
``verify-lineage`` was run in (a shared project folder, ``/tmp``: one that another local user
can write) was imported by every worker as code, as the user who audits. They are started
with ``-c`` now, whose first step takes that entry off, and without the package's
``__init__`` (the library it imports is not what a worker runs: 2.4 MiB and 50 ms a worker)."""

from __future__ import annotations

import os

import pytest

from lineage_ledger import open_ledger
from tests.conftest import run_cli
from tests.support.factories import make_records

PARALLEL = {"LINEAGE_AUDIT_PARALLEL_MIN": "0", "LINEAGE_AUDIT_TASK_RECORDS": "40", "LINEAGE_AUDIT_WORKERS": "2"}

# Planted where the audit is run: records that it ran, then behaves as the module it shadows.
_PLANTED = '''import os, sys
open(os.path.join({folder!r}, "RAN-" + str(os.getpid())), "w").close()
here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if p not in ("", here)]
del sys.modules[__name__]
import importlib
sys.modules[__name__] = importlib.import_module(__name__)
'''


@pytest.fixture
def ledger_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with open_ledger(url, spool=str(tmp_path / "spool")) as ledger:
        for start in range(0, 200, 50):
            ledger.append_records([r.stored() for r in make_records(50, start=start)])
    return url


@pytest.mark.parametrize("module", ["json", "msgspec", "blake3", "sqlite3"])
def test_a_module_planted_where_the_audit_runs_is_not_imported(tmp_path, ledger_url, module):
    folder = tmp_path / "shared"
    folder.mkdir()
    (folder / f"{module}.py").write_text(_PLANTED.format(folder=str(folder)))
    done = run_cli("--ledger", ledger_url, cwd=folder, program="verify-lineage",
                   env={**PARALLEL, "LINEAGE_STATE_DIR": str(tmp_path / "state")})
    assert done.returncode == 0 and "200 records" in done.stdout, done
    ran = [name for name in os.listdir(folder) if name.startswith("RAN-")]
    assert ran == [], f"{module}.py in the working directory was run by {len(ran)} process(es)"


def test_the_workers_do_run(tmp_path, ledger_url, monkeypatch):
    """The control: these settings start workers (their command is the one changed), and
    their answer is the audit's (a worker that failed to start would leave the sequential
    audit to run: the same output, so the command is checked to be run and to answer)."""
    from lineage_ledger._log import audit_parallel
    from lineage_ledger.backends import open_backend

    for key, value in PARALLEL.items():
        monkeypatch.setenv(key, value)
    backend = open_backend(ledger_url, create=False)
    try:
        tasks = audit_parallel.plan(backend, 200, backend.head().height + 1)
        assert tasks is not None and len(tasks) > 1
        answers = list(audit_parallel.results(backend, tasks, files=False))
    finally:
        backend.close()
    assert [task for task, _ in answers] == tasks
    assert all(result is not None for _, result in answers)
    assert sum(len(result.leaves) for _, result in answers) == 200 * 32
