"""Index rows read ahead for many paths at once: a window of files (a directory's, an
audit's outputs) costs a few statements instead of three look-ups each.

:class:`LookingAhead` is a mixin of :class:`~.proved.ProvedLookups`: within
:meth:`~LookingAhead.looking_ahead`, that thread's look-ups are answered from the rows read
here (:class:`LookAhead`), and the common case of a file that one record wrote and none
read is settled for the whole window in one loop (:meth:`~LookingAhead._settle_ahead`).
Only index rows are read ahead: every record an answer uses is proved by
:meth:`~.proved.ProvedLookups._proved`, as without them.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._errors import ArtifactError, IndexTampered, RecordTampered
from .._files.hashing import normalize_path, resolving_keeps
from .._log.names import OUTPUT
from .lineage import LedgerRecord

if TYPE_CHECKING:
    from lineage_ledger.backends import Backend, Located

    from .._log.trust import TreeHead
    from .._log.verified import Verifier

__all__ = ["LookAhead", "LookingAhead"]

# Bodies read in one statement ahead of a look-up that needs one, within looking_ahead: the
# next records its paths name. A statement per record was a tenth of a full audit's checks
# of outputs on disk; more at once would hold more unproved bytes (a wide record's are large).
_BODIES_AHEAD = 64
# Bodies read in one statement by the loop that settles a window (_settle_ahead): there every
# row read is proved and decoded at once, and its record kept (the decode cache holds 10,000),
# so a larger batch holds no more unproved bytes for long; 64 a statement was 160 statements
# for 10,000 tasks' outputs.
_SETTLE_BODIES = 500  # the SQL back-ends read 500 ids a statement


@dataclass
class LookAhead:
    """Index rows read ahead for many paths (:meth:`Ledger.looking_ahead`): by (role, path),
    the latest record (None: none) and the producers; and each path's key."""

    latest: dict[tuple[str, str], tuple[Located, str] | None] = field(default_factory=dict)
    places: dict[tuple[str, str], list[Located]] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    spellings: dict[str, list[str]] = field(default_factory=dict)  # query_paths of paths behind links
    bound: int = 0  # the verified tree's size before the rows were read (see Ledger._bound)
    names: dict[str, list] = field(default_factory=dict)  # each key's names (complete.py), read with the rows
    # By (role, path): every record naming it there, proved and its list checked complete,
    # worked out once from ``places`` for the look-ups that ask (the latest, the producers).
    found: dict[tuple[str, str], list] = field(default_factory=dict)
    # The records those rows name, in the order the paths come, each once (see _bodies), and
    # the bodies last read ahead of them, by id: unproved bytes until a look-up proves them.
    ids: list[str] = field(default_factory=list)
    order: dict[str, int] = field(default_factory=dict)  # each id's index in ids
    bodies: dict[str, bytes] = field(default_factory=dict)
    wanted: list[str] = field(default_factory=list)  # the keys read ahead, in the order given
    # The last record to see each key, where the rows read ahead settle it (see
    # ProvedLookups._settle_ahead), worked out for every key at the first look-up; None until then.
    settled: dict[str, tuple[LedgerRecord, str, Mapping[str, Any]]] | None = None


