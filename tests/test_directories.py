"""Directories as artifacts (issue #17): recorded by a manifest's digest, verified file by file.

Through the CLI (`run -i/-o DIR`, `verify-lineage`, `why`, `depends`) and the Python API
(`TaskCapture`, `check_before_run`), with real files and real SQLite ledgers.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lineage_ledger import (
    ArtifactMismatch,
    TaskCapture,
    TaskRun,
    check_before_run,
    hash_file,
    open_ledger,
)
from lineage_ledger._capture.files import entries_of, manifest_records_of
from lineage_ledger._files.manifest import MANIFEST_RUN_PREFIX, Manifest
from lineage_ledger._model import Record
from lineage_ledger._verification.verify import ArtifactStatus, check_artifact


def write(path, text: str | bytes) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(text.encode() if isinstance(text, str) else text)
    return str(path)


def verify(cli, *args, **kw):
    """The `verify-lineage` command, as users run it."""
    return cli(*args, program="verify-lineage", **kw)


def edit_keeping_mtime(path, text: str) -> None:
    """Change a file's bytes (same size) and put its mtime back, as `touch -r` would."""
    before = os.stat(path)
    with open(path, "r+b") as handle:
        handle.write(text.encode())
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


# -- the digest ------------------------------------------------------------------------------
def test_digest_is_of_the_manifest_and_links_are_not_followed(tmp_path):
    root = tmp_path / "d"
    write(root / "b.txt", "bee")
    write(root / "sub" / "a.txt", "a")
    (root / "empty").mkdir()
    os.symlink("../outside", root / "link")
    artifact = hash_file(root)
    assert artifact.is_dir and artifact.entry()["type"] == "dir"
    entries = artifact.manifest.entries
    assert [e[0] for e in entries] == ["b.txt", "empty", "link", "sub", "sub/a.txt"]
    assert entries[2] == ("link", "link", "../outside")
    assert entries[1] == ("empty", "dir")
    assert artifact.size == 4
    # The digest is the BLAKE3 of the manifest's canonical bytes (docs/directories.md).
    from blake3 import blake3

    assert artifact.blake3 == blake3(artifact.manifest.encode()).hexdigest()
    assert artifact.manifest.encode().startswith(b'{"directory":1,"entries":[["b.txt","file",')
    assert Manifest.from_json(artifact.manifest.to_json()) == artifact.manifest


# A tree: relative paths (at most two levels, a small alphabet so names collide) -> bytes.
_names = st.sampled_from(["a", "b", "c.txt", "d d", "é"])
_trees = st.dictionaries(
    st.lists(_names, min_size=1, max_size=3).map("/".join), st.binary(max_size=64), min_size=1, max_size=8
).filter(lambda tree: not any(p != q and q.startswith(p + "/") for p in tree for q in tree))


def _build(root: str, tree: dict[str, bytes]) -> None:
    for relative, data in tree.items():
        write(os.path.join(root, relative), data)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=_trees, data=st.data())
def test_any_change_changes_the_digest_and_is_named_by_verification(tree, data):
    with tempfile.TemporaryDirectory() as scratch:
        root = os.path.join(scratch, "d")
        _build(root, tree)
        recorded = hash_file(root)
        ledger = open_ledger(f"memory://dirs-{uuid.uuid4().hex}")
        now = datetime.now(timezone.utc)
        task = Record(engine="test", run_id="r", task_id="t", task_name="t", status="succeeded",
                      started=now, ended=now, outputs=entries_of([recorded]))
        ledger.append_records([r.stored() for r in [*manifest_records_of([recorded]), task]])

        files = sorted(tree)
        kind = data.draw(st.sampled_from(["byte", "append", "remove", "add", "mkdir", "link"]))
        target = data.draw(st.sampled_from(files))
        path = os.path.join(root, target)
        if kind == "byte" and tree[target]:
            index = data.draw(st.integers(0, len(tree[target]) - 1))
            changed = bytearray(tree[target])
            changed[index] ^= data.draw(st.integers(1, 255))
            write(path, bytes(changed))
        elif kind in ("byte", "append"):
            write(path, tree[target] + b"!")
        elif kind == "remove":
            os.unlink(path)
        elif kind == "add":
            target = target + ".new"
            write(os.path.join(root, target), b"")
        elif kind == "mkdir":
            target = target + ".dir"
            os.mkdir(os.path.join(root, target))
        else:
            os.unlink(path)
            os.symlink("elsewhere", path)

        now_artifact = hash_file(root)
        assert now_artifact.blake3 != recorded.blake3
        check = check_artifact(ledger, root)
        assert check.status is ArtifactStatus.MODIFIED
        named = check.changes.changed + check.changes.appeared + check.changes.disappeared
        assert target in named, (kind, target, check.changes)
        ledger.close()


