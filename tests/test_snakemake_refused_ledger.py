"""The last words of a real ``snakemake`` run whose ledger refuses its records for good (a
PostgreSQL role that does not exist): the core says why ("the ledger refuses them for good
... no such role"), and the plugin's own closing line must not then guess another cause
("locked or unreachable?"), which sent users looking at the network."""

from __future__ import annotations

import pytest

from tests.support.snakemake import clean_env, require_snakemake, run

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ONE_JOB = 'rule a:\n    output: "a.txt"\n    shell: "echo a > {output}"\n'


def test_a_ledger_that_refuses_for_good_is_not_called_locked(postgres_url, tmp_path):
    require_snakemake()
    (tmp_path / "Snakefile").write_text(ONE_JOB)
    user_part, _, rest = postgres_url.partition("@")
    url = user_part.replace("ledger", "nosuchrole") + "@" + rest
    result = run("snakemake", "--cores", "1", "--logger", "ledger", "--logger-ledger-url", url, cwd=tmp_path,
                 env=clean_env())
    assert result.returncode == 0, result.stderr[-3000:]  # the workflow is not failed by its ledger
    assert (tmp_path / "a.txt").exists()
    assert "refuses them for good" in result.stderr and "no such role" in result.stderr, result.stderr[-3000:]
    assert "locked or unreachable" not in result.stderr, result.stderr[-3000:]
    assert "wait in the spool" in result.stderr or "stay in" in result.stderr
    assert "Traceback" not in result.stderr
