"""What a Parsl try's record says when the memoizer's check could not vouch for its inputs.

The shape of ``tests/test_deleted_rows_engines.py``: a python app copies a source file (one
no task produced) to an output; the run is recorded, and a strict run with nothing changed
checks it (a cache hit). Then the source is edited with its size and mtime put back and every
index row naming it deleted, so the ledger fails its own check (``IndexTampered``). The edit
changes the source's content key, so the next run is a cache MISS under every policy (keyed
by path instead, it is a hit, reused under ``warn`` and ignored under ``rerun``):

* ``strict``: the try is refused (``refused_by``, ``check_failed``, ``not_verified``).
* ``warn`` and ``rerun``: the app runs on the edited source. Its record must list neither
  the unverified input nor the output made from it (both are named in ``not_verified``,
  their digests under ``not_verified_digests``), and say ``check_failed``. A record naming
  the source as read, with its current digest, gave the hidden edit the record the next
  check compares with: the strict run after a warn or rerun run passed it (the three such
  cases failed so before).

Each case then runs under ``strict`` again, which must still refuse. A cache HIT under
``warn`` (the source edited and keyed by path, or the output edited) lists none of the files
and keeps their digests under ``not_verified_digests`` too (it kept only their names before).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.tamper import delete_rows, tamper_keep_size_and_mtime
from tests.test_deleted_rows_engines import recorded

pytest.importorskip("parsl", reason="the Parsl plugin needs parsl (make install installs it)")
pytest.importorskip("lineage_ledger_parsl", reason="make install installs plugins/parsl")


def copy_text(inputs: Any = (), outputs: Any = ()) -> int:
    """Copies its input to its output; the number of lines."""
    with open(inputs[0]) as src, open(outputs[0], "w") as dst:
        text = src.read()
        dst.write(text)
    return text.count("\n")


def _run(workdir: Path, policy: str, file_key: str = "content", also_read: tuple[str, ...] = ()) -> tuple[Any, str]:
    """One DataFlowKernel (threads, checkpoints at task exit) running ``copy_text`` once
    (``also_read``: more input files, after the source)."""
    from lineage_ledger_parsl import ParslLedger
    from parsl.app.app import python_app
    from parsl.data_provider.files import File

    from tests.support import parsl as support

    pipeline = support.load_pipeline()
    config = pipeline.make_config(str(workdir), "threads", ParslLedger(f"sqlite:///{workdir / 'ledger.db'}",
                                                                       policy=policy, file_key=file_key))
    app = python_app(copy_text, cache=True)
    with support.loaded(config) as dfk:  # cleanup flushes the capture: the records are in
        inputs = [File(str(workdir / name)) for name in ("src.txt", *also_read)]
        future = app(inputs=inputs, outputs=[File(str(workdir / "out.txt"))])
        future.exception()  # wait; the test asserts what it expects of the outcome
        return future, dfk.run_id


def _records_of(workdir: Path, run_id: str) -> list[dict]:
    return [r for r in recorded(workdir / "ledger.db") if r.get("run_id") == run_id]


def _digest(path: Path) -> dict[str, Any]:
    from lineage_ledger import hash_file

    found = hash_file(str(path))
    return {"blake3": found.blake3, "size": found.size}


@pytest.mark.parametrize("file_key", ["content", "path"])
@pytest.mark.parametrize("policy", ["strict", "warn", "rerun"])
def test_a_failed_check_is_recorded_and_launders_nothing(workdir, caplog, policy, file_key):
    from lineage_ledger import IndexTampered

    src, out = workdir / "src.txt", workdir / "out.txt"
    src.write_text("".join(f"line {i}\n" for i in range(50)))
    first, _ = _run(workdir, "warn", file_key)
    assert first.result() == 50 and not first.task_record["from_memo"]
    control, _ = _run(workdir, "strict", file_key)  # nothing changed: the check passes, the result is reused
    assert control.result() == 50 and control.task_record["from_memo"]

    tamper_keep_size_and_mtime(src)
    delete_rows(workdir / "ledger.db", src)
    out_before = out.read_bytes()
    third, run_id = _run(workdir, policy, file_key)
    (record,) = _records_of(workdir, run_id)
    assert "IndexTampered" in record["extra"]["check_failed"], record["extra"]
    if policy == "strict":
        with pytest.raises(IndexTampered, match="left out record"):
            third.result()
        assert out.read_bytes() == out_before  # refused: it never ran
        assert record["status"] == "failed" and record["extra"]["refused_by"] == "strict"
    elif policy == "warn" and file_key == "path":
        # Keyed by path, the edit is a hit: reused, and the cached try vouches for nothing.
        assert third.result() == 50 and third.task_record["from_memo"]
        assert out.read_bytes() == out_before
        assert record["status"] == "cached" and record["inputs"] == {} and record["outputs"] == {}
        assert record["extra"]["not_verified"] == sorted([str(src), str(out)])
        assert record["extra"]["not_verified_digests"] == {
            "inputs": {str(src): _digest(src)}, "outputs": {str(out): _digest(out)}}
    else:
        # A miss (the edit changed the content key), or under rerun a hit ignored (keyed by
        # path): the app ran on the edited source.
        assert third.result() == 50 and not third.task_record["from_memo"]
        assert out.read_bytes() == src.read_bytes() != out_before
        assert any("left out record" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")
        assert record["status"] == "succeeded", record
        # Neither the unverified input nor what was made of it is vouched for; both named.
        assert record["inputs"] == {} and record["outputs"] == {}, record
        assert record["extra"]["not_verified"] == sorted([str(src), str(out)])
        assert record["extra"]["not_verified_digests"] == {
            "inputs": {str(src): _digest(src)}, "outputs": {str(out): _digest(out)}}
        assert "refused_by" not in record["extra"]
        if file_key == "path":  # rerun: the cached result was ignored for the failed check
            # of the source (the output's own check passes: check_each).
            assert record["extra"]["rerun_because_not_verified"] == [str(src)]
        else:  # a miss: no cached result was ignored
            assert "rerun_because_not_verified" not in record["extra"]

    # A later strict run still refuses the hidden edit: the run above laundered nothing.
    fourth, run_id = _run(workdir, "strict", file_key)
    assert fourth.exception() is not None, f"the strict run after {policy} passed the hidden edit"
    with pytest.raises(IndexTampered):
        fourth.result()
    (refused,) = _records_of(workdir, run_id)
    assert refused["status"] == "failed" and refused["extra"]["refused_by"] == "strict"
    assert refused["inputs"] == {} and refused["outputs"] == {}
    assert str(src) in refused["extra"]["not_verified"]


def _digests_listed(workdir: Path) -> set[str]:
    """Every digest the index holds, read straight from the table (opening the ledger would
    audit it, and the deleted rows fail that audit)."""
    import sqlite3

    with sqlite3.connect(workdir / "ledger.db") as conn:
        return {digest for (digest,) in conn.execute("SELECT digest FROM ll_artifacts")}


@pytest.mark.parametrize(("edited", "file_key"), [("src.txt", "path"), ("out.txt", "content"), ("out.txt", "path")])
def test_a_cache_hit_under_warn_keeps_the_digests_apart(workdir, edited, file_key):
    """A cache hit under ``warn`` on a ledger that fails its own check: the ``cached`` try
    lists none of the files whose own check fails, nor the outputs when an input is among
    them, and keeps their digests under ``not_verified_digests`` like the record of a try
    that ran on them. Keyed by path, a hidden edit of the source is
    a hit; an edit of the output is a hit under either key (outputs are keyed by URL)."""
    src, out = workdir / "src.txt", workdir / "out.txt"
    src.write_text("".join(f"line {i}\n" for i in range(50)))
    first, _ = _run(workdir, "warn", file_key)
    assert first.result() == 50 and not first.task_record["from_memo"]

    target = workdir / edited
    tamper_keep_size_and_mtime(target)
    delete_rows(workdir / "ledger.db", target)
    tampered = _digest(target)
    out_before = out.read_bytes()
    hit, run_id = _run(workdir, "warn", file_key)
    assert hit.result() == 50 and hit.task_record["from_memo"]  # reused: nothing ran
    assert out.read_bytes() == out_before

    (record,) = _records_of(workdir, run_id)
    extra = record["extra"]
    assert record["status"] == "cached" and extra["from_memo"] is True, record
    assert "IndexTampered" in extra["check_failed"], extra
    assert record["outputs"] == {}, record
    if edited == "src.txt":  # the result was made from the unverified source: neither listed
        assert record["inputs"] == {}, record
        assert extra["not_verified"] == sorted([str(src), str(out)])
        assert extra.get("not_verified_digests") == {
            "inputs": {str(src): _digest(src)}, "outputs": {str(out): _digest(out)}}, extra
    else:  # the source's own check passes (check_each): listed as read; the output left out
        assert list(record["inputs"]) == [str(src)], record
        assert extra["not_verified"] == [str(out)]
        assert extra.get("not_verified_digests") == {"inputs": {}, "outputs": {str(out): _digest(out)}}, extra
    assert "modified_outside_workflow" not in extra
    # Kept apart, the edited bytes' digest is in no index row: nothing vouches for it.
    assert tampered["blake3"] not in _digests_listed(workdir)

    # The next strict run still refuses the hidden edit.
    refused_run, run_id = _run(workdir, "strict", file_key)
    assert refused_run.exception() is not None, "the strict run after a warn cache hit passed the hidden edit"
    (refused,) = _records_of(workdir, run_id)
    assert refused["status"] == "failed" and refused["extra"]["refused_by"] == "strict"
    assert refused["inputs"] == {} and refused["outputs"] == {}
    assert str(target) in refused["extra"]["not_verified"]
    assert tampered["blake3"] not in _digests_listed(workdir)


@pytest.mark.parametrize("file_key", ["content", "path"])
@pytest.mark.parametrize("policy", ["warn", "rerun"])
def test_only_the_files_whose_own_check_fails_are_unverified(workdir, caplog, policy, file_key):
    """Only the output is edited and its index rows deleted: the check of the task's files as
    one batch fails (``IndexTampered``), and each file is then checked on its own
    (``lineage_ledger.check_each``, as Snakemake and Nextflow do). The source's own check
    passes: it is not unverified, and the try lists it as read. (Before, every file of the
    batch was unverified: the source too, and the records left it out.)

    Under ``warn`` the result is reused (outputs are keyed by URL: a hit under either key),
    and the ``cached`` try lists the source and leaves the output out. Under ``rerun`` the
    hit is ignored and the task rewrites the output from the verified source: its record
    lists both, the output with its new digest. Either way the edited bytes' digest is in no
    index row. The next strict run still refuses the edited output under ``warn``; under
    ``rerun`` the edit is gone (overwritten from the verified source, which that run's record
    vouches for), and the strict run passes the output as rewritten."""
    src, out = workdir / "src.txt", workdir / "out.txt"
    src.write_text("".join(f"line {i}\n" for i in range(50)))
    first, _ = _run(workdir, "warn", file_key)
    assert first.result() == 50 and not first.task_record["from_memo"]

    tamper_keep_size_and_mtime(out)
    delete_rows(workdir / "ledger.db", out)
    tampered = _digest(out)
    third, run_id = _run(workdir, policy, file_key)
    (record,) = _records_of(workdir, run_id)
    extra = record["extra"]
    assert "IndexTampered" in extra["check_failed"], extra
    assert str(src) not in extra.get("not_verified", []), extra
    assert str(src) not in extra.get("rerun_because_not_verified", []), extra
    # The source, whose own check passed, is listed as read, with the digest it has.
    assert list(record["inputs"]) == [str(src)], record
    assert record["inputs"][str(src)]["blake3"] == _digest(src)["blake3"]
    if policy == "warn":
        assert third.result() == 50 and third.task_record["from_memo"]
        assert record["status"] == "cached" and record["outputs"] == {}, record
        assert extra["not_verified"] == [str(out)], extra
        assert extra["not_verified_digests"] == {"inputs": {}, "outputs": {str(out): tampered}}, extra
    else:
        assert third.result() == 50 and not third.task_record["from_memo"]
        assert out.read_bytes() == src.read_bytes()  # rewritten from the verified source
        assert record["status"] == "succeeded", record
        assert extra["rerun_because_not_verified"] == [str(out)], extra
        assert "not_verified" not in extra, extra
        assert record["outputs"][str(out)]["blake3"] == _digest(out)["blake3"] != tampered["blake3"]
    assert tampered["blake3"] not in _digests_listed(workdir)

    strict, run_id = _run(workdir, "strict", file_key)
    (checked,) = _records_of(workdir, run_id)
    if policy == "warn":
        assert strict.exception() is not None, "the strict run after warn passed the hidden edit"
        assert checked["status"] == "failed" and checked["extra"]["refused_by"] == "strict"
        assert str(out) in checked["extra"]["not_verified"], checked
    else:
        assert strict.result() == 50, "the strict run refused an output rewritten from a verified source"
        assert checked["extra"].get("check_failed") is None, checked
    assert tampered["blake3"] not in _digests_listed(workdir)


@pytest.mark.parametrize("policy", ["warn", "rerun"])
def test_a_modified_file_and_an_unverified_one_in_the_same_task(workdir, policy):
    """One input plainly edited (its index rows intact: its own check finds it MODIFIED) and
    the output edited with its rows deleted (its own check fails), keyed by path: a hit.
    Under ``warn`` the ``cached`` try names each as what it is (``modified_outside_workflow``,
    ``not_verified``) and lists only the source. Under ``rerun`` both reasons to run again
    are named (before, an unverified file beside a modified one was dropped from the record)."""
    src, note, out = workdir / "src.txt", workdir / "note.txt", workdir / "out.txt"
    src.write_text("".join(f"line {i}\n" for i in range(50)))
    note.write_text("a note\n")
    first, _ = _run(workdir, "warn", "path", also_read=("note.txt",))
    assert first.result() == 50

    note.write_text("a note, edited\n")
    tamper_keep_size_and_mtime(out)
    delete_rows(workdir / "ledger.db", out)
    tampered = _digest(out)
    third, run_id = _run(workdir, policy, "path", also_read=("note.txt",))
    assert third.result() == 50
    (record,) = _records_of(workdir, run_id)
    extra = record["extra"]
    assert "IndexTampered" in extra["check_failed"], extra
    if policy == "warn":
        assert third.task_record["from_memo"] and record["status"] == "cached"
        assert list(record["inputs"]) == [str(src)] and record["outputs"] == {}, record
        assert extra["modified_outside_workflow"] == [str(note)], extra
        assert extra["not_verified"] == [str(out)], extra
        assert extra["not_verified_digests"] == {"inputs": {}, "outputs": {str(out): tampered}}, extra
    else:
        assert not third.task_record["from_memo"] and record["status"] == "succeeded"
        assert extra["rerun_because_modified"] == [str(note)], extra
        assert extra["rerun_because_not_verified"] == [str(out)], extra
        assert record["outputs"][str(out)]["blake3"] == _digest(out)["blake3"] != tampered["blake3"]
    assert tampered["blake3"] not in _digests_listed(workdir)
