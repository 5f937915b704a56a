"""A ``warn`` run on a ledger that fails its own check must not vouch for what it could not check.

The shape, for Snakemake (``--logger-ledger-policy warn``) and ``nextflow-ledger`` (``-resume
--ledger-policy warn``): a workflow is recorded and audited (``verify-lineage``); a file it
reads is edited by hand with its size and mtime kept (the engine sees nothing) and every
``ll_artifacts`` row naming it deleted, so the ledger's pre-run check fails with
``IndexTampered``. The ``warn`` run logs that and runs the consumer again (forced: Snakemake's
``--forcerun``, Nextflow a changed parameter of the consumer's script). Its record must not
list the edited file with its current digest, nor what was made from it: a record naming
them would become the ledger's latest view of the file, and the next ``strict`` run would
pass the edit (before the fix, it did, for a source and for an intermediate file, in both
engines). The record names them in ``extra["not_verified"]`` (digests under
``not_verified_digests``) with ``check_failed``, as Airflow's and Parsl's do.

Under ``rerun`` (the last two tests) each file of the failed batch is checked again on its
own: only the edited source fails, so only its readers run again, and they read the same
edit, so their records leave it out the same way (before the fix every file of the batch
counted as changed, and the readers' records listed the edit: the next strict run passed it).

Each engine's first run and audit are made once for the module and put back, at the same path
with the same bytes, mtimes and remembered state, before each test (``tests/support/first_run.py``).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.support.first_run import FirstRun
from tests.support.tamper import delete_rows, tamper_keep_size_and_mtime

pytestmark = pytest.mark.slow


def recorded(db: Path) -> list[dict]:
    """Record bodies straight from the table: opening the ledger would audit it, and fail."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT body FROM ll_records ORDER BY seq").fetchall()
    return [json.loads(bytes(body) if not isinstance(body, str) else body) for (body,) in rows]


def assert_not_vouched(record: dict, read: list[Path], made: list[Path]) -> None:
    """``record`` lists neither the unverified files it read nor what it made, and says so."""
    from lineage_ledger import hash_file

    names = {str(p) for p in (*read, *made)}
    assert not names & set(record["inputs"]), record["inputs"]
    assert not names & set(record["outputs"]), record["outputs"]
    extra = record["extra"]
    assert extra["not_verified"] == sorted(names), extra
    assert "IndexTampered" in extra["check_failed"], extra
    digests = extra["not_verified_digests"]
    assert set(digests["inputs"]) == {str(p) for p in read}, digests
    assert set(digests["outputs"]) == {str(p) for p in made}, digests
    for path in read:  # what the task really read: the edit
        assert digests["inputs"][str(path)]["blake3"] == hash_file(str(path)).blake3



# -- Snakemake ----------------------------------------------------------------------------------

SNAKEFILE = """
rule all:
    input: "c.txt", "e.txt"

rule d:
    output: "d.txt"
    shell: "echo made > {output}"

rule e:
    input: "d.txt"
    output: "e.txt"
    shell: "cat {input} > {output}"

rule b:
    input: "src.txt"
    output: "b.txt"
    shell: "cat {input} {input} > {output}"

rule c:
    input: "b.txt"
    output: "c.txt"
    shell: "cat {input} > {output}; echo done >> {output}"
"""


def _snakemake(tmp_path: Path, *args: str):
    from tests.support.snakemake import run

    return run("snakemake", "--cores", "1", "--logger", "ledger", *args, cwd=tmp_path)