# -- through the CLI -------------------------------------------------------------------------
def test_cli_run_records_directories_and_verify_names_the_files_inside(cli, workdir):
    write(workdir / "reads" / "A.fq", "ACGT")
    write(workdir / "reads" / "B.fq", "TTGA")
    cli("run", "-i", "reads", "-o", "qc", "--", "sh", "-c",
        "mkdir -p qc/A && cp reads/A.fq qc/A/report.txt && echo ok > qc/summary.txt", check_rc=0)
    digest = cli("hash", "--dir", "qc", check_rc=0).stdout.split()[0]  # as records name it
    with open_ledger() as ledger:
        assert ledger.producer("qc").record.outputs[str(workdir / "qc")]["blake3"] == digest
    ok = verify(cli, "qc", check_rc=0)
    assert "qc" in ok.stdout and "MODIFIED" not in ok.stdout
    assert "OK" in verify(cli, "qc/A", check_rc=0).stdout  # a subdirectory of a recorded one

    edit_keeping_mtime(workdir / "qc" / "A" / "report.txt", "ACGG")  # same size, same mtime
    write(workdir / "qc" / "extra.txt", "new")
    os.unlink(workdir / "qc" / "summary.txt")
    failed = verify(cli, "qc", check_rc=1)
    assert "changed: A/report.txt" in failed.stdout
    assert "appeared: extra.txt" in failed.stdout and "disappeared: summary.txt" in failed.stdout
    assert "changed: A/report.txt" in verify(cli, check_rc=1).stdout  # the full audit says it too

    # A file, and a subdirectory, inside the recorded directory, named by themselves.
    inside = verify(cli, "qc/A/report.txt", check_rc=1)
    assert "in the recorded directory" in inside.stdout and "MODIFIED" in inside.stdout
    assert "changed: report.txt" in verify(cli, "qc/A", check_rc=1).stdout
    reads = verify(cli, "reads/A.fq", check_rc=0)
    assert "UNRECORDED" not in reads.stdout

    why = cli("why", "qc/A/report.txt", check_rc=0)
    assert "lies in the recorded directory qc" in why.stdout and "reads" in why.stdout
    depends = cli("depends", "reads/B.fq", check_rc=0)
    assert "lies in the recorded directory reads" in depends.stdout and "qc" in depends.stdout
    assert "qc" in cli("depends", "reads", check_rc=0).stdout


def test_cli_json_names_the_changes(cli, workdir):
    write(workdir / "in.txt", "x")
    cli("run", "-i", "in.txt", "-o", "out", "--", "sh", "-c", "mkdir out && echo 1 > out/one", check_rc=0)
    write(workdir / "out" / "one", "2\n")
    report = verify(cli, "--json", "out", check_rc=1)
    import json

    data = json.loads(report.stdout)
    check = data["targets"][0]["check"]
    assert check["status"] == "MODIFIED" and check["changes"]["changed"] == ["one"]


def test_a_directory_in_a_tree_given_to_verify_is_checked_whole(cli, workdir):
    write(workdir / "src.txt", "s")
    cli("run", "-i", "src.txt", "-o", "results/index", "--", "sh", "-c",
        "mkdir -p results/index && echo i > results/index/part1", check_rc=0)
    result = verify(cli, "results", check_rc=0)
    assert "UNRECORDED" not in result.stdout


