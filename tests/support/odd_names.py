"""A ledger made the way users make one, for the export-standard tests: a real Snakemake run
and a ``lineage-ledger run`` step, over files whose names hold spaces, non-ASCII letters,
``#`` and ``%``, with a directory output, a task that fails, a task that fails once and is
retried, and an input read through a symbolic link. Every task is of run ``odd``.

The consumers (``prov``, ``rocrate``, openlineage-python) then read what ``export`` wrote.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

from tests.conftest import run_cli
from tests.support.snakemake import clean_env, require_snakemake, run

RUN = "odd"
SOURCE = "in put #1 50%.txt"
SORTED = "résumé café.txt"
DIRECTORY = "out dir"
RETRIED = "retry ok.txt"
# Two outputs whose names differ only in characters a crate's file name cannot keep as they are.
TWINS = ("twin a b.txt", "twin a#b.txt", "twin a%b.txt")
LINK = "link ü.txt"
FINAL = "final 100%#.txt"

SNAKEFILE = r'''
rule all:
    input: "out dir", "résumé café.txt", "retry ok.txt", "fail.txt", "twin a b.txt"

rule weird:
    input: "in put #1 50%.txt"
    output: "résumé café.txt"
    shell: "sort {input:q} > {output:q}"

rule twins:
    input: "in put #1 50%.txt"
    output: "twin a b.txt", "twin a#b.txt", "twin a%b.txt"
    shell: "echo one > 'twin a b.txt'; echo two > 'twin a#b.txt'; echo three > 'twin a%b.txt'"

rule dir:
    input: "résumé café.txt"
    output: directory("out dir")
    shell: "mkdir -p {output:q} && cp {input:q} {output:q}/a#b.txt && echo x > {output:q}/'c %20.txt'"

rule retry:
    input: "in put #1 50%.txt"
    output: "retry ok.txt"
    retries: 2
    params: label="x y"
    shell: "if [ ! -e .tried ]; then touch .tried; exit 1; fi; cat {input:q} > {output:q}"

rule fail:
    input: "résumé café.txt"
    output: "fail.txt"
    shell: "exit 4"
'''


def odd_workflow(where: Path) -> dict[str, str]:
    """Run the workflow in ``where`` (its ledger ``where/.lineage/ledger.db``); the environment
    for the CLI calls on it (a home of its own)."""
    require_snakemake()
    home = where / "home"
    home.mkdir(parents=True)
    env = {"HOME": str(home), "XDG_STATE_HOME": str(home / ".local" / "state"),
           "XDG_CACHE_HOME": str(home / ".cache")}
    (where / SOURCE).write_text("pear\napple\n", encoding="utf-8")
    (where / "Snakefile").write_text(SNAKEFILE, encoding="utf-8")
    done = run("snakemake", "--cores", "1", "--keep-going", "--logger", "ledger", "--logger-ledger-run-id", RUN,
               cwd=where, env=clean_env(**env))
    assert done.returncode == 1, done.stderr[-3000:]  # the rule 'fail' failed, as meant
    (where / LINK).symlink_to(SORTED)
    run_cli("run", "-i", LINK, "-o", FINAL, "-n", "cli step", "-p", "k=v w", "--run-id", RUN, "--",
            "sh", "-c", f"cat '{LINK}' > '{FINAL}'", cwd=where, env=env, check_rc=0)
    return env


def recorded(where: Path, env: dict[str, str]) -> list[dict]:
    """Every record of the ledger, as ``log --json`` gives them."""
    lines = run_cli("log", "--json", "-n", "0", cwd=where, env=env, check_rc=0).stdout.splitlines()
    return [json.loads(line) for line in lines]


def recorded_paths(records: list[dict]) -> set[str]:
    """The paths of every input and output the records name (aliases included)."""
    return {path for record in records for side in ("inputs", "outputs") for path in record[side]}


def tamper_one_record(db: Path) -> None:
    """Change one byte of a stored record's body (a failed record's status), as someone with
    write access to the ledger file could: the record no longer hashes to its id."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        for seq, body in conn.execute("SELECT seq, body FROM ll_records").fetchall():
            if b'"failed"' in bytes(body):
                altered = bytes(body).replace(b'"failed"', b'"FAILED"', 1)
                conn.execute("UPDATE ll_records SET body = ? WHERE seq = ?", (altered, seq))
                conn.commit()
                return
    raise AssertionError("no failed record to alter")
