"""``--quiet progress`` (``-q``) with ``--batch``, through the real ``snakemake``.

With progress quieted Snakemake reports no finished job to logger plugins; the plugin records
the jobs that started from Snakemake's metadata at the end of the run. Snakemake keeps that
metadata in a cache of its own: under ``--batch`` the cache still held "no metadata" for the
last job's output, read while the DAG was built, and that job was never recorded.
"""

from __future__ import annotations

import textwrap

import pytest

from lineage_ledger import open_ledger
from tests.support.snakemake import require_snakemake, run

pytestmark = pytest.mark.slow

BATCHED = textwrap.dedent('''\
    rule all:
        input: "agg.txt"

    rule one:
        input: "src/{s}.txt"
        output: "one/{s}.txt"
        shell: "tr a-z A-Z < {input} > {output}"

    rule agg:
        input: expand("one/{s}.txt", s=["a", "b", "c", "d"])
        output: "agg.txt"
        shell: "cat {input} > {output}"
    ''')


def test_every_job_of_a_quiet_batch_is_recorded(tmp_path):
    require_snakemake()
    (tmp_path / "src").mkdir()
    for sample in "abcd":
        (tmp_path / "src" / f"{sample}.txt").write_text(f"{sample}\n")
    (tmp_path / "Snakefile").write_text(BATCHED)
    result = run("snakemake", "--cores", "1", "--batch", "agg=1/2", "-q", "--logger", "ledger",
                 "--logger-ledger-run-id", "batch1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    with open_ledger(str(tmp_path / ".lineage" / "ledger.db")) as ledger:
        made = sorted(next(iter(e.record.outputs)) for e in ledger.run("batch1"))
    assert made == [str(tmp_path / "one" / "a.txt"), str(tmp_path / "one" / "b.txt")]