def test_manifest_is_stored_once_per_distinct_directory(url, spool, tmp_path):
    ref = tmp_path / "ref"
    for i in range(5):
        write(ref / f"chr{i}.fa", "ACGT" * i)
    now = datetime.now(timezone.utc)
    with TaskCapture(url, engine="test", spool=spool, raise_errors=True) as capture:
        for i in range(3):
            out = write(tmp_path / f"out{i}.txt", str(i))
            capture.submit(TaskRun(f"t{i}", "align", "succeeded", now, now, inputs=[str(ref)], outputs=[out]))
    digest = hash_file(ref).blake3
    with open_ledger(url) as ledger:
        assert len(ledger.run(MANIFEST_RUN_PREFIX + digest)) == 1
        assert ledger.manifest(digest) == hash_file(ref).manifest
        assert len(ledger.consumers(str(ref))) == 3
        assert ledger.consumers(str(ref))[0].record.inputs[str(ref)]["type"] == "dir"


def test_files_named_beside_their_directory_take_the_digests_its_manifest_lists(url, spool, tmp_path):
    """A record naming a directory and files inside it (the Nextflow plugin's do): each file's
    entry is its own digest (taken from the manifest just made, not read again); a file
    reached through a link inside the directory is hashed by its real path, outside it."""
    out = tmp_path / "outdir"
    first = write(out / "a.txt", "alpha")
    deep = write(out / "sub" / "b.txt", "beta beta")
    elsewhere = write(tmp_path / "ref" / "r.txt", "reference")
    os.symlink(elsewhere, out / "r.txt")
    os.symlink(tmp_path / "ref", out / "refs")
    now = datetime.now(timezone.utc)
    named = [str(out), first, deep, str(out / "r.txt")]
    with TaskCapture(url, engine="test", spool=spool, raise_errors=True) as capture:
        capture.submit(TaskRun("t", "make", "succeeded", now, now, outputs=named)).result(30)
    with open_ledger(url) as ledger:
        (found,) = ledger.producers(first)
    outputs = found.record.outputs
    assert outputs[str(out)] == {**hash_file(out).entry()} and outputs[str(out)]["type"] == "dir"
    for path in (first, deep, elsewhere):
        assert outputs[path] == hash_file(path).entry()
    assert outputs[str(out / "r.txt")] == {**hash_file(elsewhere).entry(), "alias_of": elsewhere}
    assert ["refs", "link", str(tmp_path / "ref")] in ledger_manifest_entries(url, outputs[str(out)]["blake3"])


def ledger_manifest_entries(url, digest: str) -> list[list]:
    with open_ledger(url) as ledger:
        return [list(entry) for entry in ledger.manifest(digest).entries]


# -- the pre-run check -------------------------------------------------------------------------
def _capture_dir_output(url, spool, tmp_path):
    raw = write(tmp_path / "raw.txt", "raw")
    out = tmp_path / "qc"
    write(out / "A" / "stats.txt", "12345")
    write(out / "B" / "stats.txt", "67890")
    now = datetime.now(timezone.utc)
    with TaskCapture(url, engine="test", spool=spool, raise_errors=True) as capture:
        capture.submit(TaskRun("qc", "qc", "succeeded", now, now, inputs=[raw], outputs=[str(out)])).result(30)
    return raw, out


def test_strict_refuses_a_directory_edited_with_its_mtime_restored(url, spool, tmp_path):
    raw, out = _capture_dir_output(url, spool, tmp_path)
    with open_ledger(url) as ledger:
        assert check_before_run(ledger, [str(out), raw], "strict") == []
    edit_keeping_mtime(out / "B" / "stats.txt", "67891")
    with open_ledger(url) as ledger:
        with pytest.raises(ArtifactMismatch, match="changed: B/stats.txt"):
            check_before_run(ledger, [str(out), raw], "strict")
        [check] = check_before_run(ledger, [str(out)], "rerun")
        assert check.changes.changed == ["B/stats.txt"]