class LookingAhead:
    """Index rows read ahead for a window of paths (a mixin of
    :class:`~.proved.ProvedLookups`, whose look-ups use them)."""

    backend: Backend
    _head_current: bool
    _batch: threading.local  # index rows read ahead, for one thread (LookAhead)
    if TYPE_CHECKING:  # what ProvedLookups and Ledger give
        @property
        def verifier(self) -> Verifier: ...

        def tree_head(self) -> TreeHead: ...

        def query_path(self, path: str) -> str: ...

        def _bound(self, *, refresh: bool = False) -> int: ...

        def _proved(self, located: Located, *, keep: bool = True) -> LedgerRecord | None: ...

        def _with_bodies(self, rows: Iterable[Located]) -> list[Located]: ...

    @contextlib.contextmanager
    def looking_ahead(self, paths: Sequence[str], *, plain: Collection[str] = ()) -> Iterator[None]:
        """Within the block, this thread's look-ups of ``paths`` (the last record to read
        each, and each one's producers, among which the last to write it) are answered from
        index rows read for all of them at once, a few statements for thousands of files
        instead of three each. Only the index rows are read ahead: every record an answer
        uses is proved as before, and each path's key (symbolic links resolved) is worked
        out once. ``plain``: paths known to be regular files, not symbolic links (a walk's
        listing said so), whose own key they are where their directory's is its own."""
        batch = LookAhead()
        previous = getattr(self._batch, "current", None)
        self._batch.current = batch
        try:
            # A path whose real path is itself (most are) is its own key: found a directory
            # at a time (resolving_keeps), not by resolving each path.
            given: dict[str, str] = {}
            for p in paths:
                try:
                    given[p] = normalize_path(p)
                except (ArtifactError, ValueError):
                    pass  # query_path says why, when the path's own look-up comes to it
            own = resolving_keeps(given.values(), plain)
            for p, key in given.items():
                if key in own:
                    batch.keys[p] = batch.keys[key] = key
            # Most paths are their own keys by now (set above): only the others are worked out.
            known = batch.keys
            keys = list(dict.fromkeys(filter(None, [known.get(p) or self._key_ahead(p) for p in given])))
            batch.wanted = keys
            batch.bound = self._bound()
            batch.names = self.verifier.store.names_many(keys) or {}
            backend = self.backend
            # The last writer is found among the producers (see _latest): only the last
            # reader needs an index row of its own.
            readers = backend.find_latest_many("in", keys)
            batch.latest.update({("in", k): readers.get(k) for k in keys})
            places = backend.find_places_many("out", keys)
            batch.places.update({("out", k): places.get(k, []) for k in keys})
            # The records the look-ups will prove, in the order they will come to them.
            order, latest, placed = batch.order, batch.latest, batch.places
            for key in keys:
                for located in placed[("out", key)]:
                    order.setdefault(located.record.id, len(order))
                reader = latest[("in", key)]
                if reader is not None:
                    order.setdefault(reader[0].record.id, len(order))
            batch.ids = list(order)
            yield
        finally:
            self._batch.current = previous

    def _key_ahead(self, path: str) -> str | None:
        """:meth:`query_path`, or None for a path whose key cannot be worked out (a name
        that is not UTF-8, a NUL byte): it is read when its own look-up comes to it, which
        then answers (or raises) as it would have without reading ahead."""
        try:
            return self.query_path(path)
        except (ArtifactError, ValueError):
            return None

    @contextlib.contextmanager
    def consumers_ahead(self, keys: Sequence[str]) -> Iterator[None]:
        """Within the block, this thread's :meth:`consumers` of ``keys`` (keys as records
        name them, not resolved again) are answered from their index rows, read for all of
        them in a few statements: what `depends --all` asks of each page's outputs. Every
        record an answer uses is proved as before."""
        batch = LookAhead()
        previous = getattr(self._batch, "current", None)
        self._batch.current = batch
        try:
            unique = list(dict.fromkeys(keys))
            batch.bound = self._bound()
            readers = self.backend.find_places_many("in", unique)
            batch.places.update({("in", k): readers.get(k, []) for k in unique})
            yield
        finally:
            self._batch.current = previous

    def _last_seen_ahead(self, path: str) -> tuple[LedgerRecord, str, Mapping[str, Any]] | None:
        """:meth:`~.ledger.Ledger.last_seen` of ``path`` (a key) in the common case of a
        window of files read ahead, settled from what the look-ahead read, without the
        general look-ups: one index row says a record wrote the path, none says one read it,
        and the names kept list that record's leaf alone (one record, in the output role,
        below the bound). The row is proved as ever, and the record must name the path.
        That is the answer the general path gives there, with every check it makes passed:
        the list of producers is complete (check_listing), no verified record read the
        path (check_latest), and no name is past the bound (no stale names). None where any
        of that does not hold: the general path then answers, or raises. The first look-up
        settles every key of the window at once (:meth:`_settle_ahead`)."""
        batch: LookAhead | None = getattr(self._batch, "current", None)
        if batch is None or not self.backend.keeps_end_times:
            return None
        if batch.settled is None:
            batch.settled = self._settle_ahead(batch)
        return batch.settled.get(path)

    def _settled_row(self, batch: LookAhead, key: str) -> tuple[Located, int] | None:
        """The one index row that settles ``key`` (see :meth:`_last_seen_ahead`), and the
        leaf the names kept give its record; None where the rows read ahead do not settle it."""
        rows = batch.places.get(("out", key))
        if rows is None or len(rows) != 1:
            return None  # no writer, or more than one: the general path
        if ("in", key) not in batch.latest or batch.latest[("in", key)] is not None:
            return None  # its readers were not read ahead, or the index names one
        names = batch.names.get(key)
        if names is None or len(names) != 1:
            return None
        only = names[0]
        if only.role != OUTPUT or only.records != 1 or only.leaf >= batch.bound:
            return None
        return rows[0], only.leaf

    def _settle_ahead(self, batch: LookAhead) -> dict[str, tuple[LedgerRecord, str, Mapping[str, Any]]]:
        """:meth:`_last_seen_ahead`'s answer for every key of the window it settles, worked
        out in one loop: the records' bodies read :data:`_BODIES_AHEAD` to a statement, each
        proved and decoded as :meth:`_proved` does. Per key, the look-ups through
        ``_proved_all`` were a tenth of checking the outputs of 10,000 tasks. A row whose
        record does not prove is left to the general path, which raises for it when (and
        only when) its own path is looked up, as before."""
        settled: dict[str, tuple[LedgerRecord, str, Mapping[str, Any]]] = {}
        wanted = [(key, found) for key in batch.wanted if (found := self._settled_row(batch, key)) is not None]
        if not wanted:
            return settled
        if not self._head_current:
            self.tree_head()
        start_of = self.verifier.store.block_start
        proved, producers = self._proved, batch.found
        for at in range(0, len(wanted), _SETTLE_BODIES):
            part = wanted[at : at + _SETTLE_BODIES]
            rows = self._with_bodies([row for _key, (row, _leaf) in part])
            for (key, (_row, leaf)), row in zip(part, rows, strict=True):
                try:
                    entry = proved(row)
                except (IndexTampered, RecordTampered):
                    continue  # raised again by the general path, for this path alone
                if entry is None:
                    continue
                named = entry.record.outputs.get(key)
                if named is None or start_of(entry.height) + entry.position != leaf:
                    continue
                producers[("out", key)] = [entry]  # the producers' look-up of the lineage that follows
                settled[key] = (entry, "out", named)
        return settled
