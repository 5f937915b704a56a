"""The ledger's own order (``lineage_ledger._order``) through a real engine: a Snakemake run
whose pre-run check verified a record from a host whose clock is ahead records its own jobs
as later, so the file it rewrote is the one ``verify-lineage`` compares with. About 10 s."""

from __future__ import annotations

import json
from datetime import timedelta

from lineage_ledger import open_ledger, utcnow
from lineage_ledger._capture.files import entries_of
from lineage_ledger._files.hashing import hash_file
from lineage_ledger._model import Record
from lineage_ledger._order import AFTER_KEY
from tests.conftest import run_cli
from tests.support.snakemake import clean_env, require_snakemake, run

SNAKEFILE = 'rule b:\n    input: "a.txt"\n    output: "b.txt"\n    shell: "cat {input} > {output}"\n'


def test_a_strict_snakemake_run_after_a_fast_hosts_record_is_the_latest(tmp_path):
    require_snakemake()
    url = f"sqlite:///{tmp_path}/ledger.db"
    env = {"LINEAGE_LEDGER_URL": url, "LINEAGE_STATE_DIR": str(tmp_path / "state"),
           "LINEAGE_SPOOL": str(tmp_path / "spool")}
    # Another host, its clock ten minutes fast, wrote b.txt ("old") and recorded it.
    (tmp_path / "b.txt").write_text("old\n")
    fast = utcnow() + timedelta(minutes=10)
    with open_ledger(url, spool=str(tmp_path / "other-spool"), state_dir=str(tmp_path / "other-state")) as ledger:
        ledger.append_records([Record(
            engine="snakemake", run_id="other-host", task_id="b", task_name="b", status="succeeded", started=fast,
            ended=fast + timedelta(seconds=1), outputs=entries_of([hash_file(str(tmp_path / "b.txt"))])).stored()])
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    (tmp_path / "a.txt").write_text("new\n")  # a source the pre-run check looks up
    result = run("snakemake", "--cores", "1", "--logger", "ledger", "--logger-ledger-url", url,
                 "--logger-ledger-policy", "strict", "--forcerun", "b", cwd=tmp_path, env=clean_env(**env))
    assert result.returncode == 0, result.stderr[-3000:]
    shown = run_cli("log", "--json", "-n", "0", cwd=tmp_path, env=env, check_rc=0).stdout
    records = [json.loads(line) for line in shown.splitlines()]
    ours = [r for r in records if r.get("run_id") != "other-host" and r.get("task_name") == "b"]
    assert ours and AFTER_KEY in json.dumps(ours), records
    assert run_cli("verify", "b.txt", cwd=tmp_path, env=env).returncode == 0
    (tmp_path / "b.txt").write_text("old\n")  # the other host's version put back
    restored = run_cli("verify", "b.txt", cwd=tmp_path, env=env)
    assert restored.returncode == 1 and "MODIFIED" in restored.stdout, restored.stdout
