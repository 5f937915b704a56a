"""A full audit spread over worker processes, for ledgers big enough to pay for them.

Each worker opens the same SQLite file the way the parent chose (``worker_spec``), or a
read-only session of the same PostgreSQL database, verifies
a range of blocks as the sequential audit does (ids, heights, links inside the range, Merkle
roots, record hashes, the index rows of those records, the outputs on disk: by whole columns
in :mod:`.audit_bulk`, row by row where those disagree) and sends back each block's id and
leaf hashes and the record ids. The parent joins the ranges (the
first block of each range must link to the last block of the one before, and start at the
leaf the ones before ended on), builds the tree and runs the duplicate filter, as the
sequential audit does.

Trust does not depend on the workers agreeing with anything the parent did not check: the
parent only ever adds leaves a worker derived from bodies that hashed to their ids. When a
worker finds anything wrong, or the ranges do not join, the parent discards its work and
runs the sequential audit, whose error names the problem exactly: the parallel path only has
to be fast on a ledger that is intact.

Why processes: the audit is CPU-bound Python (decoding and comparing each record), so
threads share one core; a worker costs one interpreter start (about 0.2 s), paid only above
:data:`MIN_RECORDS` records. ``LINEAGE_AUDIT_WORKERS`` sets the number (``1``: none);
``LINEAGE_AUDIT_PARALLEL_MIN`` and ``LINEAGE_AUDIT_TASK_RECORDS`` move the threshold and the
range size (the tests use them to run small ledgers through this path); ``LINEAGE_AUDIT_BULK=0``
makes the workers check row by row only (the benchmark's comparison). Where no workers start,
the same ranges are checked in this process (:func:`results_here`), by the bulk check only:
where it finds anything unequal, the sequential audit runs.
Workers are Python processes on pipes (:func:`worker_command`), not :mod:`multiprocessing`:
nothing is pickled, and a caller's unguarded ``__main__`` script is never run again.
"""

from __future__ import annotations

import gc
import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from typing import IO, Any

from .audit_bulk import weight
from .names import BUCKETS, ENTRY_SIZE, HOT_RECORDS, Hot

__all__ = ["MIN_RECORDS", "RangeResult", "Task", "plan", "results"]

MIN_RECORDS = 200_000  # below this a worker's start costs more than it saves
# Memory: a worker holds the interpreter (about 23 MiB with its imports), a chunk of 1,000
# bodies and its folded index, and the names of its task's records (one entry per distinct
# path, about 200 bytes each in Python until packed); the parent about 62 MiB. With ranges of
# 25,000 records a worker peaked at 66-69 MiB, and ten workers (what a machine of ten cores or
# more starts) summed 755 MiB at 1M records, past the audit's 512 MiB goal; with 10,000,
# 44-45 MiB and 503 summed; with 8,000, 40-41 MiB and 466 summed, 447 at once (5,000: 37
# MiB a worker). Names that many records of a range name are sent apart and joined by the
# parent (names.HotNames), so smaller ranges do not give a file every task reads more entries.
# CPU: about 20-30 us a record in a worker (bulk check; 34 row by row) and about 1.9 us in
# the parent (duplicate filter, log tree, pipes), so the parent keeps up with ten busy workers.
MAX_WORKERS = 10
RECORDS_PER_TASK = 8_000  # a task's leaves and ids are about 0.5 MB in transit
# Ranges are sized in records of task-shaped width (audit_bulk.weight).


@dataclass(frozen=True)
class Task:
    start: int  # first block height
    stop: int  # one past the last
    first_index: int  # the leaf index of the first record, as the block rows claim


@dataclass
class RangeResult:
    first_prev: str | None  # the first block's link, for the parent to join ranges
    block_ids: list[str]
    counts: list[int]  # records per block
    leaves: bytes  # 32 bytes a record
    ids: bytes  # 32 bytes a record
    compared: int  # index rows compared
    artifacts: int  # artifact rows the records name
    outputs: list[str]  # output paths found on disk
    name_counts: list[int]  # the records' names (:mod:`.names`): entries per bucket
    names: bytes  # and the entries, packed
    hot: list[Hot]  # less the names many of its records name, kept apart for the parent to join
    latest: str = ""  # the latest end, in the ledger's order, of its records (.tree_head.TreeHead.latest)


