"""Records and blocks for tests, made the way engines make them (no pytest needed)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone

from blake3 import blake3

from .._log.chain import ChainTip, build_block
from .._model import Artifact, Record, StoredBlock, artifact_map

#: The start time of record 0; record ``i`` starts ``i`` seconds later and lasts one second.
BASE_TIME = datetime(2026, 1, 1, tzinfo=timezone.utc)


def artifact(path: str, content: str) -> Artifact:
    """The artifact a file at ``path`` holding ``content`` (UTF-8) would be recorded as."""
    data = content.encode()
    return Artifact(path, blake3(data).hexdigest(), len(data))


def make_record(i: int, *, run_id: str = "run-1", inputs: Iterable[Artifact] = (),
                outputs: Iterable[Artifact] = (), status: str = "succeeded", engine: str = "test",
                name: str | None = None) -> Record:
    """Record number ``i`` of a run: task ``task-{i}``, deterministic times and parameters."""
    return Record(
        engine=engine, run_id=run_id, task_id=f"task-{i}", task_name=name or f"step{i % 7}",
        status=status, started=BASE_TIME + timedelta(seconds=i), ended=BASE_TIME + timedelta(seconds=i + 1),
        inputs=artifact_map(list(inputs), "inputs"), outputs=artifact_map(list(outputs), "outputs"),
        parameters={"i": i},
        environment={"host": "test"},
    )


def make_records(n: int, *, run_id: str = "run-1", start: int = 0) -> list[Record]:
    """``n`` records; record ``i`` reads ``/data/in-{i % 5}`` and writes ``/data/out-{run_id}-{i}``."""
    return [
        make_record(i, run_id=run_id, outputs=[artifact(f"/data/out-{run_id}-{i}", str(i))],
                    inputs=[artifact(f"/data/in-{i % 5}", f"in{i % 5}")])
        for i in range(start, start + n)
    ]


def chain_of(records: Sequence[Record], block_size: int) -> list[StoredBlock]:
    """The records cut into a hash-chained run of blocks of ``block_size``, from genesis."""
    blocks: list[StoredBlock] = []
    prev: ChainTip | None = None
    for begin in range(0, len(records), block_size):
        block = build_block([r.stored() for r in records[begin : begin + block_size]], prev)
        blocks.append(block.stored())
        prev = block.header
    return blocks
