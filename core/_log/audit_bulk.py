"""An audit worker's check of a range of blocks by whole columns, the row-by-row check's
answer at a fraction of its cost.

The row-by-row check (:mod:`.audit_rows`) builds a Python text per record from its body and
compares it with one the database folded from the index; at 1M records that was about
60% of a worker's time. Here the same facts are compared a chunk of records at a time:

* the record rows: their sequence numbers must be the leaf indexes, their height and
  position columns the block and place the chain puts them at (one list comparison
  each), their run ids those of the bodies (one more);
* the artifact rows: SQLite joins their columns in C, in primary-key order (the paths,
  digests and end times each joined by NUL, ``seq * 2 + role`` by commas, and whether
  every row has the writer's types: ``_sqlite_audit.audit_chunk``), and
  :func:`index_columns` joins the same columns from the decoded bodies with C-level maps;
  they must be equal. The bodies' columns have exactly one separator fewer than the rows
  they name, and the range has that many rows, so equal texts mean each row is exactly the
  path, digest, role and end time its record's body names, in its place; a record body
  whose keys are not sorted, or any value of an unexpected type, makes them differ.
  PostgreSQL's reads fold the rows into one JSON text instead (``_pg_audit``), which
  ``msgspec`` encodes from the bodies in one call (:func:`_index_fold`): equal bytes mean
  the same, as the encoding is injective (an object's members are unique, strings are
  escaped).
* the number of artifact rows in the range (any role) must be the number the bodies name;
* chain, Merkle roots and record hashes: :func:`.chain.verify_block_columns`, as always.

Anything that does not compare equal is not judged here: :func:`audit_range` returns None
and the caller runs the row-by-row check on the range, which names the problem (or finds
none: a legitimate oddity, such as a path JSON-escaped differently by SQLite and msgspec,
only costs speed). So the bulk check can only ever accept what the row-by-row check accepts.
"""

from __future__ import annotations

from bisect import bisect_left
from itertools import chain, compress, repeat
from operator import add, attrgetter, methodcaller, or_
from typing import Any, NamedTuple

from .._model import BlockColumns, BlockHeader
from .audit_rows import ExistingFiles, decode_columns
from .chain import verify_block_columns
from .names import HOT_RECORDS, NamesBatch

__all__ = ["CHUNK_RECORDS", "WIDE_BYTES", "BulkResult", "audit_range", "index_columns", "name_from", "weight"]

# Records whose bodies are longer count as several (:func:`weight`): a task-shaped record
# (2-5 inputs, 1-3 outputs) is about 1 KB; one naming 1,000 outputs, about 130 KB. Without
# this, 2,000 records of 1,000 outputs each (one range, chunks of 1,000 records) peaked at
# 1.4 GB. A block is never split: one block of such records is still held whole.
WIDE_BYTES = 2_048
CHUNK_RECORDS = 1_000  # records compared at once: about 6 MB of a worker's peak (2,500: 15 MB; 5,000: 30 MB)


