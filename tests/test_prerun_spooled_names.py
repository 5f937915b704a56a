"""The pre-run check against records still waiting in the spool, for names JSON writes in
more than one way: non-ASCII letters, a quote, a backslash. A line of the spool that names
none of the files asked of is not decoded (``waiting_digests``), so the way a name is looked
for in the raw line must never miss one: the file edited after its task wrote it, while the
ledger is locked and the record waits, is MODIFIED through the plugins' API."""

from __future__ import annotations

from pathlib import Path

import pytest

from lineage_ledger import verify_before_run
from tests.conftest import run_cli
from tests.support.faults import hold_write_lock

#: The ledger is locked throughout: waiting the default 2 s for it to take each record only
#: delays the spooling these tests start from.
QUICK = ("--ship-wait", "0.1")
NAMES = ["café-ü.txt", 'q"uote.txt', "back\\slash.txt", "plain.txt"]


@pytest.mark.parametrize("name", NAMES)
def test_a_file_edited_while_its_record_waits_is_modified(tmp_path: Path, name: str, monkeypatch) -> None:
    run_cli("run", "--", "true", cwd=tmp_path, check_rc=0)  # the ledger exists
    monkeypatch.setenv("LINEAGE_SPOOL", str(tmp_path / ".lineage" / "spool"))  # this process's cwd is elsewhere
    url = f"sqlite:///{tmp_path / '.lineage' / 'ledger.db'}"
    out = tmp_path / name
    holder = hold_write_lock(tmp_path / ".lineage" / "ledger.db")
    try:
        # Another task first, so that the spool holds a line naming something else too.
        run_cli("run", *QUICK, "-o", "other.txt", "--", "sh", "-c", "echo other > other.txt", cwd=tmp_path)
        # cp: no quote in the command line, so that the line holds a backslash only where the name does.
        (tmp_path / "made.txt").write_text("made\n")
        done = run_cli("run", *QUICK, "-o", name, "--", "cp", "made.txt", name, cwd=tmp_path)
        assert "spool" in done.stderr, done.stderr
        assert verify_before_run(url, [str(out)], "warn") == []  # as its waiting record wrote it
        out.write_text("edited by hand\n")
        found = verify_before_run(url, [str(out)], "warn")
        assert [(c.path, c.status.value) for c in found] == [(str(out), "MODIFIED")]
        with pytest.raises(Exception, match="refusing to run") as refused:
            verify_before_run(url, [str(out)], "strict")
        assert "waits in the spool" in str(refused.value)
    finally:
        holder.communicate("")
