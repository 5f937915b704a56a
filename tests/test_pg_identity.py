"""A PostgreSQL ledger keeps its name (the key of its spool and of its trusted tree head) when
its URL gains, loses or changes a key that only tunes the connection (``connect_timeout``,
``ll_hang_timeout``, ``application_name``, keepalives, TLS settings): records a killed
process left in the spool land in the ledger, each once, when the ledger is next opened with
the other spelling. Keys that can change which store is reached stay in the name.

Before the fix the name was SQLAlchemy's rendering of the whole URL, so adding
``?connect_timeout=10`` moved the spool to another directory and stranded the records there.
A spool directory an earlier release wrote under that old name is still replayed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from lineage_ledger import open_ledger
from lineage_ledger.backends import open_backend
from lineage_ledger.backends._pg_reader import TUNING_KEYS, identity_of
from lineage_ledger.backends.sql import _engine_url
from tests.conftest import run_cli
from tests.support.factories import make_record
from tests.test_pg_hang import locked, wait_for_lock_waiter

pytestmark = [pytest.mark.postgres]

ROOT = Path(__file__).resolve().parent.parent
COUNT = 250  # a Recorder batches 200: its own max_pending must be at least that
BOUND = 60  # seconds: what "the writer is stuck on the lock" may take on a busy machine


def with_query(url: str, query: str) -> str:
    return f"{url}?{query}" if query else url


def sqlalchemy_rendering(url: str) -> str:
    """The name every release before this one gave the ledger (and keyed its spool by)."""
    return sa.make_url(_engine_url(url)).render_as_string(hide_password=True)


def records_in(url: str) -> int:
    ledger = open_ledger(url, read_only=True)
    try:
        return ledger.verify_chain().records
    finally:
        ledger.close()


def segments_under(spool: Path) -> list[Path]:
    return sorted(p for p in spool.rglob("*.log") if "quarantine" not in p.parts)


def ship(url: str, spool: Path, cwd: Path) -> subprocess.CompletedProcess:
    return run_cli("spool", "ship", "--ledger", url, "--spool", str(spool), cwd=cwd)


def kill_recorder_stuck_on_the_lock(url: str, spool: Path, tmp_path: Path) -> None:
    """Record COUNT records through a Recorder in another process while the ledger's blocks
    are locked (each record is synced in the spool when record() returns, none can be
    appended), then kill -9 it: the records are left in the spool for the next opener."""
    open_ledger(url, spool=str(spool)).close()  # the ledger's tables, so they can be locked
    progress = tmp_path / "progress"
    with locked(url.split("?")[0], "ll_blocks"):
        writer = subprocess.Popen([sys.executable, "-m", "lineage_ledger.testing.writer", url, str(spool),
                                   "killed", str(COUNT), str(progress)], cwd=ROOT)
        try:
            deadline = time.monotonic() + BOUND
            while not (progress.exists() and int.from_bytes(progress.read_bytes() or b"\0", "little") == COUNT):
                assert writer.poll() is None, "the writer ended before it recorded everything"
                assert time.monotonic() < deadline, "the writer never recorded its records"
                time.sleep(0.05)
            wait_for_lock_waiter(url.split("?")[0], writer, timeout=BOUND)  # its append waits: nothing shipped
        finally:
            if writer.poll() is None:
                os.kill(writer.pid, signal.SIGKILL)
            writer.wait()
    assert records_in(url) == 0
    assert segments_under(spool), "the killed writer left nothing in the spool"


# -- end to end: records of a killed process, shipped with another spelling of the URL ----------
@pytest.mark.parametrize("written, shipped", [
    ("", "connect_timeout=10"),
    ("connect_timeout=10", "connect_timeout=3&ll_hang_timeout=30"),
    ("application_name=a&keepalives=1&keepalives_idle=5", ""),
    ("sslmode=disable", "sslmode=prefer&tcp_user_timeout=9000"),
], ids=["added", "changed", "removed", "tls"])
def test_records_a_killed_recorder_left_land_once_whatever_tuning_keys(postgres_url, tmp_path, written, shipped):
    spool = tmp_path / "spool"
    kill_recorder_stuck_on_the_lock(with_query(postgres_url, written), spool, tmp_path)
    result = ship(with_query(postgres_url, shipped), spool, tmp_path)
    assert result.returncode == 0 and f"shipped {COUNT} record(s)" in result.stderr, result
    assert records_in(postgres_url) == COUNT
    assert segments_under(spool) == []
    again = ship(with_query(postgres_url, written), spool, tmp_path)  # nothing left under the first spelling
    assert again.returncode == 0 and "shipped 0 record(s)" in again.stderr, again
    assert records_in(postgres_url) == COUNT


def run_while_locked(url: str, spool: Path, cwd: Path, n: int) -> None:
    """`lineage-ledger run` on a ledger whose blocks are locked: it gives shipping its
    --ship-wait and exits 0 with the record left in the spool."""
    with locked(url.split("?")[0], "ll_blocks"):
        result = run_cli("run", "-i", "in.txt", "-o", f"out{n}.txt", "--ledger", url, "--ship-wait", "1", "--",
                         "sh", "-c", f"cat in.txt > out{n}.txt", cwd=cwd, env={"LINEAGE_SPOOL": str(spool)})
    assert result.returncode == 0 and "waits there" in result.stderr, result


@pytest.mark.parametrize("written, shipped", [
    ("", "connect_timeout=10&ll_hang_timeout=20"),
    ("connect_timeout=10", "connect_timeout=3"),
], ids=["added", "changed"])
def test_a_run_left_in_the_spool_is_shipped_under_another_spelling(postgres_url, tmp_path, written, shipped):
    spool = tmp_path / "spool"
    (tmp_path / "in.txt").write_text("hello\n")
    first = run_cli("run", "-i", "in.txt", "-o", "out0.txt", "--ledger", postgres_url, "--", "sh", "-c",
                    "cat in.txt > out0.txt", cwd=tmp_path, env={"LINEAGE_SPOOL": str(spool)})
    assert first.returncode == 0, first
    run_while_locked(with_query(postgres_url, written), spool, tmp_path, 1)
    result = ship(with_query(postgres_url, shipped), spool, tmp_path)
    assert result.returncode == 0 and "shipped 1 record(s)" in result.stderr, result
    assert records_in(postgres_url) == 2
    assert segments_under(spool) == []


# -- a spool directory written by an earlier release, under the old name -------------------------
LEGACY_WRITER = """
import os, sys
from lineage_ledger._ledger.spool import SpoolWriter, spool_directory
from lineage_ledger.testing.records import make_record
root, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
writer = SpoolWriter(spool_directory(root, name))
for i in range(count):
    record = make_record(i, run_id="legacy")
    stored = record.stored()
    writer.append(record, stored.id, stored.body)