def workers() -> int:
    """How many worker processes an audit may start (0 where it should not)."""
    configured = os.environ.get("LINEAGE_AUDIT_WORKERS", "").strip()
    if configured:
        try:
            count = int(configured)
        except ValueError:
            count = 1
    else:
        try:
            count = min(MAX_WORKERS, len(os.sched_getaffinity(0)))
        except AttributeError:  # not Linux
            count = min(MAX_WORKERS, os.cpu_count() or 1)
    return count if count > 1 else 0


# A worker's first steps (``python -c``). Not ``-m lineage_ledger._log.audit_parallel``: Python
# puts the current directory first on sys.path for ``-m`` and ``-c`` alike, and a json.py (or
# msgspec.py, sqlite3.py...) in the directory the audit was started in, which another local
# user may be able to write, was imported by every worker as code
# (tests/test_audit_s48_worker_start.py); that entry ("" for ``-c``) is taken off before
# anything is imported (site's imports come before Python adds it). The package's
# ``__init__`` is not run: it imports the whole library, none of which a worker runs (2.4 MiB
# and 50 ms of CPU a worker); a bare module stands for the package, at the folders the
# parent imported it from (argument 1), so its subpackages import as they do in the parent.
_BOOT = """import sys
if sys.path[:1] == [""]:
    del sys.path[0]
import json, types
package = types.ModuleType("lineage_ledger")
package.__path__ = json.loads(sys.argv[1])
sys.modules["lineage_ledger"] = package
from lineage_ledger._log.audit_parallel import _worker_entry
_worker_entry()
"""


def worker_command() -> list[str]:
    """The command that starts an audit worker (:data:`_BOOT`)."""
    # The package this module is in, imported already (no import of the top package here:
    # this layer does not import the one above it, tests/test_layout.py).
    package = sys.modules[__name__.partition(".")[0]]
    return [sys.executable, "-c", _BOOT, json.dumps(list(package.__path__))]


def plan(backend: Any, records: int, stop: int) -> list[Task] | None:
    """Ranges of blocks for the workers, or None where the audit should run in this process.
    The block rows' counts only place the ranges; the workers check what they claim."""
    minimum = int(os.environ.get("LINEAGE_AUDIT_PARALLEL_MIN", MIN_RECORDS))
    if records < minimum or not workers() or not hasattr(backend, "worker_spec"):
        return None
    tasks = _ranges(backend, stop)
    return tasks if len(tasks) > 1 else None


def plan_here(backend: Any, stop: int) -> list[Task] | None:
    """Ranges for :func:`results_here`, or None where the back-end has no bulk check (or
    ``LINEAGE_AUDIT_BULK=0``): then the sequential audit runs."""
    if not hasattr(backend, "audit_chunk") or not _bulk():
        return None
    return _ranges(backend, stop) or None


def _bulk() -> bool:
    return os.environ.get("LINEAGE_AUDIT_BULK", "").strip() != "0"


def _ranges(backend: Any, stop: int) -> list[Task]:
    per_task = int(os.environ.get("LINEAGE_AUDIT_TASK_RECORDS", RECORDS_PER_TASK))
    tasks: list[Task] = []
    start = first = taken = index = 0
    height = -1
    blocks = backend.block_weights() if hasattr(backend, "block_weights") else \
        [(h, c, 0) for h, c in backend.block_counts()]
    for height, count, first_body in blocks:
        if height >= stop:  # appended after the audit read the head: not part of it
            height = stop - 1
            break
        taken += weight(count, first_body)
        index += max(0, count)
        if taken >= per_task:
            tasks.append(Task(start, height + 1, first))
            start, first, taken = height + 1, index, 0
    if height + 1 > start:
        tasks.append(Task(start, height + 1, first))
    return tasks