def _snakemake_recorded_and_audited(tmp_path: Path) -> None:
    from tests.support.snakemake import run as snakemake_run

    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    (tmp_path / "src.txt").write_text("some text 1\n")
    first = _snakemake(tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    audit = snakemake_run("verify-lineage", "c.txt", cwd=tmp_path)
    assert audit.returncode == 0, audit.stdout + audit.stderr


@pytest.fixture(scope="module")
def snakemake_first(tmp_path_factory) -> FirstRun:
    from tests.support.snakemake import require_snakemake

    require_snakemake()
    return FirstRun(tmp_path_factory.mktemp("snakemake"), _snakemake_recorded_and_audited)


@pytest.fixture
def snakemake_audited(snakemake_first, monkeypatch) -> Path:
    """The Snakemake project, recorded and audited, in its first run's state."""
    return snakemake_first.put_back(monkeypatch)


def _by_rule(db: Path, run_id: str) -> dict[str, dict]:
    return {r["task_name"]: r for r in recorded(db) if r["run_id"] == run_id}


def test_snakemake_warn_on_a_hidden_edit_of_a_source_does_not_vouch_for_it(snakemake_audited):
    here = snakemake_audited  # where the first run and audit were made, put back as they left it
    db = here / ".lineage" / "ledger.db"
    src, b, c = here / "src.txt", here / "b.txt", here / "c.txt"
    tamper_keep_size_and_mtime(src)
    delete_rows(db, src)
    warned = _snakemake(here, "--logger-ledger-policy", "warn", "--forcerun", "b",
                        "--logger-ledger-run-id", "warned")
    assert warned.returncode == 0, warned.stderr[-3000:]
    assert "IndexTampered" in warned.stderr, warned.stderr[-3000:]
    rules = _by_rule(db, "warned")
    assert rules["b"]["status"] == "succeeded" and rules["c"]["status"] == "succeeded", rules
    # Before the fix b's record listed src.txt with the edit's digest (and b.txt as its output).
    assert_not_vouched(rules["b"], [src], [b])
    assert_not_vouched(rules["c"], [b], [c])  # built on what was made from the edit
    c_before = c.stat().st_mtime_ns
    strict = _snakemake(here, "--logger-ledger-policy", "strict", "--forcerun", "b")
    # Before the fix the strict run passed the edit: the warn run's record vouched for it.
    assert strict.returncode == 1, strict.stderr[-3000:]
    assert "refusing to run" in strict.stderr and "IndexTampered" in strict.stderr, strict.stderr[-3000:]
    assert c.stat().st_mtime_ns == c_before


def test_snakemake_warn_on_a_hidden_edit_of_an_intermediate_does_not_vouch_for_it(snakemake_audited):
    here = snakemake_audited  # where the first run and audit were made, put back as they left it
    db = here / ".lineage" / "ledger.db"
    b, c = here / "b.txt", here / "c.txt"
    tamper_keep_size_and_mtime(b)
    delete_rows(db, b)
    warned = _snakemake(here, "--logger-ledger-policy", "warn", "--forcerun", "c",
                        "--logger-ledger-run-id", "warned")
    assert warned.returncode == 0, warned.stderr[-3000:]
    assert "IndexTampered" in warned.stderr, warned.stderr[-3000:]
    rules = _by_rule(db, "warned")
    assert "b" not in rules and rules["c"]["status"] == "succeeded", rules
    assert_not_vouched(rules["c"], [b], [c])
    strict = _snakemake(here, "--logger-ledger-policy", "strict", "--forcerun", "c")
    assert strict.returncode == 1, strict.stderr[-3000:]
    assert "refusing to run" in strict.stderr and "IndexTampered" in strict.stderr, strict.stderr[-3000:]


def test_snakemake_warn_vouches_for_what_it_made_afresh_from_verified_files(snakemake_audited):
    """A file the failed check could not vouch for, rewritten in the run by a job that read
    nothing unverified (d: no inputs), is that job's product: its reader (e) lists it."""
    here = snakemake_audited  # where the first run and audit were made, put back as they left it
    db = here / ".lineage" / "ledger.db"
    src, d, e = here / "src.txt", here / "d.txt", here / "e.txt"
    tamper_keep_size_and_mtime(src)
    delete_rows(db, src)
    warned = _snakemake(here, "--logger-ledger-policy", "warn", "--forcerun", "d",
                        "--logger-ledger-run-id", "warned")
    assert warned.returncode == 0 and "IndexTampered" in warned.stderr, warned.stderr[-3000:]
    rules = _by_rule(db, "warned")
    assert set(rules) >= {"d", "e"} and "b" not in rules, rules
    assert str(d) in rules["d"]["outputs"] and "not_verified" not in rules["d"]["extra"], rules["d"]
    assert str(d) in rules["e"]["inputs"] and str(e) in rules["e"]["outputs"], rules["e"]
    assert "not_verified" not in rules["e"]["extra"], rules["e"]


# -- Nextflow -----------------------------------------------------------------------------------

PIPELINE = """
params.a = 1
params.b = 1
process P {
  input:
  path src
  output:
  path 'p.txt'
  script:
  \"\"\"
  cat ${src} > p.txt
  echo ${params.a} >> p.txt
  \"\"\"
}
process Q {
  publishDir 'results', mode: 'copy'
  input:
  path p
  output:
  path 'q.txt'
  script:
  \"\"\"
  cat ${p} > q.txt
  echo ${params.b} >> q.txt
  \"\"\"
}
workflow {
  P(channel.fromPath("${projectDir}/src.txt")) | Q
}
"""


def _nextflow_recorded_and_audited(tmp_path: Path) -> None:
    from tests.support import nextflow as nf

    (tmp_path / "main.nf").write_text(PIPELINE)
    (tmp_path / "src.txt").write_text("some text 1\n")
    first = nf.run("nextflow-ledger", "run", "main.nf", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    q = next(p for p in (tmp_path / "work").glob("*/*/q.txt") if not p.is_symlink())
    audit = nf.run("verify-lineage", str(q), cwd=tmp_path)
    assert audit.returncode == 0, audit.stdout + audit.stderr


@pytest.fixture(scope="module")
def nextflow_first(tmp_path_factory) -> FirstRun:
    from tests.support import nextflow as nf

    nf.require_nextflow()
    return FirstRun(tmp_path_factory.mktemp("nextflow"), _nextflow_recorded_and_audited)


@pytest.fixture
def nextflow_audited(nextflow_first, monkeypatch) -> Path:
    """The Nextflow project (its NXF_HOME inside), recorded and audited, in its first run's state."""
    return nextflow_first.put_back(monkeypatch)


def _made(tmp_path: Path, name: str, seen: int) -> list[dict]:
    """The records of ``name`` after the first ``seen``."""
    return [r for r in recorded(tmp_path / ".lineage" / "ledger.db")[seen:] if r["task_name"] == name]


def _output(record: dict, name: str) -> Path:
    (path,) = [Path(p) for p in record["extra"]["not_verified"] if p.endswith(name)]
    return path


def _with_stdout(made: Path) -> list[Path]:
    """A task's file and its ``.command.out`` (its ``stdout``, an output of every task)."""
    return [made, made.parent / ".command.out"]


def test_nextflow_warn_resume_on_a_hidden_edit_of_a_source_does_not_vouch_for_it(nextflow_audited):
    from tests.support import nextflow as nf

    here = nextflow_audited  # where the first run and audit were made, put back as they left it
    db = here / ".lineage" / "ledger.db"
    seen = len(recorded(db))
    src = here / "src.txt"
    tamper_keep_size_and_mtime(src)
    delete_rows(db, src)
    # A new params.a changes P's script: Nextflow runs P (and Q, its input changed) again.
    warned = nf.run("nextflow-ledger", "run", "main.nf", "-resume", "--ledger-policy", "warn", "--a", "2",
                    cwd=here)
    assert warned.returncode == 0, warned.stdout + warned.stderr
    assert "IndexTampered" in warned.stderr and "Submitted process > P" in warned.stdout, warned.stdout + warned.stderr
    (p_run,), (q_run,) = _made(here, "P", seen), _made(here, "Q", seen)
    # Before the fix P's record listed src.txt with the edit's digest.
    p_txt = _output(p_run, "p.txt")
    assert_not_vouched(p_run, [src], _with_stdout(p_txt))
    q_txt = _output(q_run, "q.txt")
    assert_not_vouched(q_run, [p_txt], _with_stdout(q_txt))
    (published,) = _made(here, "Q:publish", seen)  # the copy in results/ is made from it too
    assert_not_vouched(published, [q_txt], [here / "results" / "q.txt"])
    strict = nf.run("nextflow-ledger", "run", "main.nf", "-resume", "--ledger-policy", "strict", "--a", "2",
                    cwd=here)
    # Before the fix the strict -resume passed the edit and reused P.
    assert strict.returncode == 1, strict.stdout + strict.stderr
    assert "refusing to run" in strict.stderr and "IndexTampered" in strict.stderr, strict.stderr


def test_nextflow_warn_resume_on_a_hidden_edit_of_an_intermediate_does_not_vouch_for_it(nextflow_audited):
    from tests.support import nextflow as nf

    here = nextflow_audited  # where the first run and audit were made, put back as they left it
    db = here / ".lineage" / "ledger.db"
    seen = len(recorded(db))
    p_txt = next(p for p in (here / "work").glob("*/*/p.txt") if not p.is_symlink())
    tamper_keep_size_and_mtime(p_txt)
    delete_rows(db, p_txt)
    # A new params.b changes Q's script only: P is reused, Q runs again on the edited p.txt.
    warned = nf.run("nextflow-ledger", "run", "main.nf", "-resume", "--ledger-policy", "warn", "--b", "2",
                    cwd=here)
    assert warned.returncode == 0, warned.stdout + warned.stderr
    assert "IndexTampered" in warned.stderr and "Cached process > P" in warned.stdout, warned.stdout + warned.stderr
    assert not _made(here, "P", seen)
    (q_run,) = _made(here, "Q", seen)
    assert_not_vouched(q_run, [p_txt], _with_stdout(_output(q_run, "q.txt")))
    strict = nf.run("nextflow-ledger", "run", "main.nf", "-resume", "--ledger-policy", "strict", "--b", "2",
                    cwd=here)
    assert strict.returncode == 1, strict.stdout + strict.stderr
    assert "refusing to run" in strict.stderr and "IndexTampered" in strict.stderr, strict.stderr


# -- rerun: a source whose own check fails is read again, but not vouched for ----------------------

def test_snakemake_rerun_on_a_hidden_edit_of_a_source_leaves_the_next_strict_run_refusing(snakemake_audited):
    """Under rerun the ledger's failed check makes the jobs that read a source run again, but
    they read the same edit: their records, listing it, make the next strict run pass it."""
    here = snakemake_audited  # where the first run and audit were made, put back as they left it
    db = here / ".lineage" / "ledger.db"
    src = here / "src.txt"
    tamper_keep_size_and_mtime(src)
    delete_rows(db, src)
    src, b, c = here / "src.txt", here / "b.txt", here / "c.txt"
    rerun = _snakemake(here, "--logger-ledger-policy", "rerun", "--logger-ledger-run-id", "rerun")
    assert rerun.returncode == 0 and "IndexTampered" in rerun.stderr, rerun.stderr[-3000:]
    rules = _by_rule(db, "rerun")
    # Each file checked on its own: only src.txt fails its check, so only its readers run again
    # (before, every file of the batch counted as changed: d and e ran again too).
    assert set(rules) - {"all"} == {"b", "c"}, rules
    assert_not_vouched(rules["b"], [src], [b])  # before the fix: src.txt listed with the edit's digest
    assert_not_vouched(rules["c"], [b], [c])
    assert rules["b"]["extra"]["policy"] == "rerun", rules["b"]["extra"]
    strict = _snakemake(here, "--logger-ledger-policy", "strict", "--forcerun", "b")
    assert strict.returncode == 1, strict.stderr[-3000:]
    assert "refusing to run" in strict.stderr and "IndexTampered" in strict.stderr, strict.stderr[-3000:]


def test_nextflow_rerun_resume_on_a_hidden_edit_of_a_source_leaves_the_next_strict_resume_refusing(nextflow_audited):
    from tests.support import nextflow as nf

    here = nextflow_audited  # where the first run and audit were made, put back as they left it
    db = here / ".lineage" / "ledger.db"
    seen = len(recorded(db))
    src = here / "src.txt"
    tamper_keep_size_and_mtime(src)
    delete_rows(db, src)
    rerun = nf.run("nextflow-ledger", "run", "main.nf", "-resume", "--ledger-policy", "rerun", cwd=here)
    assert rerun.returncode == 0 and "Submitted process > P" in rerun.stdout, rerun.stdout + rerun.stderr
    assert "IndexTampered" in rerun.stderr, rerun.stderr
    (p_run,), (q_run,) = _made(here, "P", seen), _made(here, "Q", seen)
    p_txt = _output(p_run, "p.txt")
    assert_not_vouched(p_run, [src], _with_stdout(p_txt))  # before the fix: src.txt listed with the edit's digest
    assert p_run["extra"]["policy"] == "rerun", p_run["extra"]
    q_txt = _output(q_run, "q.txt")
    assert_not_vouched(q_run, [p_txt], _with_stdout(q_txt))
    (published,) = _made(here, "Q:publish", seen)
    assert_not_vouched(published, [q_txt], [here / "results" / "q.txt"])
    strict = nf.run("nextflow-ledger", "run", "main.nf", "-resume", "--ledger-policy", "strict", cwd=here)
    assert strict.returncode == 1, strict.stdout + strict.stderr
    assert "refusing to run" in strict.stderr and "IndexTampered" in strict.stderr, strict.stderr
