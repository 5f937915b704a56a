"""A ``protected()`` output under ``--logger-ledger-policy rerun``, through the real ``snakemake``
run as a user who cannot write it (root without its power to ignore file modes: ``setpriv``).

Root ignores the write-protection, so ``rerun`` simply ran the producer again; a user cannot, and
Snakemake refuses a job whose output is write-protected. The run must then stop without running
anything on the edited file, and nothing may come to vouch for the edit.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from lineage_ledger import open_ledger
from tests.support.snakemake import BIN, clean_env, require_snakemake, run

pytestmark = pytest.mark.slow

PROTECTED = textwrap.dedent('''\
    rule all:
        input: "final.txt"

    rule make:
        input: "in.txt"
        output: protected("p.txt")
        shell: "tr a-z A-Z < {input} > {output}"

    rule use:
        input: "p.txt"
        output: "final.txt"
        shell: "cat {input} > {output}"
    ''')
AS_A_USER = ("setpriv", "--bounding-set=-dac_override,-dac_read_search", "--")


def as_a_user(*args: str, cwd: Path):
    import subprocess

    prefix = AS_A_USER if os.geteuid() == 0 else ()
    return subprocess.run([*prefix, str(BIN / "snakemake"), "--cores", "1", "--logger", "ledger", *args],
                          cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=180)


def test_rerun_of_a_protected_output_the_user_cannot_write_runs_nothing_and_vouches_for_nothing(tmp_path):
    require_snakemake()
    (tmp_path / "in.txt").write_text("abc\n")
    (tmp_path / "Snakefile").write_text(PROTECTED)
    first = as_a_user("--logger-ledger-run-id", "first", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    protected = tmp_path / "p.txt"
    assert not os.access(protected, os.W_OK) or os.geteuid() == 0
    # Edited by hand (made writable, edited, protected again, its mtime put back).
    times = protected.stat()
    protected.chmod(0o644)
    protected.write_text("ABC\nEDITED\n")
    protected.chmod(0o444)
    os.utime(protected, ns=(times.st_atime_ns, times.st_mtime_ns))

    rerun = as_a_user("--logger-ledger-policy", "rerun", "--logger-ledger-run-id", "rerun", cwd=tmp_path)
    assert rerun.returncode == 1, rerun.stderr[-3000:]
    assert "p.txt" in rerun.stderr and "protected" in rerun.stderr.lower()
    assert protected.read_text() == "ABC\nEDITED\n"  # left as it was, for the user to look at
    with open_ledger(str(tmp_path / ".lineage" / "ledger.db")) as ledger:
        assert list(ledger.run("rerun")) == []  # no job ran
    verified = run("verify-lineage", "final.txt", cwd=tmp_path)
    assert verified.returncode == 1, verified.stdout[-3000:]
    strict = as_a_user("--logger-ledger-policy", "strict", cwd=tmp_path)
    assert strict.returncode == 1 and "p.txt" in strict.stderr, strict.stderr[-3000:]