def results(backend: Any, tasks: list[Task], *, files: bool, names_from: int = 0,
            checked_below: int = 0) -> Iterator[tuple[Task, RangeResult | None]]:
    """Each task's result in order (None where its worker found something wrong or died),
    with the names of the records from leaf ``names_from`` on (:func:`.audit_bulk.name_from`),
    the bodies of those below leaf ``checked_below`` checked already
    (:func:`.audit_records.decode_checked`).

    Task ``i`` goes to worker ``i % n``, which answers its tasks in order on its own pipe, so
    reading the pipes round-robin gives the results in ledger order; a worker blocks on a full
    pipe until its turn comes, which bounds memory whatever the ledger's size."""
    count = min(workers(), len(tasks))
    url, uri = backend.worker_spec()
    command = worker_command()
    procs = []
    try:
        for w in range(count):
            mine = [{"start": t.start, "stop": t.stop, "first_index": t.first_index}
                    for t in tasks[w::count]]
            proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, close_fds=True)
            procs.append(proc)
            assert proc.stdin is not None
            proc.stdin.write(json.dumps({"url": url, "uri": uri, "files": files, "names_from": names_from,
                                         "checked_below": checked_below, "tasks": mine}).encode())
            proc.stdin.close()
        for i, task in enumerate(tasks):
            stream = procs[i % count].stdout
            assert stream is not None
            result = _read_result(stream)
            yield task, result
            if result is None:
                return
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def results_here(backend: Any, tasks: list[Task], *, files: bool, names_from: int = 0,
                 checked_below: int = 0) -> Iterator[tuple[Task, RangeResult | None]]:
    """:func:`results` computed in this process, one range after another: the bulk check of a
    worker, for a ledger too small to pay for workers or a machine with one core (about
    two thirds of the CPU of the sequential audit's record-by-record check). None, and
    nothing after it, where a range did not compare equal; the sequential audit then runs."""
    for task in tasks:
        result = audit_range(backend, task, files, rows=False, names_from=names_from, checked_below=checked_below)
        yield task, result
        if result is None:
            return


_FRAME = struct.Struct("<IIII")  # header length, leaves length, ids length, names length


def _write_result(stream: IO[bytes], result: RangeResult | None) -> None:
    if result is None:
        stream.write(_FRAME.pack(0, 0, 0, 0))
        return
    header = json.dumps({"first_prev": result.first_prev, "block_ids": result.block_ids,
                         "counts": result.counts, "compared": result.compared,
                         "artifacts": result.artifacts, "outputs": result.outputs,
                         "name_counts": result.name_counts, "hot": result.hot, "latest": result.latest}).encode()
    stream.write(_FRAME.pack(len(header), len(result.leaves), len(result.ids), len(result.names)))
    stream.write(header)
    stream.write(result.leaves)
    stream.write(result.ids)
    stream.write(result.names)
    stream.flush()


def _read_result(stream: IO[bytes]) -> RangeResult | None:
    """One worker's answer; None for a refusal, a dead worker or a malformed frame."""
    try:
        head = _read_exactly(stream, _FRAME.size)
        sizes = _FRAME.unpack(head)
        if sizes[0] == 0:
            return None
        header = json.loads(_read_exactly(stream, sizes[0]))
        leaves = _read_exactly(stream, sizes[1])
        ids = _read_exactly(stream, sizes[2])
        names = _read_exactly(stream, sizes[3])
        result = RangeResult(header["first_prev"], header["block_ids"], header["counts"], leaves, ids,
                             header["compared"], header["artifacts"], header["outputs"],
                             header["name_counts"], names, [Hot(*entry) for entry in header["hot"]],
                             header["latest"])
    except (EOFError, ValueError, KeyError, TypeError, struct.error):
        return None
    if sum(result.counts) * 32 != len(leaves) or len(ids) != len(leaves) or \
            len(result.counts) != len(result.block_ids) or len(result.name_counts) != BUCKETS or \
            sum(result.name_counts) * ENTRY_SIZE != len(names) or not all(map(_well_formed, result.hot)) or \
            type(result.latest) is not str:
        return None
    return result


def _well_formed(hot: Hot) -> bool:
    return type(hot.role) is int and 0 <= hot.role <= 3 and type(hot.name) is str and type(hot.low) is int \
        and hot.low & 3 == hot.role and type(hot.records) is int and hot.records > 0 and type(hot.ended) is str


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise EOFError("the audit worker ended early")
    return data