def test_pre_run_check_reports_an_unhashable_file_alone_and_goes_on(url, spool, tmp_path):
    raw = write(tmp_path / "raw.txt", "raw")
    other = write(tmp_path / "other.txt", "other")
    was_file = write(tmp_path / "was_file.txt", "f")
    now = datetime.now(timezone.utc)
    with TaskCapture(url, engine="test", spool=spool, raise_errors=True) as capture:
        capture.submit(TaskRun("t", "t", "succeeded", now, now, inputs=[raw, other, was_file])).result(30)
    os.unlink(raw)
    os.mkfifo(raw)  # there, but not a file it can read
    os.unlink(was_file)
    os.mkdir(was_file)  # a directory where a file was
    write(other, "tampered")
    latin1 = os.fsdecode(os.fsencode(str(tmp_path)) + b"/caf\xe9.txt")  # a name no record can hold
    with open(os.fsencode(latin1), "wb") as handle:
        handle.write(b"x")
    with open_ledger(url) as ledger:
        checks = {c.path: c for c in check_before_run(ledger, [raw, was_file, latin1, other], "rerun")}
        assert latin1 not in checks
        assert checks[raw].status is ArtifactStatus.UNREADABLE and "regular file" in checks[raw].reason
        assert checks[was_file].status is ArtifactStatus.MODIFIED and "directory" in checks[was_file].reason
        assert checks[other].status is ArtifactStatus.MODIFIED
        with pytest.raises(ArtifactMismatch) as refused:
            check_before_run(ledger, [raw, was_file, other], "strict")
        assert "UNREADABLE" in str(refused.value) and "other.txt" in str(refused.value)


# -- symbolic link loops in trees given to commands ------------------------------------------
def test_a_symlink_loop_in_a_tree_is_reported_and_skipped(cli, workdir):
    write(workdir / "data" / "a.txt", "a")
    os.symlink("loop2", workdir / "data" / "loop1")
    os.symlink("loop1", workdir / "data" / "loop2")
    hashed = cli("hash", "data", check_rc=0)
    assert "a.txt" in hashed.stdout and "skipped data/loop1: symbolic link loop" in hashed.stderr
    cli("run", "-i", "data/a.txt", "-o", "b.txt", "--", "sh", "-c", "cp data/a.txt b.txt", check_rc=0)
    verified = verify(cli, "data", check_rc=0)
    assert "data/a.txt OK" in verified.stdout or "a.txt" in verified.stdout
    assert "skipped data/loop2: symbolic link loop" in verified.stderr


def test_log_says_it_shows_the_last_records_and_lists_no_manifests(cli, workdir):
    write(workdir / "in" / "a.txt", "a")
    directory = hash_file(workdir / "in")
    now = datetime.now(timezone.utc)
    tasks = [Record(engine="test", run_id="r", task_id=str(i), task_name=f"t{i}", status="succeeded",
                    started=now, ended=now, inputs=entries_of([directory])) for i in range(22)]
    with open_ledger() as ledger:
        ledger.append_records([r.stored() for r in [*manifest_records_of([directory]), *tasks]])
    shown = cli("log", check_rc=0)
    assert len(shown.stdout.splitlines()) == 20
    assert "showing the last 20 of 23 records; -n 0 shows all" in shown.stderr
    everything = cli("log", "-n", "0", check_rc=0)
    assert len(everything.stdout.splitlines()) == 22 and "showing" not in everything.stderr
    assert "directory manifest" not in everything.stdout


def test_a_file_read_from_inside_a_produced_directory_has_the_directorys_lineage(cli, workdir):
    write(workdir / "genome.fa", ">chr1\nACGT\n")
    cli("run", "-i", "genome.fa", "-o", "index", "--", "sh", "-c",
        "mkdir index && cp genome.fa index/genome.idx", check_rc=0)
    cli("run", "-i", "index/genome.idx", "-o", "aligned.txt", "--", "sh", "-c",
        "cat index/genome.idx > aligned.txt", check_rc=0)
    why = cli("why", "aligned.txt", check_rc=0).stdout
    assert "index/genome.idx" in why and "genome.fa" in why and "(source)" in why.splitlines()[-1]
    assert "genome.idx" not in why.splitlines()[-1]  # the directory's input is the source, not the file
    assert "BROKEN" not in verify(cli, "aligned.txt", check_rc=0).stdout
