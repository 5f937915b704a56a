"""A record that reaches the ledger late, after a later task's record, does not pose as the
newest: the half of "which record saw a file last" that ledger order gets wrong.

Host A runs ``lineage-ledger run`` writing ``out.txt`` (v1) while the ledger will not take
the record (an SQLite file A may not write; a PostgreSQL server that is down): the record
waits in A's own spool. Host B (its own spool) writes ``out.txt`` again (v2) a moment later
and its record lands first. Then A ships its spool: the older task's record is the newer in
ledger order. ``verify-lineage out.txt`` must compare the file with B's version: v2 verifies,
v1 put back is MODIFIED. Both clocks are right here.

This passes as shipped (the tasks' end times decide); it is kept beside
``tests/test_time_order_skew.py``, where end times get it wrong, because the two together
show that neither order alone is right: a fix for the skewed clocks that orders records by
their place in the ledger fails this test, on either back-end. Real processes, a real
SQLite file and a PostgreSQL server of the test's own, shut down and started again.

About 15 s (the PostgreSQL case starts its own server).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.support.faults import hold_write_lock
from tests.support.postgres import crash, own_server, restart


def _host(base: Path, url: str, name: str) -> dict[str, str]:
    """The environment of one host: the shared ledger, a spool and a trusted state of its own."""
    return {"LINEAGE_LEDGER_URL": url, "LINEAGE_SPOOL": str(base / f"spool-{name}"),
            "LINEAGE_STATE_DIR": str(base / f"state-{name}")}


def _write(base: Path, env: dict[str, str], text: str):
    return run_cli("run", "-o", "out.txt", "--ship-wait", "2", "--", "sh", "-c", f"printf '{text}' > out.txt",
                   cwd=base, env=env)


def _verdicts(base: Path, url: str) -> tuple[int, int]:
    """``verify-lineage out.txt`` of the file as host B left it, and put back to A's version."""
    env = _host(base, url, "checker")
    current = run_cli("verify", "out.txt", cwd=base, env=env)
    (base / "out.txt").write_text("v1\n")
    restored = run_cli("verify", "out.txt", cwd=base, env=env)
    assert "out.txt" in current.stdout and "out.txt" in restored.stdout, (current, restored)
    return current.returncode, restored.returncode


def _recorded_id(result) -> str:
    """The record id ``run`` names on standard error (``recorded ID (succeeded)``)."""
    found = re.search(r"recorded ([0-9a-f]{12}) ", result.stderr)
    assert found, result.stderr
    return found.group(1)


def _out_txt_in_ledger_order(base: Path, url: str) -> list[str]:
    """The ids of the records that wrote ``out.txt``, in ledger order (``log``: oldest first)."""
    listed = run_cli("log", cwd=base, env=_host(base, url, "checker"), check_rc=0).stdout
    return [line.split()[0] for line in listed.splitlines() if line.endswith("-> out.txt")]


def _late_and_checked(base: Path, url: str, first) -> tuple[int, int]:
    """After host A's ``run`` (``first``) left its record in A's spool: host B writes v2, then
    A ships; the records landed B's first. The verdicts of :func:`_verdicts`."""
    assert "spool ship" in first.stderr and (base / "out.txt").read_text() == "v1\n", first.stderr
    second = _write(base, _host(base, url, "b"), "v2\n")
    assert second.returncode == 0, second.stderr
    shipped = run_cli("spool", "ship", cwd=base, env=_host(base, url, "a"))
    assert shipped.returncode == 0 and "shipped 1 record" in shipped.stderr, shipped.stderr
    assert _out_txt_in_ledger_order(base, url) == [_recorded_id(second), _recorded_id(first)]
    return _verdicts(base, url)


def test_sqlite_a_record_shipped_late_is_not_taken_for_the_newest(tmp_path):
    url = f"sqlite:///{tmp_path}/ledger.db"
    (tmp_path / "seed.txt").write_text("seed\n")
    run_cli("adopt", "seed.txt", cwd=tmp_path, env=_host(tmp_path, url, "b"), check_rc=0)
    holder = hold_write_lock(tmp_path / "ledger.db")  # the ledger takes no record from A now
    try:
        first = _write(tmp_path, _host(tmp_path, url, "a"), "v1\n")
    finally:
        holder.communicate("")
    assert first.returncode == 0, first.stderr
    assert _late_and_checked(tmp_path, url, first) == (0, 1)


@pytest.mark.postgres
@pytest.mark.slow
def test_postgresql_a_record_shipped_late_is_not_taken_for_the_newest(tmp_path):
    with own_server() as server:
        url = server.create_database()
        (tmp_path / "seed.txt").write_text("seed\n")
        run_cli("adopt", "seed.txt", cwd=tmp_path, env=_host(tmp_path, url, "b"), check_rc=0)
        crash(server, how="fast")  # down while host A runs its task
        try:
            first = _write(tmp_path, _host(tmp_path, url, "a"), "v1\n")
        finally:
            restart(server)
        assert first.returncode == 0, first.stderr
        assert _late_and_checked(tmp_path, url, first) == (0, 1)
