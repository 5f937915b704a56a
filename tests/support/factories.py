"""Records for tests, made the way engines make them."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from blake3 import blake3

from lineage_ledger import Artifact, Record

BASE_TIME = datetime(2026, 1, 1, tzinfo=timezone.utc)


def artifact(path: str, content: str) -> Artifact:
    data = content.encode()
    return Artifact(path, blake3(data).hexdigest(), len(data))


def make_record(i: int, *, run_id: str = "run-1", inputs=(), outputs=(), status: str = "succeeded",
                engine: str = "test", name: str | None = None) -> Record:
    return Record(
        engine=engine, run_id=run_id, task_id=f"task-{i}", task_name=name or f"step{i % 7}",
        status=status, started=BASE_TIME + timedelta(seconds=i), ended=BASE_TIME + timedelta(seconds=i + 1),
        inputs=list(inputs), outputs=list(outputs), parameters={"i": i},
        environment={"host": "test"},
    )


def make_records(n: int, *, run_id: str = "run-1", start: int = 0):
    return [
        make_record(i, run_id=run_id, outputs=[artifact(f"/data/out-{run_id}-{i}", str(i))],
                    inputs=[artifact(f"/data/in-{i % 5}", f"in{i % 5}")])
        for i in range(start, start + n)
    ]
