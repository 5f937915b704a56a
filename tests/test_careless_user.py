"""A new, then a careless, user of the command line (helper-84, stop 39): the demo as
README.md runs it, and slips a user makes, each through the CLI as typed.

- ``make demo`` says its forged file keeps size and mtime; it lost a byte a line (the CSV's
  CRLF endings read and written back as LF), so the demo did not show what it says.
- ``hash --cache FILE`` given a data file moved it aside to ``FILE.damaged`` and put a stat
  cache in its place; given the ledger, it wrote a table into it.
- An empty path (an unset shell variable: ``-o "$OUT"``) was the working directory: ``run``
  recorded the whole directory as an input or output, ``adopt ''`` accepted it all.
- ``checkpoint -o nodir/x`` ended in "unexpected FileNotFoundError".
- An RO-Crate export that failed half-way left the half crate in ``-o``'s directory.
- ``export --emit`` printed the password of its URL, and a mistyped scheme read as
  "Invalid URL 'api/v1/lineage'" after the events file had been written.

About 15 s at a load of 2.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lineage_ledger import open_ledger
from lineage_ledger._files.hashing import Hasher, StatCache, hash_file
from tests.conftest import made_once, run_cli
from tests.support.faults import refused_port

ROOT = Path(__file__).resolve().parent.parent
ROOT_POWERS_OFF = ("setpriv", "--bounding-set=-dac_override,-dac_read_search", "--")


def _as_a_user() -> tuple[str, ...]:
    """Root ignores file modes; the CLI runs without that power, as any user would."""
    return ROOT_POWERS_OFF if os.geteuid() == 0 else ()


def _records(cli) -> list[dict]:
    result = cli("log", "-n", "0", "--all", "--json", check_rc=0)
    return [json.loads(line) for line in result.stdout.splitlines()]


def _recorded(workdir: Path, tmp_path: Path) -> int:
    """How many records the working directory's ledger holds, read in this process: a
    ``log`` process for each look cost 0.3 s of CPU, twice for each of a dozen commands.
    Its own state directory, so that the look remembers nothing the commands would see."""
    url = f"sqlite:///{workdir / '.lineage' / 'ledger.db'}"
    with open_ledger(url, read_only=True, state_dir=str(tmp_path / "count-state")) as ledger:
        return ledger.tree_head().size


@pytest.fixture
def workdir(shared_workdir):
    """At one path for the module's tests: ``pipeline`` is made once and put back there."""
    return shared_workdir


def _two_recorded_steps(cli, workdir):
    (workdir / "raw.txt").write_text("raw\n")
    cli("run", "-i", "raw.txt", "-o", "clean.txt", "--", "cp", "raw.txt", "clean.txt", check_rc=0)
    cli("run", "-i", "clean.txt", "-o", "summary.txt", "--", "cp", "clean.txt", "summary.txt", check_rc=0)


#: Two recorded steps, raw.txt -> clean.txt -> summary.txt: made once for the module's tests
#: that start from them, and put back for each (conftest's made_once).
pipeline = made_once(_two_recorded_steps, "pipeline")


# -- make demo ----------------------------------------------------------------------------------
def test_the_demo_forges_a_file_of_the_same_size(tmp_path):
    """README's ``make demo`` (examples/cli/demo.sh) as a user runs it; the file it edits by
    hand keeps the size the ledger recorded, as its step 4 says."""
    shutil.copytree(ROOT / "examples" / "cli", tmp_path / "examples" / "cli")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    result = subprocess.run(["bash", "examples/cli/demo.sh"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-2000:])
    assert "Caught: verify-lineage exited 1" in result.stdout, result.stdout[-2000:]
    demo = tmp_path / ".demo"
    log = run_cli("log", "-n", "0", "--json", cwd=demo, env={"LINEAGE_STATE_DIR": str(demo / ".state")},
                  check_rc=0)
    recorded = {path: entry for line in log.stdout.splitlines()
                for path, entry in json.loads(line)["outputs"].items()}
    clean = recorded[str(demo / "data" / "clean.csv")]
    on_disk = hash_file(demo / "data" / "clean.csv")
    assert on_disk.blake3 != clean["blake3"]  # edited...
    assert on_disk.size == clean["size"]  # ...with its size kept