def weight(count: int, first_body: int) -> int:
    """A block's share of a range or chunk: its records, each counted once per
    :data:`WIDE_BYTES` of its first record's body (a record naming 1,000 paths counts about
    60), so that a worker holds about as many paths whatever the records' width."""
    return max(0, count) * max(1, first_body // WIDE_BYTES)


_run_id, _ended = attrgetter("run_id"), attrgetter("ended")
_blake3, _values = attrgetter("blake3"), methodcaller("values")
_CODEC: Any = None  # (the encoder, the struct of an index entry): msgspec's, built on first use


def _codec() -> Any:
    global _CODEC
    if _CODEC is None:
        import msgspec

        _CODEC = msgspec.json.Encoder().encode, msgspec.defstruct("Digest", [("blake3", str)])
    return _CODEC


def _index_fold(seqs: tuple, views: list[Any], inputs: list[Any], outputs: list[Any], plain: int = 0) -> bytes:
    """What the index folds from the records' artifact rows (PostgreSQL's ``audit_chunk``), as the
    records' bodies say it: per record that names any artifact (the others have no rows),
    its sequence number, end time, and inputs and outputs as ``{path: {"blake3": digest}}``.
    The first ``plain`` views hold the digests alone (the index view, for records checked
    before: :func:`.audit_records.decode_checked`), encoded as they are; the others hold the
    whole entry, whose digest alone is taken."""
    encode, digest = _codec()
    naming: Any = compress(zip(seqs, map(_ended, views), inputs, outputs, strict=True),
                           map(or_, map(len, inputs), map(len, outputs)))
    if plain:
        naming = list(naming)
        split = bisect_left(naming, (seqs[0] + plain,))  # the first record from leaf first + plain
        kept, naming = naming[:split], naming[split:]
    else:
        kept = []
    return encode(kept + [(seq, ended, {path: digest(entry.blake3) for path, entry in ins.items()},
                           {path: digest(entry.blake3) for path, entry in outs.items()})
                          for seq, ended, ins, outs in naming])


def index_columns(first: int, views: list[Any], inputs: list[Any], outputs: list[Any],
                  paths: str | None = None, digests: str | None = None) -> tuple | None:
    """The columns SQLite joins from the artifact rows of records ``first`` on
    (``_sqlite_audit.audit_chunk``), as their bodies say them: ``(paths, digests, ends,
    keys)``, one entry a path each record names, inputs then outputs, each map in its
    body's order (sorted, as the index's primary key is). None where a value holds a
    separator (then equal texts would not mean equal rows; the row-by-row check decides).
    C-level maps throughout: about a tenth less than encoding the JSON fold. ``paths`` and
    ``digests``, where given, are those joined so already (:func:`.audit_rows.decode_columns`)."""
    ins, outs = list(map(len, inputs)), list(map(len, outputs))
    rows = sum(ins) + sum(outs)
    if not rows:
        return b"", "", "", ""
    if paths is None or digests is None:
        sides = list(chain.from_iterable(zip(inputs, outputs, strict=True)))  # a dict iterates over its paths
        paths = "\x00".join(chain.from_iterable(sides)) if paths is None else paths
        digests = "\x00".join(map(_blake3, chain.from_iterable(map(_values, sides)))) if digests is None else digests
    ends = "\x00".join(chain.from_iterable(map(repeat, map(_ended, views), map(add, ins, outs))))
    if not paths.count("\x00") == digests.count("\x00") == ends.count("\x00") == rows - 1:
        return None
    # One key a row: seq * 2 for an input, seq * 2 + 1 for an output, each record's two keys
    # spelled once and repeated (a third of the cost of spelling every row's).
    stop = first + len(views)
    keys = ",".join(chain.from_iterable(chain.from_iterable(zip(
        map(repeat, map(str, range(2 * first, 2 * stop, 2)), ins),
        map(repeat, map(str, range(2 * first + 1, 2 * stop, 2)), outs), strict=True))))
    return paths.encode(), digests, ends, keys


class BulkResult(NamedTuple):
    """What a range proved, in the order of :class:`~.audit_parallel.RangeResult`'s fields."""

    first_prev: str | None
    block_ids: list[str]
    counts: list[int]
    leaves: bytes
    ids: bytes
    compared: int
    artifacts: int
    outputs: list[str]
    name_counts: list[int]
    names: bytes
    hot: list  # names kept apart (:meth:`.names.NamesBatch.packed_apart`)
    latest: str = ""  # the latest end, in the ledger's order, of the range's records ("" for none)


def audit_range(backend: Any, start: int, stop: int, first_index: int, files: bool,
                names_from: int = 0, checked_below: int = 0) -> BulkResult | None:
    """Verify blocks ``start`` to ``stop`` whose first record is leaf ``first_index``; None
    where anything did not compare equal. The names of the records from leaf ``names_from``
    on are gathered (those before it are kept already: see :func:`name_from`); the bodies of
    those below leaf ``checked_below`` were checked already (see
    :func:`.audit_records.decode_checked`)."""
    headers = backend.audit_blocks(start, stop)
    if len(headers) != stop - start:
        return None
    index = first_index
    placed = []
    for offset, (height, block_id, first_seq, count, header, first_body) in enumerate(headers):
        # The block rows must place each block's records right after the previous one's.
        if height != start + offset or first_seq != index or type(count) is not int or count < 0:
            return None
        size = weight(count, first_body if type(first_body) is int else 0)
        placed.append((start + offset, block_id, index, count, header, size))
        index += count
    headers = placed
    first_prev = BlockHeader.decode(headers[0][4]).prev if headers else None
    found = ExistingFiles() if files else None
    batch = NamesBatch()
    block_ids: list[str] = []
    counts: list[int] = []
    leaves: list[bytes] = []
    ids: list[str] = []
    compared = artifacts = 0
    latest = [""]
    prev = first_prev
    at = 0
    while at < len(headers):
        chunk = [headers[at]]  # whole blocks, up to CHUNK_RECORDS records of task-shaped width
        while sum(h[5] for h in chunk) < CHUNK_RECORDS and at + len(chunk) < len(headers):
            chunk.append(headers[at + len(chunk)])
        checked = _check_chunk(backend, chunk, prev, found, batch, names_from, checked_below, latest)
        if checked is None:
            return None
        compared += checked[0]
        artifacts += checked[1]
        leaves.extend(checked[2])
        ids.extend(checked[3])
        block_ids.extend(h[1] for h in chunk)
        counts.extend(h[3] for h in chunk)
        prev = chunk[-1][1]
        at += len(chunk)
    return BulkResult(first_prev, block_ids, counts, b"".join(leaves), bytes.fromhex("".join(ids)), compared,
                      artifacts, found.found if found is not None else [], *batch.packed_apart(HOT_RECORDS),
                      latest[0])


def _check_chunk(backend: Any, headers: list[tuple], prev: str | None, found: ExistingFiles | None,
                 batch: NamesBatch, names_from: int, checked_below: int = 0,
                 latest: list[str] | None = None) -> tuple[int, int, list[bytes], tuple[str, ...]] | None:
    """Check consecutive blocks; (records, artifact rows they name, leaves, ids) or None."""
    first = headers[0][2]
    stop = first + sum(h[3] for h in headers)
    rows, index, stored = backend.audit_chunk(first, stop)
    if len(rows) != stop - first:
        return None
    if not rows:
        seqs = ids = heights = positions = run_ids = bodies = ()
    else:
        seqs, ids, heights, positions, run_ids, bodies = zip(*rows, strict=True)
    places_height: list[Any] = []
    places_pos: list[int] = []
    leaves: list[bytes] = []
    at = 0
    for height, block_id, _first, count, header, _size in headers:
        if type(block_id) is not str or type(header) is not bytes:
            return None  # the row-by-row check coerces and reports it
        block = BlockColumns(height, block_id, header, ids[at : at + count], bodies[at : at + count])
        leaves.extend(verify_block_columns(block, height, prev)[1])
        places_height += [height] * count
        places_pos += range(count)
        prev, at = block_id, at + count
    if seqs != tuple(range(first, stop)) or heights != tuple(places_height) or positions != tuple(places_pos):
        return None
    decoded = decode_columns(BlockColumns(headers[0][0], "", b"", ids, bodies), first, checked_below)
    views, inputs, outputs = decoded.views, decoded.inputs, decoded.outputs
    if run_ids != tuple(map(_run_id, views)):
        return None
    artifacts = sum(map(len, inputs)) + sum(map(len, outputs))
    if stored != artifacts:  # a row in the range that no record names (a role other than 0 or 1)
        return None
    if type(index) is tuple:  # SQLite's joined columns, the last saying whether every row has its types
        if not index[-1] or index_columns(first, views, inputs, outputs, decoded.paths,
                                          decoded.digests) != index[:-1]:
            return None
    elif _index_fold(seqs, views, inputs, outputs, max(0, min(len(views), checked_below - first))) != index:
        return None
    if found is not None:
        found.add(chain.from_iterable(outputs))  # a dict iterates over its paths
    name_from(batch, first, views, names_from)
    if latest is not None and views:
        latest[0] = max(latest[0], max(map(_ended, views)))
    return len(views), artifacts, leaves, ids


def name_from(batch: NamesBatch, first: int, views: list[Any], names_from: int) -> None:
    """Add to ``batch`` the names of the records (leaves ``first`` on) from leaf
    ``names_from`` on. A repeated audit starts from the names the remembered head keeps
    (:meth:`.tree_head.TreeWriter.carry_names`) and names only what was appended since: the
    records it finds below that head are the ones those names were gathered from, or the
    audit fails (history rewritten) and keeps nothing. Naming cost 3.5-4 us of a worker's
    19 us a record."""
    skip = names_from - first
    if skip <= 0:
        batch.add(first, views)
    elif skip < len(views):
        batch.add(names_from, views[skip:])
