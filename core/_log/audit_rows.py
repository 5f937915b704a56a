"""What the full audit checks in each block besides the chain: that its record bodies are
readable, that the back-end's index rows agree with them, and which outputs exist on disk.

Shared by the sequential audit (:mod:`.verified`) and its worker processes
(:mod:`.audit_parallel`), so that both check exactly the same things.
"""

from __future__ import annotations

import os
from itertools import chain, compress
from operator import attrgetter, itemgetter, methodcaller
from typing import TYPE_CHECKING, Any, NamedTuple

from .._errors import IndexTampered, RecordTampered
from .._order import AFTER_KEY, order_end
from .audit_records import check_suspects, decode_checked

if TYPE_CHECKING:
    from lineage_ledger.backends import Backend

__all__ = ["Decoded", "ExistingFiles", "IndexChecker", "check_outside", "decode_columns", "decode_views"]

_inputs, _outputs = attrgetter("inputs"), attrgetter("outputs")
_rpartition, _head = methodcaller("rpartition", "/"), itemgetter(0)


def decode_views(block, first_leaf: int = 0, checked_below: int = 0) -> list[Any]:
    """What the index holds of each record body of ``block`` (and the rest of the body);
    ``RecordTampered`` for a body that readers do not read: not readable, naming a path
    which is not normal (see :func:`_check_paths`), or refused by
    :meth:`Record.decode <lineage_ledger._model.Record.decode>` (see :mod:`.audit_records`, which
    says what ``first_leaf`` and ``checked_below`` spare)."""
    return decode_columns(block, first_leaf, checked_below).views


class Decoded(NamedTuple):
    """:func:`decode_columns`: the views, and what their checks joined, for the bulk check."""

    views: list[Any]
    inputs: list[Any]  # each view's inputs (a dict: path -> entry)
    outputs: list[Any]
    paths: str  # every path, record by record, inputs then outputs, joined by NUL
    digests: str | None  # their digests so (None where they were not checked joined)


def decode_columns(block, first_leaf: int = 0, checked_below: int = 0) -> Decoded:
    """:func:`decode_views`, with the columns its checks built: the bulk check compares the
    same paths and digests, joined the same way, with the index (``audit_bulk.index_columns``),
    so each is joined once (2 us a record less)."""
    digests: list[str] = []  # the digests joined, where they were checked so
    views, suspects = decode_checked(block, first_leaf, checked_below, digests)
    inputs, outputs = list(map(_inputs, views)), list(map(_outputs, views))
    paths = _check_paths(block, views, inputs, outputs)  # first: its message names the path
    if suspects:
        check_suspects(block, suspects)
    _order_ends(views)
    return Decoded(views, inputs, outputs, paths, digests[0] if digests else None)


def _order_ends(views: list[Any]) -> None:
    """Each view's ``ended`` made its end in the ledger's order (:func:`.._order.order_end`),
    after the body checks that read the time as written: what the index keeps, and the names
    kept, compare. A look at each view's ``extra`` (a dict, or the index view's one field):
    0.1 us a record, where a substring scan of each body cost 1 us, and of the joined block 0.5."""
    for view in views:
        extra = view.extra
        after = extra.get(AFTER_KEY) if type(extra) is dict else extra.after
        if after is not None:
            view.ended = order_end(view.ended, {AFTER_KEY: after})


def _check_paths(block, views: list[Any], inputs: list[Any], outputs: list[Any]) -> str:
    """Every path the records of ``block`` name is normal and absolute, as every reader's
    decode requires (``_artifact.is_normal_path``): a record naming ``/w/sub/../b.txt`` was
    let through by the audit, and a look-up of ``/w/b.txt`` never finds it. One join and one
    scan for the whole block (C speed); the paths are checked one by one only where the scan
    flags something, to name the record. Returns the paths joined by NUL, record by record
    (``inputs`` and ``outputs``: each view's), inputs then outputs."""
    separators = sum(map(len, inputs)) + sum(map(len, outputs)) - 1
    if separators < 0:
        return ""
    # C-level maps; a dict iterates over its paths
    joined = "\x00".join(chain.from_iterable(chain.from_iterable(zip(inputs, outputs, strict=True))))
    if joined[:1] == "/" and "/." not in joined and "//" not in joined and "/\x00" not in joined \
            and joined[-1:] != "/" and joined.count("\x00") == separators == joined.count("\x00/"):
        return joined  # "/." may be a hidden file's name: such a block is checked path by path
    from .._artifact import is_normal_path

    for position, (record_id, view) in enumerate(zip(block.ids, views, strict=True)):
        for side in (view.inputs, view.outputs):
            for path in side:
                if "\x00" in path or not is_normal_path(path):
                    raise RecordTampered(
                        f"record {str(record_id)[:16]} (block {block.height}, position {position}) names the path "
                        f"{path!r}, which is not normal (a '.', '..' or empty component, or a trailing slash): "
                        "its bytes hash to its id, but no lineage-ledger writes such a record; a writer that "
                        "bypassed its checks did", height=block.height)
    return joined


