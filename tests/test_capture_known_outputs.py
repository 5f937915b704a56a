"""``TaskRun.known_outputs``: a file updated in place has a read digest and a written one."""

from __future__ import annotations

from lineage_ledger import TaskCapture, TaskRun, open_ledger, utcnow


def test_known_outputs_keep_the_written_digest_apart_from_the_read_one(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text("before\nafter\n")
    read = {"blake3": "a" * 64, "size": 7}
    written = {"blake3": "b" * 64, "size": 13}
    url, spool = f"sqlite:///{tmp_path}/ledger.db", str(tmp_path / "spool")
    with TaskCapture(url, engine="test", spool=spool, raise_errors=True) as capture:
        now = utcnow()
        split = capture.record_now(TaskRun(task_id="1", task_name="append", status="succeeded", started=now,
                                           ended=now, inputs=[str(log)], outputs=[str(log)],
                                           known={str(log): read}, known_outputs={str(log): written}))
        # Without it, `known` serves both (as before), and an output it lacks is hashed from disk.
        shared = capture.record_now(TaskRun(task_id="2", task_name="append", status="succeeded", started=now,
                                            ended=now, inputs=[str(log)], outputs=[str(log)],
                                            known={str(log): read}))
        from_disk = capture.record_now(TaskRun(task_id="3", task_name="append", status="succeeded", started=now,
                                               ended=now, inputs=[str(log)], outputs=[str(log)],
                                               known={str(log): read}, known_outputs={}))
    with open_ledger(url, spool=spool) as ledger:
        records = {entry.id: entry.record for entry in ledger.recent(10)}
    assert records[split].inputs[str(log)] == read and records[split].outputs[str(log)] == written
    assert records[shared].inputs[str(log)] == read and records[shared].outputs[str(log)] == read
    assert records[from_disk].outputs[str(log)]["size"] == 13
    assert records[from_disk].outputs[str(log)]["blake3"] != read["blake3"]
