"""Files hashed ahead in a child process (core/_files/hash_ahead.py) while verify-lineage
proves records: the same report as hashing in the loop, whatever the files are, and the
child's answers taken only where it is sure of them."""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest

from lineage_ledger import open_ledger
from lineage_ledger._files import hash_ahead as hash_ahead_module
from lineage_ledger._files.hash_ahead import HashAhead
from lineage_ledger._files.hashing import hash_file
from lineage_ledger._verification.verify import verify_lineage
from tests.conftest import run_cli
from tests.support.derived import results_from_one_source

N = 1_200  # past hash_ahead's threshold, so a window of them is hashed by the child


def _build(tmp_path):
    url, out, _source = results_from_one_source(tmp_path, N)
    return url, out


def _tamper(out):
    (out / "sample-00010.vcf").write_text("##fileformat=VCFv4.2\n#1X\n")  # same size, edited
    (out / "sample-00500.vcf").unlink()
    (out / "sample-00600.vcf").unlink()
    (out / "sample-00600.vcf").mkdir()  # a directory where a file was
    (out / "sample-00601.vcf").unlink()
    (out / "sample-00601.vcf").symlink_to(out / "sample-00602.vcf")  # a link to another result
    (out / "sample-01100.vcf").unlink()
    os.mkfifo(out / "sample-01100.vcf")  # not a regular file: must not be opened by anyone
    (out / "stray.txt").write_text("no record names me\n")


def _report(result):
    report = json.loads(result.stdout)
    return {k: v for k, v in report.items() if k not in ("seconds", "elapsed")}


def test_verify_of_a_results_directory_is_the_same_with_the_hashing_child_and_on_one_processor(tmp_path):
    """One processor (taskset, as a one-core batch allocation) hashes in the loop; two or more
    through the child. Both reports are the same, tampering found in both."""
    if shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs taskset and two processors")
    url, out = _build(tmp_path)
    _tamper(out)
    env = {"LINEAGE_STATE_DIR": str(tmp_path / "state")}
    two = run_cli("--ledger", url, "--json", out, cwd=tmp_path, env=env, program="verify-lineage")
    one = run_cli("--ledger", url, "--json", out, cwd=tmp_path, env=env, program="verify-lineage",
                  prefix=("taskset", "-c", "0"))
    assert two.returncode == one.returncode == 1, (two.stderr, one.stderr)
    assert _report(two) == _report(one)
    failed = {f["path"]: f for f in _report(two)["failures"]}
    for name in ("sample-00010.vcf", "sample-00600.vcf", "sample-00601.vcf", "sample-01100.vcf"):
        assert str(out / name) in failed, (name, sorted(failed)[:10])


def test_verify_takes_the_childs_digests_and_finds_the_same_problems(tmp_path, monkeypatch):
    """In process: the child answered for the regular files (so the report above came from
    it), and for none of the others."""
    url, out = _build(tmp_path)
    _tamper(out)
    answered, refused = [], []
    take = HashAhead.take

    def spy(self, path):
        got = take(self, path)
        (answered if got is not None else refused).append(path)
        return got

    monkeypatch.setattr(HashAhead, "take", spy)
    monkeypatch.setattr(hash_ahead_module.os, "sched_getaffinity", lambda pid: {0, 1})
    with open_ledger(url, spool=str(tmp_path / "spool"), state_dir=str(tmp_path / "state")) as ledger:
        report = verify_lineage(ledger, [str(out)])
    assert not report.ok
    assert len(answered) >= N - 10
    assert {str(out / n) for n in ("sample-00600.vcf", "sample-01100.vcf")} <= set(refused)
    assert str(out / "sample-00010.vcf") in answered  # edited in place: still a regular file
    failed = {f.path for f in report.failures}
    assert {str(out / n) for n in ("sample-00010.vcf", "sample-00600.vcf", "sample-01100.vcf")} <= failed