writer.current.sync()
print(writer.current.path, flush=True)
if sys.argv[4] == "hold":
    sys.stdin.readline()  # a process of the old release, still running: it owns its segment
os._exit(0)  # without shipping: what a crash leaves
"""


def legacy_spool(spool: Path, url: str, count: int, *, hold: bool = False) -> subprocess.Popen:
    """A process writing a spool segment exactly where an earlier release put it: under the
    directory named by SQLAlchemy's rendering of the whole URL."""
    return subprocess.Popen([sys.executable, "-c", LEGACY_WRITER, str(spool), sqlalchemy_rendering(url), str(count),
                             "hold" if hold else "exit"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)


@pytest.mark.parametrize("query", ["connect_timeout=10", "ll_hang_timeout=5&application_name=flow&sslmode=prefer"])
def test_a_spool_directory_of_the_earlier_name_is_replayed(postgres_url, tmp_path, query):
    url = with_query(postgres_url, query)
    open_ledger(url, spool=str(tmp_path / "unused")).close()
    spool = tmp_path / "spool"
    writer = legacy_spool(spool, url, COUNT)
    old_segment = Path(writer.communicate(timeout=BOUND)[0].strip())
    assert writer.returncode == 0 and old_segment.exists()
    assert identity_of(url) != sqlalchemy_rendering(url)  # the name did change
    result = ship(url, spool, tmp_path)
    assert result.returncode == 0 and f"shipped {COUNT} record(s)" in result.stderr, result
    assert records_in(postgres_url) == COUNT
    assert segments_under(spool) == []
    status = json.loads(run_cli("spool", "status", "--json", "--spool", str(spool), cwd=tmp_path,
                                check_rc=0).stdout)
    assert status == []


def test_opening_the_ledger_replays_the_earlier_name_and_leaves_a_live_segment(postgres_url, tmp_path):
    """open_ledger replays too; a segment an old-release process still holds is its own to
    ship (left where it is), and is taken once that process is gone."""
    url = with_query(postgres_url, "connect_timeout=10")
    spool = tmp_path / "spool"
    dead = legacy_spool(spool, url, 3)
    dead.communicate(timeout=BOUND)
    assert dead.returncode == 0
    live = legacy_spool(spool, url, COUNT, hold=True)
    try:
        held = Path(live.stdout.readline().strip())
        ledger = open_ledger(url, spool=str(spool))
        ledger.close()
        assert records_in(postgres_url) == 3
        assert held.exists()  # still its owner's
    finally:
        live.communicate("go\n", timeout=BOUND)
    ledger = open_ledger(url, spool=str(spool))
    ledger.close()
    assert records_in(postgres_url) == COUNT  # records 0..2 of the live one were the dead one's: once each
    assert segments_under(spool) == []
    assert not list(held.parent.glob("*.log"))  # the earlier directory is emptied, and left in place


# -- the trusted tree head ------------------------------------------------------------------------
def verified_head(url: str, state: Path, spool: Path) -> tuple[int, bool]:
    """(records under the verified head, whether this opening had to audit the whole ledger)."""
    ledger = open_ledger(url, spool=str(spool), state_dir=str(state))
    try:
        return ledger.tree_head().size, ledger.verifier.audited_now
    finally:
        ledger.close()


def recorded(url: str, spool: Path, n: int) -> None:
    ledger = open_ledger(url, spool=str(spool))
    try:
        for i in range(n):
            ledger.record(make_record(i, run_id="trust"))
    finally:
        ledger.close()


def test_the_trusted_head_is_kept_whatever_tuning_keys(postgres_url, tmp_path):
    """One trusted head for every spelling: verifying with ``?connect_timeout=3`` does not
    audit again what was verified without it (nor take a rewritten ledger on first use)."""
    state, spool = tmp_path / "state", tmp_path / "spool"
    recorded(postgres_url, spool, 3)
    assert verified_head(postgres_url, state, spool) == (3, True)
    assert verified_head(with_query(postgres_url, "connect_timeout=3&sslmode=prefer"), state, spool) == (3, False)


def test_the_trusted_head_an_earlier_release_kept_is_used(postgres_url, tmp_path):
    from lineage_ledger._log.trust import TrustStore

    url = with_query(postgres_url, "connect_timeout=10")
    state, spool = tmp_path / "state", tmp_path / "spool"
    recorded(url, spool, 3)
    assert verified_head(url, state, spool) == (3, True)
    # Where an earlier release kept it: under the whole rendering of the URL.
    os.rename(TrustStore.directory_for(identity_of(url), str(state)),
              TrustStore.directory_for(sqlalchemy_rendering(url), str(state)))
    assert verified_head(url, state, spool) == (3, False)


# -- what the name keeps and what it drops --------------------------------------------------------
BASE = "postgresql://ledger:s3cret@db.example:5432/lab"


@pytest.mark.parametrize("query", [
    "connect_timeout=10", "ll_hang_timeout=0", "application_name=flow", "fallback_application_name=x",
    "keepalives=1&keepalives_idle=30&keepalives_interval=5&keepalives_count=3", "tcp_user_timeout=10000",
    "sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem", "sslcert=c.pem&sslkey=k.pem&sslpassword=hush",
    "channel_binding=require", "gssencmode=disable",
])
def test_tuning_keys_leave_the_name_alone(query):
    assert identity_of(f"{BASE}?{query}") == identity_of(BASE) == sqlalchemy_rendering(BASE)
    assert "hush" not in identity_of(f"{BASE}?{query}")  # sslpassword is a secret: never in the name


@pytest.mark.parametrize("query", [
    "host=other", "hostaddr=10.0.0.9", "port=5433", "dbname=other", "user=other",
    "options=-csearch_path%3Dother", "service=lab", "target_session_attrs=read-write", "sslsni=0",
    "passfile=p", "client_encoding=LATIN1",
])
def test_keys_that_may_reach_another_store_stay_in_the_name(query):
    assert identity_of(f"{BASE}?{query}") != identity_of(BASE)
    assert identity_of(f"{BASE}?{query}&connect_timeout=4") == identity_of(f"{BASE}?{query}")


keys = st.sampled_from(["connect_timeout", "application_name", "sslmode", "ll_hang_timeout", "a", "options",
                        "keepalives", "b%20c"])
values = st.one_of(st.text(alphabet="abc019_.~-", min_size=0, max_size=5),
                   st.text(alphabet="a:/@?#%+ é=&", min_size=1, max_size=5).map(
                       lambda s: urllib.parse.quote(s, safe="")))


@settings(max_examples=300, deadline=None)
@given(password=st.none() | st.just("p%40ss"), query=st.lists(st.tuples(keys, values), max_size=4))
def test_the_name_is_sqlalchemys_rendering_without_the_tuning_keys(password, query):
    url = "postgresql://u" + (f":{password}" if password else "") + "@db.example/lab"
    if query:
        url += "?" + "&".join(f"{k}={v}" for k, v in query)
    parsed = sa.make_url(_engine_url(url))
    expected = parsed.difference_update_query(TUNING_KEYS).render_as_string(hide_password=True)
    assert identity_of(url) == expected


def test_writer_and_reader_name_the_ledger_alike_whatever_tuning_keys(postgres_url):
    url = with_query(postgres_url, "connect_timeout=7&application_name=x&ll_hang_timeout=3")
    with open_backend(url) as writer:
        with open_backend(url, create=False) as reader:
            assert writer.identity == reader.identity == identity_of(postgres_url)
