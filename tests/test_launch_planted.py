"""The library's own processes import no code from the directory they start in.

``python -m MODULE`` put that directory first on ``sys.path``: a ``json.py`` or ``msgspec.py``
planted in a lab's shared project folder (writable by the group) was imported as code by the
recording process (``ProcessCapture``'s child, which Parsl's, Airflow's and Snakemake's
recorders start in the workflow's directory), running as the user whose workflow it records.
helper-152 found it in the audit's workers (tests/test_audit_s48_worker_start.py); the same
start was used by the recording process, BAASH's ranks and Snakemake's sidecar
(lineage_ledger._launch). Failing before: the planted modules ran in the recording process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from lineage_ledger import open_ledger

RECORD = textwrap.dedent("""
    import sys
    from lineage_ledger import ProcessCapture, TaskRun, utcnow
    capture = ProcessCapture(sys.argv[1], engine="test", spool=sys.argv[2], raise_errors=True)
    now = utcnow()
    capture.submit(TaskRun(task_id="t1", task_name="t", status="succeeded", started=now, ended=now))
    assert capture.close(timeout=60)
    print("closed", capture.failures)
""")


@pytest.mark.parametrize("module", ["json"])
def test_the_recording_process_imports_nothing_planted_where_the_workflow_runs(tmp_path, module):
    shared = tmp_path / "project"  # where the engine runs: a folder others may write
    shared.mkdir()
    marker = tmp_path / "planted-ran"
    (shared / f"{module}.py").write_text(
        f"import os\nopen({str(marker)!r}, 'a').write(str(os.getpid()) + '\\n')\n"
        "raise ImportError('planted')\n")
    script = tmp_path / "record.py"  # run from elsewhere: its own folder is sys.path[0], not the project's
    script.write_text(RECORD)
    url = f"sqlite:///{tmp_path}/ledger.db"
    result = subprocess.run([sys.executable, str(script), url, str(tmp_path / "spool")], cwd=shared,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not marker.exists(), f"{module}.py planted in the project ran in process(es) {marker.read_text().split()}"
    assert "cannot start the recording process" not in result.stderr, result.stderr[-3000:]
    assert result.stdout.split() == ["closed", "0"], result.stdout
    with open_ledger(url) as ledger:  # recorded by the child
        assert ledger.tree_head().size == 1