class IndexChecker:
    """Compares the back-end's index, a range of records at a time, with the verified
    records: each record's row (id, place, run) and its artifact rows, folded into one text
    by the database, against the same fold of what the record body says. Artifact rows that
    belong to no record show in the final count."""

    _CHUNK = 5000

    def __init__(self, backend: Backend) -> None:
        from lineage_ledger.backends._base import fold_artifacts

        self.backend = backend
        self.fold = fold_artifacts
        self.rows: list[Any] = []
        self.at = 0  # index into rows
        self.loaded = 0  # rows cover sequence numbers below this
        self.compared = 0
        self.artifacts = 0


    def _row(self, seq: int) -> Any:
        if seq >= self.loaded:
            self.rows = self._fetch(seq)
            self.at, self.loaded = 0, seq + self._CHUNK
        if self.at < len(self.rows) and self.rows[self.at].seq == seq:
            self.at += 1
            return self.rows[self.at - 1]
        return None

    def _fetch(self, seq: int) -> list[Any]:
        # Read on this thread: a second thread reading ahead made it slower (the reader
        # thread needs the GIL for every row it builds; measured 1.04 s alone, 1.24 s waited).
        return self.backend.index_summaries(seq, seq + self._CHUNK) or []

    def block(self, block, first: int, views: list[Any]) -> None:
        fold, height = self.fold, block.height
        for position, (record_id, view) in enumerate(zip(block.ids, views, strict=True)):
            row = self._row(first + position)
            if row is None:
                raise IndexTampered(f"record {record_id[:16]} (block {height}, position {position}) "
                                    "has no index row", height=height)
            inputs = [(p, d.blake3) for p, d in view.inputs.items()]
            outputs = [(p, d.blake3) for p, d in view.outputs.items()]
            self.artifacts += len(inputs) + len(outputs)
            expected = fold(inputs, outputs, view.ended)
            if (row.id, row.height, row.pos, row.run_id) != (record_id, height, position, view.run_id) or (
                    row.artifacts != expected and sorted((row.artifacts or "").split("\n"))
                    != sorted((expected or "").split("\n"))):
                raise IndexTampered(
                    f"the index row of record {record_id[:16]} (block {height}, position {position}) "
                    f"disagrees with the record: {_difference(row, record_id, height, position, view)}",
                    height=height)
            self.compared += 1

    def finish(self, size: int, blocks: int) -> None:
        stored = self.backend.artifact_count(size)
        if stored != self.artifacts:
            raise IndexTampered(f"the index holds {stored} artifact rows for the first {size} records, "
                                f"which name {self.artifacts}: rows were added or moved outside any record")
        check_outside(self.backend, size, blocks)


def check_outside(backend: Backend, size: int, blocks: int) -> None:
    """No index row past the audited records may lie outside the chain (see
    :meth:`~lineage_ledger.backends.Backend.rows_outside_the_chain`): such a row is seen by
    no range the audit compares, yet a look-up could read it."""
    outside = backend.rows_outside_the_chain(size, blocks)
    if outside:
        raise IndexTampered(f"the index holds {outside} row(s) outside the chain of {size} records: rows that "
                            "name no stored record, or records placed where the chain has none")


def _difference(row, record_id: str, height: int, position: int, view) -> str:
    if row.id != record_id:
        return "another record id"
    if (row.height, row.pos) != (height, position):
        return f"place (block {row.height}, position {row.pos})"
    if row.run_id != view.run_id:
        return "run id"
    return "artifact rows (their paths, digests, roles or end times)"


class ExistingFiles:
    """Output paths that exist on disk, collected while the audit streams (one stat per
    directory for the many paths whose directory is gone). Held for one range, or until
    :meth:`take`: the audit keeps the whole ledger's in a :class:`~.found.FoundOutputs`."""

    _DIRS = 65_536  # directories remembered (then forgotten, and stat'ed again)

    def __init__(self) -> None:
        self.found: list[str] = []
        self._seen: set[str] = set()
        self._dirs: dict[str, bool] = {}

    def take(self) -> list[str]:
        """The paths found since the last call (a path found again later is found again)."""
        found, self.found = self.found, []
        self._seen = set()
        if len(self._dirs) > self._DIRS:
            self._dirs = {}
        return found

    def add(self, outputs) -> None:
        """The output paths of any number of records (one iterable of paths, in order).
        The directories are looked up with C-level maps, one ``isdir`` per new directory;
        paths are looked at one by one only where their directory exists (on a ledger whose
        outputs are gone, none: a third of the cost of a loop over every path)."""
        paths = list(outputs)
        if not paths:
            return
        dirs = self._dirs
        parents = list(map(_head, map(_rpartition, paths)))  # "" for a path in "/"
        for directory in set(parents).difference(dirs):
            dirs[directory] = os.path.isdir(directory or "/")
        present = list(map(dirs.__getitem__, parents))
        if not any(present):
            return
        seen = self._seen
        for path in compress(paths, present):
            if path in seen or path[:1] != "/":  # a relative name of an earlier release: never resolved
                continue
            if os.path.lexists(path):
                seen.add(path)
                self.found.append(path)