# -- hash --cache -------------------------------------------------------------------------------
def test_hash_cache_naming_a_data_file_leaves_it_alone(cli, workdir):
    data = workdir / "raw.csv"
    data.write_bytes(b"station,day\r\nnorth,1\r\n" * 100)
    result = cli("hash", "raw.csv", "--cache", "raw.csv")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "raw.csv is not a stat cache" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert data.read_bytes() == b"station,day\r\nnorth,1\r\n" * 100
    assert not (workdir / "raw.csv.damaged").exists()


def _tables(database: Path) -> set[str]:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        return {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_hash_cache_naming_the_ledger_writes_nothing_into_it(cli, pipeline):
    ledger = pipeline / ".lineage" / "ledger.db"
    before = _tables(ledger)
    result = cli("hash", "raw.txt", "--cache", ".lineage/ledger.db")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "not a stat cache" in result.stderr, result.stderr
    assert _tables(ledger) == before
    assert not (pipeline / ".lineage" / "ledger.db.damaged").exists()
    cli("verify", check_rc=0)


def test_a_stat_cache_at_a_ledgers_path_leaves_the_ledger_alone(cli, pipeline):
    """What the library's callers (plugins, the state root's cache) get for a path that holds
    another database: the cache goes unused, the database keeps its tables."""
    ledger = pipeline / ".lineage" / "ledger.db"
    before = _tables(ledger)
    hasher = Hasher(StatCache(str(ledger)))
    assert hasher.hash(str(pipeline / "raw.txt")).blake3 == hash_file(pipeline / "raw.txt").blake3
    hasher.cache.save()
    assert _tables(ledger) == before
    cli("verify", check_rc=0)


def test_a_damaged_default_cache_is_still_rebuilt(cli, workdir):
    """Without --cache, a garbled .lineage/statcache.db (zeros after a crash) is set aside and
    rebuilt, as before: only a path the user gave is refused."""
    (workdir / ".lineage").mkdir()
    (workdir / ".lineage" / "statcache.db").write_bytes(bytes(4096))
    (workdir / "raw.txt").write_text("raw\n")
    result = cli("hash", "raw.txt", check_rc=0)
    assert result.stdout.split()[0] == hash_file(workdir / "raw.txt").blake3
    assert (workdir / ".lineage" / "statcache.db.damaged").read_bytes() == bytes(4096)


# -- an empty path ------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [
    ("run", "-i", "", "--", "true"),
    ("run", "-o", "", "--", "true"),
    ("run", "-i", "raw.txt", "-o", "", "--", "true"),
    ("adopt", ""),
    ("adopt", "raw.txt", ""),
    ("hash", ""),
    ("why", ""),
    ("depends", ""),
    ("verify", ""),
    ("verify", "summary.txt", ""),
    ("export", "", "-f", "prov-json", "-o", "out.json"),
    ("graph", "", "-o", "out.html"),
])
def test_an_empty_path_is_refused(cli, pipeline, args, tmp_path):
    """``-o "$OUT"`` with OUT unset: the working directory was recorded, adopted or checked
    whole. It is bad input: exit 2, nothing recorded, run or written."""
    assert _recorded(pipeline, tmp_path) == 2  # the pipeline's two steps
    result = cli(*args)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "empty path" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert _recorded(pipeline, tmp_path) == 2
    assert not (pipeline / "out.json").exists() and not (pipeline / "out.html").exists()


# -- checkpoint -o ------------------------------------------------------------------------------
def test_checkpoint_into_a_missing_directory_says_so(cli, pipeline):
    result = cli("checkpoint", "-o", "nodir/head.txt")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "unexpected" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: nodir/head.txt: cannot make a file in its directory") \
        and len(result.stderr.splitlines()) == 1, result.stderr
    assert not (pipeline / "nodir").exists()