def test_hash_ahead_answers_only_what_the_child_is_sure_of(tmp_path):
    files = []
    for i in range(40):
        path = tmp_path / f"f{i}"
        path.write_bytes(os.urandom(100 + i))
        files.append(str(path))
    (tmp_path / "d").mkdir()
    os.symlink(tmp_path / "d", tmp_path / "link-to-dir")
    os.symlink(files[0], tmp_path / "link-to-file")
    odd = [str(tmp_path / "d"), str(tmp_path / "link-to-dir"), str(tmp_path / "gone"), str(tmp_path / "link-to-file")]
    paths = files[:20] + odd + files[20:]
    with HashAhead(paths) as ahead:
        assert ahead.take(str(tmp_path / "not-given")) is None
        late = ahead.take(files[30])  # out of order: the lines before it are kept for later
        got = {p: ahead.take(p) for p in paths}
        assert ahead.take(files[3]) is None  # taken once
    assert late is not None and late.blake3 == hash_file(files[30]).blake3
    assert got[files[30]] is None  # taken already, above
    for path in files:
        if path != files[30]:
            expected = hash_file(path)
            assert (got[path].blake3, got[path].size) == (expected.blake3, expected.size)
    assert got[odd[0]] is None and got[odd[1]] is None and got[odd[2]] is None
    link = got[odd[3]]  # a link to a file is hashed as the file, as hash_file does
    assert link is not None and link.blake3 == hash_file(odd[3]).blake3 and link.path == odd[3]


def test_a_child_that_dies_or_cannot_start_leaves_the_files_to_the_caller(tmp_path, monkeypatch):
    files = []
    for i in range(5_000):
        path = tmp_path / f"f{i}"
        path.write_bytes(b"x" * 10)
        files.append(str(path))
    with HashAhead(files) as ahead:
        assert ahead.take(files[0]) is not None
        os.kill(ahead._child.pid, signal.SIGKILL)
        ahead._child.wait()
        answers = [ahead.take(p) for p in files[1:]]
    # What it wrote before it died may still be read; after that, nothing.
    first_none = next((i for i, a in enumerate(answers) if a is None), None)
    assert first_none is not None and all(a is None for a in answers[first_none:])
    assert all(a.blake3 == hash_file(files[1 + i]).blake3 for i, a in enumerate(answers[:first_none]))

    monkeypatch.setattr(hash_ahead_module.sys, "executable", str(tmp_path / "no-such-python"))
    with HashAhead(files) as ahead:
        assert ahead.take(files[0]) is None


def test_the_child_imports_nothing_from_the_working_directory(tmp_path, monkeypatch):
    """verify-lineage run in a shared folder where another user left a blake3.py (or a
    stat.py, an os.py): the hashing child imports from this installation, never from the
    folder, and still hashes the files."""
    url, out = _build(tmp_path)
    shared = tmp_path / "shared"
    shared.mkdir()
    for name in ("blake3", "stat", "os"):
        (shared / f"{name}.py").write_text(f"open({str(tmp_path / ('ran-' + name))!r}, 'w').close()\n")
    answered = []
    take = HashAhead.take
    monkeypatch.setattr(HashAhead, "take", lambda self, path: answered.append(take(self, path)) or answered[-1])
    monkeypatch.setattr(hash_ahead_module.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.chdir(shared)
    with open_ledger(url, spool=str(tmp_path / "spool"), state_dir=str(tmp_path / "state")) as ledger:
        assert verify_lineage(ledger, [str(out)]).ok
    assert sum(a is not None for a in answered) == N
    assert not list(tmp_path.glob("ran-*"))


def test_a_large_file_truncated_while_the_child_reads_it_is_refused_and_the_child_goes_on(tmp_path):
    """Another user empties a large result while the child hashes it: the child answers
    "changed" for that file (the caller hashes it again itself) and goes on with the files
    after it. Read through an mmap, SIGBUS killed the child there, and every later file
    was hashed again in the loop. Timed by /proc, as in tests/test_hashing.py."""
    from tests.support.midread import stop_while_reading

    size = 64 << 20  # past _digest.LARGE
    big = tmp_path / "big.dat"
    block = os.urandom(1 << 20)
    small = []
    for i in range(20):
        path = tmp_path / f"small-{i:02d}"
        path.write_bytes(os.urandom(100 + i))
        small.append(str(path))
    for _attempt in range(5):
        big.write_bytes(block * (size >> 20))
        os.chmod(big, 0o666)  # a file another user can write, and so truncate (else it is mapped)
        with HashAhead([str(big), *small]) as ahead:
            assert ahead._child is not None
            caught = stop_while_reading(ahead._child.pid, str(big), size)
            if caught:
                os.truncate(big, 0)
                os.kill(ahead._child.pid, signal.SIGCONT)
                assert ahead.take(str(big)) is None  # changed while it was read: the caller's
                got = [ahead.take(p) for p in small]
                break
    else:
        pytest.fail("the child was never caught part-way through the file in 5 runs")
    assert all(a is not None for a in got), "the child died on the truncated file"
    assert [a.blake3 for a in got] == [hash_file(p).blake3 for p in small]
