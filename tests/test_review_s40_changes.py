"""Review of session 40's changes from an attacker's side: a hostile writer of ledger rows
(another language's writer that bypasses Record), another user of a shared machine who can
swap files under a running verify, an interrupted verify, a closed standard output.

- Record.decode took ``"v": true`` for version 1 (True == 1): a body no lineage-ledger writes,
  read by show/log/why and passed by the full audit, the same record as its ``"v": 1`` twin
  under another id.
- Reading a file for its digest opened it by path and blocked for ever where another user
  put a FIFO in its place after its stat said "regular file": the hashing child (and the
  loop) hung, and verify-lineage with it.
- The hashing child of a window was left running where the window's look-ahead raised
  (Ctrl-C or SIGINT landing there, a store error): nothing stopped it.
- ``-o /proc/thread-self/fd/1`` (descriptor 1, named through the thread) was not known for
  a closed standard output: the answer went to the /dev/null that holds descriptor 1, exit 0.
"""

from __future__ import annotations

import gc
import glob
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone

import msgspec  # noqa: F401 - imported, so Record.decode takes its one-go paths as a long read does
import pytest
from blake3 import blake3

from lineage_ledger import Hasher, Record, open_ledger
from lineage_ledger._errors import RecordTampered
from lineage_ledger._files import hash_ahead as hash_ahead_module
from lineage_ledger._ledger.ledger import Ledger
from lineage_ledger._model import StoredRecord
from lineage_ledger._verification.verify import verify_lineage
from tests.support.factories import make_record

HEX = "ab" * 32


def _body(**changes) -> bytes:
    body = {"v": 1, "engine": "e", "run_id": "r", "task_id": "t", "task_name": "n", "status": "succeeded",
            "attempt": 1, "started": "2024-01-01T00:00:00.000000Z", "ended": "2024-01-01T00:00:01.000000Z",
            "code_digest": None, "parameters": {}, "environment": {}, "extra": {}, "inputs": {},
            "outputs": {"/w/out": {"blake3": HEX, "size": 3}}}
    body.update(changes)
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# -- a version that is true ---------------------------------------------------------------------
def test_a_body_whose_version_is_true_is_refused_by_readers():
    data = _body().replace(b'"v":1', b'"v":true')
    assert b'"v":true' in data
    with pytest.raises(ValueError):
        Record.decode(data)


def test_the_full_audit_refuses_a_record_whose_version_is_true(tmp_path):
    """A writer that bypassed Record stored it, its index rows as the body says: the audit
    said 'verified' (it asks Record.decode of what its own struct refuses)."""
    data = _body().replace(b'"v":1', b'"v":true')
    odd = StoredRecord(blake3(data).hexdigest(), data, "r", (), (("/w/out", HEX),), "2024-01-01T00:00:01.000000Z")
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with open_ledger(url, spool=str(tmp_path / "spool"), state_dir=str(tmp_path / "writer")) as ledger:
        ledger.append_records([make_record(i).stored() for i in range(10, 20)])
        ledger.append_records([odd])
    with open_ledger(url, read_only=True, state_dir=str(tmp_path / "reader")) as ledger:
        with pytest.raises(RecordTampered) as raised:
            ledger.audit()
    assert odd.id[:16] in str(raised.value)


# -- a FIFO put where a file was ----------------------------------------------------------------
_DIGEST_OF = """
import sys
from lineage_ledger._files._digest import file_digest
try:
    file_digest(sys.argv[1], int(sys.argv[2]))
except OSError as err:
    print("ended: refused", err)
else:
    print("ended: a digest, which the caller's second stat refuses")
"""