def test_checkpoint_to_an_empty_path_is_refused(cli, pipeline):
    """``-o "$OUT"`` with OUT unset printed the checkpoint, as if no -o had been given."""
    result = cli("checkpoint", "-o", "")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "empty path" in result.stderr and result.stdout == "", (result.stdout, result.stderr)


# -- export ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["crate", "empty/crate", "new/parents/crate"])
def test_a_failed_crate_export_leaves_nothing(cli, pipeline, where):
    """The crate copies the files it describes; one this user may not read stops the export
    (exit 2), and what it had made goes: the crate, the directories made above it, or what it
    wrote into an empty one. A rerun once the file is readable needs no clean-up."""
    if where.startswith("empty/"):
        (pipeline / where).mkdir(parents=True)
    (pipeline / "clean.txt").chmod(0)
    try:
        result = cli("export", "summary.txt", "-f", "ro-crate", "-o", where, prefix=_as_a_user())
    finally:
        (pipeline / "clean.txt").chmod(0o644)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "clean.txt" in result.stderr and "Traceback" not in result.stderr, result.stderr
    if where.startswith("empty/"):
        assert list((pipeline / where).iterdir()) == []
    else:
        assert not (pipeline / where.split("/")[0]).exists()
    cli("export", "summary.txt", "-f", "ro-crate", "-o", where, check_rc=0)
    cli("verify", "--crate", where, check_rc=0)


def test_emit_never_prints_the_password(cli, pipeline):
    result = cli("export", "summary.txt", "-f", "openlineage", "--emit", "http://lab:s3cr3t-pw@127.0.0.1:1/")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "s3cr3t-pw" not in result.stdout + result.stderr, result.stderr
    assert "127.0.0.1:1" in result.stderr, result.stderr


@pytest.mark.parametrize("emit", ["htp://127.0.0.1:1", "127.0.0.1:5000", "http://", "http://lab:pw@h:port"])
def test_a_mistyped_emit_url_is_refused_before_anything_is_written(cli, pipeline, emit):
    result = cli("export", "summary.txt", "-f", "openlineage", "-o", "events.jsonl", "--emit", emit)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "--emit" in result.stderr and "http://" in result.stderr, result.stderr
    assert not (pipeline / "events.jsonl").exists()


# -- "-" for standard output -----------------------------------------------------------------------
@pytest.mark.parametrize("args, starts", [
    (("checkpoint", "-o", "-"), "lineage-ledger:"),
    (("export", "summary.txt", "-f", "prov-json", "-o", "-"), "{"),
    (("export", "summary.txt", "-f", "openlineage", "-o", "-"), '{"'),
    (("graph", "summary.txt", "-f", "dot", "-o", "-"), "digraph"),
])
def test_dash_is_standard_output(cli, pipeline, args, starts):
    """``-o -`` is standard output, as for most tools; it was a private file named '-' (and
    the message said 'written to -')."""
    result = cli(*args)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert result.stdout.startswith(starts), result.stdout[:200]
    assert not (pipeline / "-").exists()