def audit_range(backend: Any, task: Task, files: bool, *, rows: bool = True, names_from: int = 0,
                checked_below: int = 0) -> RangeResult | None:
    """In a worker: verify blocks ``task.start`` to ``task.stop``; None if anything is wrong.
    The bulk check (:mod:`.audit_bulk`) first; where it does not find everything equal,
    the row-by-row check, which decides (``rows=False``: None, for a caller that runs the
    sequential audit then)."""
    if hasattr(backend, "audit_chunk") and _bulk():
        from .audit_bulk import audit_range as bulk

        try:
            result = bulk(backend, task.start, task.stop, task.first_index, files, names_from, checked_below)
        except Exception:  # noqa: BLE001 - the row-by-row check below decides
            result = None
        if result is not None:
            return RangeResult(*result)
    return _audit_rows(backend, task, files, names_from, checked_below) if rows else None


def _audit_rows(backend: Any, task: Task, files: bool, names_from: int = 0,
                checked_below: int = 0) -> RangeResult | None:
    """:func:`audit_range` record by record, exactly as the sequential audit checks."""
    from .._model import BlockHeader
    from .audit_bulk import name_from
    from .audit_rows import ExistingFiles, IndexChecker, decode_views
    from .chain import verify_block_columns
    from .names import NamesBatch

    try:
        checker = IndexChecker(backend)
        batch = NamesBatch()
        found = ExistingFiles() if files else None
        block_ids: list[str] = []
        counts: list[int] = []
        leaves: list[bytes] = []
        ids: list[str] = []
        first_prev: str | None = None
        prev: str | None = None
        index = task.first_index
        expected = task.start
        latest = ""
        for block in backend.block_columns(task.start, task.stop):
            if expected == task.start:
                first_prev = prev = BlockHeader.decode(block.header).prev
            _header, block_leaves = verify_block_columns(block, expected, prev)
            views = decode_views(block, index, checked_below)
            checker.block(block, index, views)
            name_from(batch, index, views, names_from)
            if views:
                latest = max(latest, max(view.ended for view in views))
            if found is not None:
                found.add(chain.from_iterable(view.outputs for view in views))
            block_ids.append(block.id)
            counts.append(len(block_leaves))
            leaves.extend(block_leaves)
            ids.extend(block.ids)
            index += len(block_leaves)
            prev = block.id
            expected += 1
        if expected != task.stop or backend.artifact_count(index, task.first_index) != checker.artifacts:
            return None
        return RangeResult(first_prev, block_ids, counts, b"".join(leaves), bytes.fromhex("".join(ids)),
                           checker.compared, checker.artifacts, found.found if found else [],
                           *batch.packed_apart(HOT_RECORDS), latest)
    except Exception:  # noqa: BLE001 - the sequential audit in the parent names it exactly
        return None


def _worker_main() -> None:
    """In a worker (:func:`worker_command`): read the job (JSON) from standard input,
    write one frame a task to standard output. Only the parent process holds these pipes."""
    # No cyclic garbage is made here: the collector would only rescan every decoded record.
    gc.disable()
    job = json.loads(sys.stdin.buffer.read())
    out = sys.stdout.buffer
    backend: Any
    if job["uri"]:  # SQLite: the file, read the way the parent chose
        from lineage_ledger.backends._sqlite_reader import SQLiteReader

        backend = SQLiteReader(job["url"], _uri=job["uri"])
    else:  # PostgreSQL: a read-only session of its own
        from lineage_ledger.backends import open_backend

        backend = open_backend(job["url"], create=False)
    try:
        for raw in job["tasks"]:
            task = Task(int(raw["start"]), int(raw["stop"]), int(raw["first_index"]))
            _write_result(out, audit_range(backend, task, bool(job["files"]), names_from=int(job["names_from"]),
                                           checked_below=int(job.get("checked_below", 0))))
        out.flush()
    finally:
        backend.close()


def _worker_entry() -> None:
    """A worker process's work (:data:`_BOOT` calls it)."""
    try:
        _worker_main()
    except BrokenPipeError:  # the parent stopped reading: it has what it needs
        pass


if __name__ == "__main__":  # as earlier releases started workers
    _worker_entry()
