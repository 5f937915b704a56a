"""nextflow-ledger where a name it is given is not UTF-8 (on Linux a name is bytes: ``$'wd-\\xff'``).

A task's files are named in the ledger by their paths, as text. Nextflow, a Java program,
reads every name as text too: in a launch directory whose name is not UTF-8 it wrote the
run's ``work/`` and ``results/`` under a directory of another name beside it (``wd-\\ufffd``),
appended to the previous run's log instead of starting one (so the wrapper, which skips the
previous run's log, recorded nothing of a second run, and said "recorded 0 task try(s)");
with the default ledger there the wrapper started Nextflow, then killed it and refused
("exit 2", the name shown ``\\udcff``). A ``-log`` name that is not UTF-8 was written under
another name, and the wrapper, following the name given, recorded nothing and said nothing.
Now it says once, before Nextflow starts, that nothing of the run can be recorded and why,
and Nextflow runs as it would without it; ``--ledger-policy strict`` refuses to start. A
ledger given at a path that is not UTF-8 is refused (exit 2) before Nextflow starts.

Real ``nextflow-ledger`` runs (tests/support/nextflow.py).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support import nextflow as nf

pytestmark = pytest.mark.slow

BYTE = "\udcff"  # the byte 0xff, as Python reads it from the OS (surrogateescape)
SAID = "nothing of this run can be recorded"
PIPELINE = """
params.outdir = 'results'
process MAKE {
  publishDir params.outdir, mode: 'copy'
  output: path 'made.txt'
  script: "echo made > made.txt"
}
workflow { MAKE() }
"""


def _run(cwd: Path, home: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """``nextflow-ledger ARGS`` in ``cwd``; Nextflow's home under ``home`` (a UTF-8 path: Java
    would not find one that is not)."""
    return subprocess.run([str(nf.BIN / "nextflow-ledger"), *args], cwd=cwd, env=nf.env(home, **extra),
                          capture_output=True, text=True, errors="surrogateescape", timeout=300)


def _pipeline(tmp_path: Path) -> Path:
    nf.require_nextflow()
    folder = tmp_path / "pipeline"
    folder.mkdir()
    (folder / "main.nf").write_text(PIPELINE)
    return folder / "main.nf"


def _no_ledger(tmp_path: Path, url: str) -> None:
    shown = subprocess.run([str(nf.BIN / "lineage-ledger"), "log", "--ledger", url], cwd=tmp_path, env=nf.env(tmp_path),
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 2 and "no ledger" in shown.stderr.lower(), shown.stdout + shown.stderr


def test_a_run_from_a_directory_that_is_not_utf8_says_once_that_nothing_is_recorded(tmp_path):
    """First with the default ledger (there: the wrapper once started Nextflow, killed it and
    refused), then again with a ledger elsewhere: Nextflow appends to its log there, which once
    lost the second run's records. (Two runs; each ledger was a run of its own, twice.)"""
    main = _pipeline(tmp_path)
    here = tmp_path / ("wd-" + BYTE)
    here.mkdir()
    elsewhere = str(tmp_path / "ledger.db")
    for extra in ({}, {"LINEAGE_LEDGER_URL": elsewhere}):
        done = _run(here, tmp_path, "run", str(main), **extra)
        assert done.returncode == 0, done.stdout + done.stderr  # the pipeline runs
        assert "Submitted process > MAKE" in done.stdout, done.stdout
        assert done.stderr.count(SAID) == 1, done.stderr
        assert "wd-\\xff" in done.stderr and "\\udcff" not in done.stderr, done.stderr  # named, escaped
        assert "task try(s)" not in done.stderr, done.stderr  # no summary of records: none was made
    assert not (here / ".lineage").exists()  # no spool, list or ledger made there
    _no_ledger(tmp_path, elsewhere)


def test_strict_refuses_to_start_from_a_directory_that_is_not_utf8(tmp_path):
    main = _pipeline(tmp_path)
    here = tmp_path / ("wd-" + BYTE)
    here.mkdir()
    done = _run(here, tmp_path, "run", str(main), "--ledger-policy", "strict")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "refusing to run (--ledger-policy strict)" in done.stderr and SAID in done.stderr, done.stderr
    assert "Launching" not in done.stdout and not (here / ".nextflow.log").exists()  # Nextflow never started
    assert os.listdir(here) == []