@pytest.mark.parametrize("args", [
    ("keygen", "-"),
    ("export", "summary.txt", "-f", "ro-crate", "-o", "-"),
])
def test_dash_where_standard_output_cannot_serve_is_refused(cli, pipeline, args):
    """A key pair is two files and a crate a directory: '-' (standard output) is refused,
    exit 2, with nothing made."""
    result = cli(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "standard output" in result.stderr, result.stderr
    assert not (pipeline / "-").exists() and not (pipeline / "-.pub").exists()


# -- spool ship --spool ----------------------------------------------------------------------------
def test_spool_ship_from_a_file_is_an_error_as_for_status(cli, pipeline):
    """``spool status --spool FILE`` says the spool cannot be read (exit 2); ``spool ship``
    said it shipped nothing, exit 0, as if nothing waited."""
    status = cli("spool", "status", "--spool", "raw.txt")
    assert status.returncode == 2 and "Not a directory" in status.stderr, status.stderr
    result = cli("spool", "ship", "--spool", "raw.txt")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "cannot read the spool" in result.stderr and "Not a directory" in result.stderr, result.stderr


# -- keygen --name ---------------------------------------------------------------------------------
def test_keygen_refuses_a_name_its_key_could_not_be_read_with(cli, pipeline):
    """A key file is read with a bound (4096 bytes); keygen wrote a pair with a 5,000-character
    name that checkpoint --key and verify --pubkey then refused as 'too large to be a key file'."""
    result = cli("keygen", "lab.key", "--name", "x" * 5000)
    assert result.returncode == 2, (result.stdout, result.stderr[:300])
    assert "name" in result.stderr and "too long" in result.stderr, result.stderr[:300]
    assert not (pipeline / "lab.key").exists() and not (pipeline / "lab.key.pub").exists()
    cli("keygen", "lab.key", "--name", "x" * 1000, check_rc=0)  # a long name that fits is kept
    cli("checkpoint", "--key", "lab.key", "-o", "head.txt", check_rc=0)
    cli("verify", "--against", "head.txt", "--pubkey", "lab.key.pub", check_rc=0)


# -- -o over a target ------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [
    ("export", "summary.txt", "-f", "prov-json", "-o", "summary.txt"),
    ("export", "clean.txt", "summary.txt", "-f", "openlineage", "-o", "./clean.txt"),
    ("graph", "summary.txt", "-f", "dot", "-o", "summary.txt"),
    ("graph", "summary.txt", "-o", "summary.txt"),
])
def test_an_output_over_a_target_is_refused(cli, pipeline, args):
    """A slip of tab completion (``export results/x.csv -f prov-json -o results/x.csv``)
    replaced the recorded file with its own export: refused, exit 2, the file kept, as -o
    over the ledger or the key is."""
    before = (pipeline / "summary.txt").read_bytes(), (pipeline / "clean.txt").read_bytes()
    result = cli(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "would write over" in result.stderr, result.stderr
    assert ((pipeline / "summary.txt").read_bytes(), (pipeline / "clean.txt").read_bytes()) == before


# -- Ctrl-C ------------------------------------------------------------------------------------------
def _wait_for(condition, process: subprocess.Popen, what: str) -> None:
    """Poll ``condition`` until it holds; fail, naming ``what``, if the process ended first.
    No time decides the outcome: the deadline only ends a test that would hang."""
    deadline = time.monotonic() + 120
    while not condition():
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the command ended (exit {process.returncode}) before {what}: {out[-500:]} {err[-500:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"the command never got to {what}")
        time.sleep(0.01)


def _interruptible() -> None:
    """A child's Ctrl-C as a terminal's foreground job has it: SIGINT at its default. A shell
    starts a job in the background (`cmd &`, `nohup ... &`, as CI may run the tests) with
    SIGINT ignored, every descendant inherits that, and Python then leaves it ignored: the
    signal the test sends would never reach the command (CI timed out after 120 s)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt_reader(process: subprocess.Popen) -> None:
    """Ctrl-C to a command blocked reading a pipe, again while it still reads. CPython acts on
    a signal between bytecodes: one that lands after the last check and before the blocking
    read starts is acted on only when the read returns, never on a pipe nobody writes into
    (2 of 30 signals here); a user then presses Ctrl-C again. The signal is sent again only
    while the process still waits in the read, never while it handles the first."""
    process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            waiting_in = Path(f"/proc/{process.pid}/wchan").read_text()
        except OSError:
            return  # gone, or no /proc: communicate() has the answer
        if "pipe_read" in waiting_in and process.poll() is None:
            process.send_signal(signal.SIGINT)


def _reader_waits_on(fifo: Path) -> int | None:
    """A writer's end of ``fifo``, once a reader has it open (the command is blocked reading it);
    None while no reader has."""
    try:
        return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as err:
        if err.errno == errno.ENXIO:  # no reader yet
            return None
        raise


@pytest.mark.parametrize("command", [("verify-lineage",), ("lineage-ledger", "verify")])
def test_an_interrupted_verify_exits_130_not_1(cli, workdir, command):
    """Exit 1 means a verification failed: a ``verify-lineage || alert`` must not read an
    interrupt as tampering. Interrupted, a command says so and exits 128+SIGINT, as ``run``
    and the shell do. The command is certain to be at work when the signal comes: it reads
    its checkpoint from a named pipe (as ``--against <(curl ...)`` does) that the test holds
    open and writes nothing into. (It interrupted a verify of 10,000 files, and skipped
    where that had finished before the signal.)"""
    (workdir / "in.txt").write_text("data\n")
    cli("run", "-i", "in.txt", "-o", "out.txt", "--", "cp", "in.txt", "out.txt", check_rc=0)
    fifo = workdir / "checkpoint.fifo"
    os.mkfifo(fifo)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
    process = subprocess.Popen([str(Path(sys.executable).parent / command[0]), *command[1:], "--against", str(fifo)],
                               cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=_interruptible)
    writer: list[int] = []
    try:
        def reading() -> bool:
            fd = _reader_waits_on(fifo)
            if fd is not None:
                writer.append(fd)
            return fd is not None

        _wait_for(reading, process, "it opened the checkpoint to read it")
        _interrupt_reader(process)
        out, err = process.communicate(timeout=120)
    finally:
        for fd in writer:
            os.close(fd)
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 128 + signal.SIGINT, (command, process.returncode, out[-500:], err[-500:])
    assert err.strip().splitlines()[-1] == "interrupted", (command, err[-500:])
    assert "verification failed" not in out + err, (out, err)


def test_an_interrupted_run_exits_130_and_keeps_its_record(cli, workdir):
    """Ctrl-C while ``run``'s command is certain to be running (it made a file, then sleeps a
    minute): the signal is passed on to the command, ``run`` exits 128+SIGINT saying the run was
    interrupted, and nothing is lost: the record is kept, ``failed`` with the signal in
    ``extra`` (docs/guide.md), in the ledger or, waiting to be shipped, in the spool."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
    process = subprocess.Popen([str(Path(sys.executable).parent / "lineage-ledger"), "run", "-n", "nap",
                                "-o", "out.txt", "--", "sh", "-c", "touch started; exec sleep 60"],
                               cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=_interruptible)
    try:
        _wait_for((workdir / "started").exists, process, "its command started")
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 128 + signal.SIGINT, (process.returncode, out[-500:], err[-500:])
    assert "interrupted by SIGINT" in err, err[-500:]
    in_ledger = [r for r in _records(cli) if r.get("task_name") == "nap"]
    waiting = json.loads(cli("spool", "status", "--json", check_rc=0).stdout)
    assert len(in_ledger) + sum(entry["records"] for entry in waiting) == 1, (in_ledger, waiting)
    if in_ledger:
        (record,) = in_ledger
        assert record["status"] == "failed" and record["extra"]["interrupted"] is True, record
        assert record["extra"]["signal"] == "SIGINT", record["extra"]
    cli("spool", "ship", check_rc=0)  # what waited (if anything) reaches the ledger
    (record,) = [r for r in _records(cli) if r.get("task_name") == "nap"]
    assert record["status"] == "failed" and record["extra"]["signal"] == "SIGINT", record


# -- a reader that goes away ---------------------------------------------------------------------------
def test_output_cut_short_by_its_reader_is_not_a_failed_check(cli, workdir):
    """``lineage-ledger hash DIR | head -1`` under ``set -o pipefail``: the reader leaving is
    no failed check (exit 1 everywhere else). Exit 128+SIGPIPE, what a shell reports for a
    writer the pipe ended, with nothing on standard error."""
    tree = workdir / "tree"
    tree.mkdir()
    for i in range(3000):  # 3,000 lines of 90 bytes: more than a pipe holds
        (tree / f"f{i}").write_text(str(i))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
    process = subprocess.Popen([str(Path(sys.executable).parent / "lineage-ledger"), "hash", "tree"], cwd=workdir,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    first = process.stdout.readline()
    process.stdout.close()  # what `head -1` does
    err = process.stderr.read().decode()
    process.wait(timeout=120)
    assert first.split()[-1] == b"tree/f0", first
    assert process.returncode == 128 + signal.SIGPIPE, (process.returncode, err[-500:])
    assert err == "", err


# -- run's wait for the ledger, and the seconds given -----------------------------------------------
@pytest.fixture
def closed_port():
    """A local TCP port nothing listens on: a PostgreSQL URL there is refused at once, every try.
    Held bound (never listened on) for the whole test: a port bound and closed at once may be
    another test's PostgreSQL server by the time it is dialled (they start on ports of their own)."""
    with refused_port() as port:
        yield port


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_run_stops_waiting_for_the_ledger_when_signalled(workdir, signum, closed_port):
    """The command is done and its record synced in the spool; ``run`` then waits up to
    --ship-wait for an unreachable ledger. Ctrl-C or a SIGTERM there were passed on to the
    finished command and ignored: the wait ran out (for ever with --ship-wait inf). Now the
    wait ends, the record stays in the spool, and run exits 128+N."""
    url = f"postgresql://lab@127.0.0.1:{closed_port}/db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
    process = subprocess.Popen([str(Path(sys.executable).parent / "lineage-ledger"), "run", "--ledger", url,
                                "--ship-wait", "inf", "-o", "out.txt", "--", "touch", "out.txt"], cwd=workdir,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=_interruptible)
    try:
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline and not any(
                segment.stat().st_size for segment in workdir.glob(".lineage/spool/*/*.log")):
            time.sleep(0.01)  # until the record is in the spool: the command is done, the wait begun
        process.send_signal(signum)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signum, (process.returncode, err[-800:])
    assert "interrupted" in err and "spool" in err, err[-800:]
    waiting = run_cli("spool", "status", "--json", cwd=workdir, check_rc=0)
    assert [entry["records"] for entry in json.loads(waiting.stdout)] == [1], waiting.stdout


def test_seconds_that_are_no_number_or_past_any_clock_are_handled(cli, workdir, closed_port):
    url = f"postgresql://lab@127.0.0.1:{closed_port}/db"
    result = cli("run", "--ship-wait", "nan", "--", "touch", "ran.txt")
    assert result.returncode == 2 and "--ship-wait" in result.stderr, (result.returncode, result.stderr)
    assert not (workdir / "ran.txt").exists()
    result = cli("spool", "ship", "--ledger", url, "--timeout", "nan")
    assert result.returncode == 2 and "--timeout" in result.stderr, (result.returncode, result.stderr)
    cli("run", "--ledger", url, "--ship-wait", "0", "--", "true", check_rc=0)  # one record waits
    result = cli("spool", "ship", "--ledger", url, "--timeout", "1e300", prefix=("timeout", "-s", "INT", "5"))
    assert "unexpected" not in result.stderr and "Overflow" not in result.stderr, result.stderr


@pytest.mark.parametrize("command", [("spool", "status"), ("spool", "ship")])
def test_an_empty_spool_path_is_refused_not_the_default_spool(cli, workdir, command):
    """`--spool "$SPOOL"` with SPOOL unset showed or shipped the default spool, exit 0 (helper-86)."""
    result = cli(*command, "--spool", "")
    assert result.returncode == 2 and "empty path" in result.stderr, (result.returncode, result.stderr)
    assert "shipped" not in result.stdout and "wait" not in result.stdout, result.stdout
