"""One task recorded through the command line, as a user records a step: the smallest ledger
that read commands, exports and ``-o`` checks have something to work on."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_cli

__all__ = ["one_task_recorded"]


def one_task_recorded(base: Path) -> dict[str, str]:
    """``lineage-ledger run -i in.txt -o out.txt -- sh -c 'cat in.txt > out.txt'`` in ``base``,
    into the SQLite ledger ``base/ledger.db``; returns the environment that names that ledger
    (``LINEAGE_LEDGER_URL``), for the commands run after it."""
    env = {"LINEAGE_LEDGER_URL": f"sqlite:///{base}/ledger.db"}
    (base / "in.txt").write_text("input\n")
    run_cli("run", "-i", "in.txt", "-o", "out.txt", "--", "sh", "-c", "cat in.txt > out.txt",
            cwd=base, env=env, check_rc=0)
    return env