@pytest.mark.parametrize("size", [10, 64 << 20], ids=["read", "mmap"])
@pytest.mark.parametrize("swapped_in", ["fifo", "device"])
def test_reading_a_digest_ends_where_a_fifo_or_device_was_swapped_in_after_the_stat(tmp_path, size, swapped_in):
    """file_digest is called with the size a stat just gave for a regular file; another user
    may have put a FIFO there since (no writer ever comes), or a link to a device that never
    ends. The read must end, so that the caller's stat after it can say the file changed:
    the hashing child waited for ever, and verify-lineage read its pipe for ever."""
    path = tmp_path / "sample.vcf"
    if swapped_in == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    try:
        done = subprocess.run([sys.executable, "-c", _DIGEST_OF, str(path), str(size)],
                              capture_output=True, text=True, timeout=30, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail(f"file_digest of a {swapped_in} did not end in 30 s")
    assert done.returncode == 0 and done.stdout.startswith("ended"), (done.stdout, done.stderr)


def test_hashing_a_fifo_still_says_it_is_not_a_regular_file(tmp_path):
    from lineage_ledger._errors import ArtifactError
    from lineage_ledger._files.hashing import hash_file

    os.mkfifo(tmp_path / "f")
    with pytest.raises(ArtifactError, match="not a regular file"):
        hash_file(str(tmp_path / "f"))


# -- the hashing child of a window whose look-ahead fails ------------------------------------------
def _hashing_children() -> list[int]:
    found = []
    for listing in glob.glob(f"/proc/{os.getpid()}/task/*/children"):
        with open(listing) as handle:
            pids = handle.read().split()
        for pid in pids:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    command = handle.read()
                with open(f"/proc/{pid}/stat") as handle:
                    state = handle.read().rpartition(")")[2].split()[0]
            except OSError:
                continue
            if b"_digest.py" in command and state != "Z":
                found.append(int(pid))
    return found


def test_the_hashing_child_is_stopped_when_the_window_fails_before_its_loop(tmp_path, monkeypatch):
    """SIGINT (a batch system's cancel, kill -INT: to this process, not its group) landing
    while the window's index rows are read ahead: the child hashing the window went on, and,
    its pipe full, waited for ever in a process that lives on (a notebook, a service)."""
    if not os.path.isdir(f"/proc/{os.getpid()}/task"):
        pytest.skip("needs /proc")
    out = tmp_path / "results"
    out.mkdir()
    for i in range(3_000):
        (out / f"s{i:05d}.vcf").write_bytes(b"x" * 64 + str(i).encode())
    files = Hasher().hash_many([str(p) for p in sorted(out.iterdir())])
    now = datetime.now(timezone.utc)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with open_ledger(url, spool=str(tmp_path / "spool"), state_dir=str(tmp_path / "state")) as ledger:
        ledger.append_records([Record(engine="t", run_id="r", task_id=f"c{i}", task_name="c", status="succeeded",
                                      started=now, ended=now, outputs=[f]).stored() for i, f in enumerate(files)])
    monkeypatch.setattr(hash_ahead_module.os, "sched_getaffinity", lambda pid: {0, 1})
    started = []
    real_init = hash_ahead_module.HashAhead.__init__

    def noted(self, paths):
        real_init(self, paths)
        started.append(self._child.pid if self._child is not None else None)

    def interrupted(self, paths, plain=()):
        raise KeyboardInterrupt  # as SIGINT delivered here does

    monkeypatch.setattr(hash_ahead_module.HashAhead, "__init__", noted)
    monkeypatch.setattr(Ledger, "looking_ahead", interrupted)
    assert not _hashing_children()
    with open_ledger(url, read_only=True, state_dir=str(tmp_path / "reader")) as ledger:
        try:
            verify_lineage(ledger, [str(out)])
        except KeyboardInterrupt:
            pass
        else:
            pytest.fail("the look-ahead's interrupt did not reach the caller")
    assert started and started[0] is not None  # a child was started for the window
    gc.collect()
    deadline = time.monotonic() + 30
    while _hashing_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    left = _hashing_children()
    for pid in left:  # no process of this test outlives it
        os.kill(pid, 9)
    assert not left, "the hashing child was left running"


# -- descriptor 1 named through the thread ----------------------------------------------------------
@pytest.fixture
def recorded(cli, workdir):
    (workdir / "in.txt").write_text("data\n")
    cli("run", "-i", "in.txt", "-o", "out.txt", "--", "cp", "in.txt", "out.txt", check_rc=0)
    return workdir


@pytest.mark.parametrize("path", [
    "/proc/thread-self/fd/1", "//dev/fd/1", "/proc/self/task/{tid}/fd/1", "fd-link/1",
    "/dev/fd/../fd/1"])
def test_export_to_descriptor_one_by_another_name_with_stdout_closed_fails(cli, recorded, path):
    if not os.path.exists("/proc/thread-self/fd"):
        pytest.skip("needs /proc/thread-self")
    (recorded / "fd-link").symlink_to("/dev/fd")  # a link to descriptor 1's directory
    # {tid}: the process's main thread, whose id is its pid (the script is exec'ed by sh)
    command = 'exec "$0" "$@" >&-'
    if "{tid}" in path:
        command = 'exec "$0" "$1" "$2" "$3" "$4" "$5" "/proc/self/task/$$/fd/1" >&-'
        path = "(set by the shell)"
    result = cli("export", "out.txt", "-f", "prov-json", "-o", path, prefix=("sh", "-c", command))
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "standard output is closed" in result.stderr


# -- a name of /dev/stdout that open_output took for a plain file ------------------------------------
@pytest.mark.parametrize("spelling", ["//dev/stdout", "//dev/null", "link/null"])
def test_open_output_writes_into_dev_stdout_however_it_is_spelled(tmp_path, monkeypatch, spelling):
    """-o //dev/stdout (POSIX keeps two leading slashes) or -o LINK/stdout with LINK -> /dev
    was taken for a plain file: a private file made in /dev and renamed onto /dev/stdout,
    which, as root, replaced it for every process of the machine (found so: this review's
    first try of //dev/stdout as root did, and /dev/stdout was put back by hand). Asked of
    _is_stream, which decides it, so that this test never writes /dev."""
    from lineage_ledger.exports._output import _is_stream

    monkeypatch.chdir(tmp_path)
    (tmp_path / "link").symlink_to("/dev")
    assert _is_stream("/dev/stdout") and _is_stream("/dev/null")  # as they always were
    assert _is_stream(spelling)


def test_a_repeated_audit_checks_again_what_the_build_before_the_version_fix_passed(tmp_path, monkeypatch):
    """The full audit remembers that every record under its head was checked by the current
    rule (BODIES_FORMAT) and parses only the records after it. A ledger audited by the build
    before Record.decode refused "v": true (simulated here: that check as it was) holds such
    a record under its remembered head; audited again by this build, it must be refused."""
    from lineage_ledger import _model
    from lineage_ledger._log import audit_full, audit_records, tree_head

    data = _body().replace(b'"v":1', b'"v":true')
    odd = StoredRecord(blake3(data).hexdigest(), data, "r", (), (("/w/out", HEX),), "2024-01-01T00:00:01.000000Z")
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with monkeypatch.context() as before:
        before.setattr(_model, "_is_version", lambda value: value == _model.RECORD_VERSION)  # True == 1
        for module in (audit_records, audit_full, tree_head):  # the rule's number in that build
            before.setattr(module, "BODIES_FORMAT", 1)
        with open_ledger(url, spool=str(tmp_path / "spool"), state_dir=str(tmp_path / "writer")) as ledger:
            ledger.append_records([make_record(i).stored() for i in range(10, 20)])
            ledger.append_records([odd])
        with open_ledger(url, read_only=True, state_dir=str(tmp_path / "reader")) as ledger:
            assert ledger.audit().summary.records == 11  # passed by that build
    with open_ledger(url, read_only=True, state_dir=str(tmp_path / "reader")) as ledger:
        with pytest.raises(RecordTampered) as raised:
            ledger.audit()
    assert odd.id[:16] in str(raised.value)


# -- export --emit to a server that answers with a redirect ---------------------------------------
@pytest.fixture
def redirecting():
    """Two real HTTP servers on this machine: the one --emit names answers every POST with
    a redirect (its code set by the test) to the other, which takes anything."""
    import http.server
    import threading

    seen: list[tuple[str, str, str, str | None]] = []
    code = [301]

    class Other(http.server.BaseHTTPRequestHandler):
        def _any(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append(("other", self.command, self.path, self.headers.get("Authorization")))
            self.send_response(200)
            self.end_headers()

        do_POST = do_GET = _any

        def log_message(self, *args):
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Other)

    class Named(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append(("named", self.command, self.path, self.headers.get("Authorization")))
            self.send_response(code[0])
            self.send_header("Location", f"http://localhost:{other.server_address[1]}/moved{self.path}")
            self.end_headers()

        def log_message(self, *args):
            pass

    named = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Named)
    for server in (named, other):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{named.server_address[1]}/gw", seen, code
    for server in (named, other):
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_emit_to_a_server_that_redirects_fails_and_sends_nothing_elsewhere(cli, recorded, redirecting, status):
    """An http:// URL whose server moved to https:// answers 301, a common answer: requests
    followed it with a GET and no body (301/302/303), the other server said 200, and the
    export said 'posted to URL', exit 0, where no event reached anyone. 307/308 posted the
    events to a host --emit did not name. A redirect is bad input: exit 2, saying where it
    pointed, and nothing sent to the other server; the key only ever to the named one."""
    url, seen, code = redirecting
    code[0] = status
    result = cli("export", "out.txt", "-f", "openlineage", "-o", "events.jsonl", "--emit", url,
                 env={"OPENLINEAGE_API_KEY": "s3cret-key-40"})
    assert result.returncode == 2, (result.returncode, result.stderr, seen)
    assert "redirect" in result.stderr and "/moved/gw/api/v1/lineage" in result.stderr, result.stderr
    assert "s3cret-key-40" not in result.stdout + result.stderr
    assert seen and all(who == "named" for who, *_ in seen), seen


# -- a crate's copy of a file another user swaps after its checks -----------------------------------
_COPY_SWAPPED = """
import os, resource, sys
from blake3 import blake3
from lineage_ledger.exports import _crate_copy
from lineage_ledger.exports._select import FileVersion

source, crate, swap_to = sys.argv[1], sys.argv[2], sys.argv[3]
resource.setrlimit(resource.RLIMIT_FSIZE, (8 << 20, 8 << 20))  # never fills the disk, whatever it does
size = os.path.getsize(source)
version = FileVersion(source, blake3(open(source, "rb").read()).hexdigest(), size)
swapped = []

def swap(event, args):  # another user acts after the checks by name, as the copy opens the source
    if event == "open" and args and args[0] == source and not swapped:
        swapped.append(True)
        os.unlink(source)
        os.mkfifo(source) if swap_to == "fifo" else os.symlink(swap_to, source)

sys.addaudithook(swap)
try:
    print("copied" if _crate_copy.copy_version(version, crate, "data/sample.vcf") else "left out")
except OSError as err:
    print("error", err)
assert swapped, "the source was never opened"
"""


@pytest.mark.parametrize("swap_to", ["fifo", "/dev/zero"])
def test_a_crate_leaves_out_a_file_swapped_for_a_fifo_or_device_after_its_checks(tmp_path, swap_to):
    """export --format ro-crate copies each recorded file that still holds its bytes. Another
    user who may write the file's directory (a shared project folder) puts a FIFO there, or a
    link to /dev/zero, between the checks by name and the copy (here as the source is opened,
    through an audit hook): the export wrote zeros until the
    disk was full (here a file-size limit stops it), failed on the FIFO, or hung where the FIFO
    came after shutil's own check. The file is left out, at once, as one changed is."""
    source = tmp_path / "sample.vcf"
    source.write_bytes(b"##fileformat=VCFv4.2\n" * 100)
    crate = tmp_path / "crate"
    crate.mkdir()
    try:
        done = subprocess.run([sys.executable, "-c", _COPY_SWAPPED, str(source), str(crate), swap_to],
                              capture_output=True, text=True, timeout=30, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail("the copy blocked for 30 s")
    assert done.stdout.strip() == "left out", (done.returncode, done.stdout, done.stderr[-500:])
    assert not (crate / "data" / "sample.vcf").exists()