def test_a_log_file_whose_name_is_not_utf8_is_said_once(tmp_path):
    main = _pipeline(tmp_path)
    here = tmp_path / "launch"
    here.mkdir()
    done = _run(here, tmp_path, "-log", "log-" + BYTE, "run", str(main), "--ledger", str(tmp_path / "ledger.db"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Submitted process > MAKE" in done.stdout, done.stdout
    assert done.stderr.count(SAID) == 1 and "log-\\xff" in done.stderr, done.stderr
    assert "recorded 0 task" not in done.stderr, done.stderr
    _no_ledger(tmp_path, str(tmp_path / "ledger.db"))
    strict = _run(here, tmp_path, "-log", "log-" + BYTE, "run", str(main), "--ledger-policy", "strict")
    assert strict.returncode == 1 and SAID in strict.stderr and "Launching" not in strict.stdout, strict.stderr


def test_a_ledger_whose_path_is_not_utf8_is_refused_before_nextflow_starts(tmp_path):
    main = _pipeline(tmp_path)
    here = tmp_path / "launch"
    here.mkdir()
    elsewhere = tmp_path / ("l" + BYTE)
    elsewhere.mkdir()
    done = _run(here, tmp_path, "run", str(main), "--ledger", f"{elsewhere}/l.db")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "refusing to run" in done.stderr and "l\\xff" in done.stderr and "\\udcff" not in done.stderr, done.stderr
    assert "Launching" not in done.stdout and os.listdir(here) == [] and os.listdir(elsewhere) == []


def test_a_work_directory_and_a_publish_dir_not_utf8_are_recorded_where_nextflow_puts_them(tmp_path):
    """Nextflow reads ``-w`` and a ``publishDir`` as text and makes directories of another name
    (``\\ufffd`` for the byte): the records name the files where they are, nothing is lost,
    and the parameter is kept escaped (``res-\\xff``)."""
    main = _pipeline(tmp_path)
    here = tmp_path / "launch"
    here.mkdir()
    done = _run(here, tmp_path, "run", str(main), "-w", "work-" + BYTE, "--outdir", "res-" + BYTE)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "recorded 1 task try(s) and 1 publication(s)" in done.stderr, done.stderr
    assert SAID not in done.stderr
    listed = subprocess.run([str(nf.BIN / "lineage-ledger"), "log", "-n", "0", "--json"], cwd=here,
                            env=nf.env(tmp_path), capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    by_name = {r["task_name"]: r for r in map(json.loads, listed.stdout.splitlines())}
    assert by_name["MAKE"]["parameters"]["params"] == {"outdir": "res-\\xff"}
    for record in by_name.values():
        for path in record["outputs"]:
            assert Path(path).is_file(), path  # where Nextflow put it
    (published,) = by_name["MAKE:publish"]["outputs"]
    assert Path(published).read_text() == "made\n"
    verified = subprocess.run([str(nf.BIN / "verify-lineage"), published], cwd=here, env=nf.env(tmp_path),
                              capture_output=True, text=True, timeout=120)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_ledger_url_that_is_not_utf8_is_refused_without_showing_it(tmp_path, monkeypatch, capsys):
    """Any other URL is refused before Nextflow starts too, and not shown: it may hold a password."""
    from lineage_ledger_nextflow import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LINEAGE_NEXTFLOW", str(tmp_path / "no-nextflow-here"))  # never started
    status = cli.run(["run", "main.nf", "--ledger", "postgresql://me:s3cret@localhost/d" + BYTE])
    err = capsys.readouterr().err
    assert status == 2 and "ledger URL" in err and "not valid UTF-8" in err, err
    assert "s3cret" not in err and os.listdir(tmp_path) == []


ODD_PIPELINE = r'''
process MAKE {
  output: path 'good.txt'
  script:
  """
  echo good > good.txt
  printf odd > "\$(printf 'odd-\\xff.txt')"
  mkdir -p outdir && echo kept > outdir/kept.txt && printf bad > "outdir/\$(printf 'bad-\\xff')"
  """
}
process USE {
  input: path g
  output: path 'used.txt'
  script: "cat $g > used.txt"
}
workflow { USE(MAKE()) }
'''


def test_a_file_a_task_wrote_whose_name_is_not_utf8_is_left_out_of_its_record_and_said(tmp_path):
    """The task's other files are recorded (the lineage goes on through it), the names that
    cannot be are said and kept in the record (escaped), and a strict ``-resume`` reuses the
    task: they are not taken for files slipped in."""
    nf.require_nextflow()
    here = tmp_path / "launch"
    here.mkdir()
    (here / "main.nf").write_text(ODD_PIPELINE)
    done = _run(here, tmp_path, "run", "main.nf")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "could NOT be made" not in done.stderr and "could not record" not in done.stderr, done.stderr
    assert "odd-\\xff.txt" in done.stderr and "not valid UTF-8" in done.stderr, done.stderr
    by_name = {r["task_name"]: r for r in nf.records(here)}
    make = by_name["MAKE"]
    written = {os.path.relpath(p, make["extra"]["workdir"]) for p in make["outputs"]}
    assert {"good.txt", "outdir/kept.txt"} <= written and not any("\\x" in p or "odd" in p for p in written)
    named = {os.path.relpath(p, make["extra"]["workdir"]) for p in make["extra"]["not_utf8"]}
    assert named == {"odd-\\xff.txt", "outdir/bad-\\xff"}, make["extra"]  # escaped (\\xNN) by the core
    assert set(by_name["USE"]["inputs"]) & set(make["outputs"])  # the lineage goes on through MAKE
    resumed = _run(here, tmp_path, "run", "main.nf", "-resume", "--ledger-policy", "strict")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Cached process > MAKE" in resumed.stdout, resumed.stdout
