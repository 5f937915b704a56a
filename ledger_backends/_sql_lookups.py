"""The SQL store's look-ups: a few index rows by path, digest, run or id, as plain SQL.

These are the reads behind every answer of :class:`~lineage_ledger.Ledger` (which proves
each row it gets against the verified tree) and its reads ahead for many paths. They are
kept apart from :mod:`._sql_reads` (the chain's blocks and the audit's stream of the whole
index, which read everything in order) because they are the other kind of read: each reads
the rows one question names, as a step or a range of an index, so that its cost follows the
answer rather than the ledger; the statements below say which index they walk and why. Like
the rest, they go through ``self._fetch``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

from lineage_ledger._errors import IndexTampered
from lineage_ledger._model import StoredRecord

from ._base import Located, Role
from ._sql_values import _IN, _OUT, _as_bytes, _as_int, _as_text

__all__: list[str] = []

_ID_CHUNK = 500  # record ids per IN list in known()
_HEX = "0123456789abcdef"
_PAGE_CURSORS = 64  # pages' last sequence numbers remembered, for the next page of each


def _chunks(items: Sequence[str]) -> Iterator[tuple[str, ...]]:
    """Distinct items, ``_ID_CHUNK`` at a time (one statement's parameters)."""
    unique = list(dict.fromkeys(items))
    for start in range(0, len(unique), _ID_CHUNK):
        yield tuple(unique[start : start + _ID_CHUNK])


def _dangling(seq) -> IndexTampered:
    return IndexTampered(f"an index row names record number {seq}, which the ledger does not hold:"
                         " a row outside the chain")


def _successor(prefix: str) -> str | None:
    """The least hex string above every string that starts with ``prefix`` (None: no bound)."""
    stripped = prefix.rstrip("f")
    if not stripped:
        return None
    return stripped[:-1] + _HEX[_HEX.index(stripped[-1]) + 1]


class _SQLLookups:
    """Look-ups of a few index rows each, as plain SQL through ``self._fetch``.
    ``self._sqlite`` says which dialect (SQLite, or else PostgreSQL)."""

    _sqlite: bool
    #: ``_fetch(what, statement, params) -> rows``: each class reads through its own driver.
    _fetch: Callable[[str, str, tuple], list]
    pages_runs = True  # by_run_page reads one page of the run's index range

    def known(self, record_ids: Iterable[str]) -> set[str]:
        ids = list(record_ids)
        found: set[str] = set()
        for i in range(0, len(ids), _ID_CHUNK):
            chunk = tuple(ids[i : i + _ID_CHUNK])
            marks = ",".join("?" * len(chunk))
            rows = self._fetch("looking up records", f"SELECT id FROM ll_records WHERE id IN ({marks})", chunk)
            found.update(row[0] for row in rows)
        return found

    def _located(self, where: str, params: tuple, *, bodies: bool = True) -> list[Located]:
        body = "body" if bodies else "NULL"
        rows = self._fetch(
            "query", f"SELECT height, pos, id, {body} FROM ll_records WHERE {where} ORDER BY seq", params
        )
        return [Located(int(h), int(p), StoredRecord(str(i), b"" if b is None else _as_bytes(b)))
                for h, p, i, b in rows]

    def _named(self, seqs: str, params: tuple, *, bodies: bool = True) -> list[Located]:
        """The records that the sequence numbers ``seqs`` (a query on ``ll_artifacts``) name,
        in ledger order, once each; an index row that names no stored record raises."""
        return self._named_seqs(seqs, params, bodies=bodies)[0]

    def _named_seqs(self, seqs: str, params: tuple, *, bodies: bool = True) -> tuple[list[Located], object]:
        """:meth:`_named`, and the last sequence number (None where there was none).

        Read from the index side (a left join): a forged row that names a record the ledger
        does not hold would otherwise vanish from the answer, and take a place of a page
        with it, so that a paged reader stopped early and left real readers out."""
        body = "r.body" if bodies else "NULL"
        rows = self._fetch(
            "query",
            f"SELECT a.seq, r.height, r.pos, r.id, {body} FROM (SELECT DISTINCT seq FROM ({seqs}) s) a"
            " LEFT JOIN ll_records r ON r.seq = a.seq ORDER BY a.seq",
            params,
        )
        found = []
        for seq, height, pos, record_id, stored in rows:
            if record_id is None:
                raise _dangling(seq)
            found.append(Located(int(height), int(pos),
                                 StoredRecord(str(record_id), b"" if stored is None else _as_bytes(stored))))
        return found, (rows[-1][0] if rows else None)

    def find_places(self, role: Role, *, path: str | None = None, digest: str | None = None) -> list[Located]:
        """:meth:`find` without the bodies (the core has most of them proved already)."""
        condition, params = self._artifact_condition(role, path, digest)
        return self._named(f"SELECT seq FROM ll_artifacts WHERE {condition}", params, bodies=False)

    def bodies(self, record_ids: Sequence[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        ids = list(record_ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for record_id, body in self._fetch("query", f"SELECT id, body FROM ll_records WHERE id IN ({marks})",
                                               tuple(chunk)):
                found[_as_text(record_id)] = _as_bytes(body)
        return found

    def records_at(self, seqs: Sequence[int]) -> dict[int, StoredRecord]:
        found: dict[int, StoredRecord] = {}
        wanted = sorted({int(s) for s in seqs})
        for start in range(0, len(wanted), _ID_CHUNK):
            chunk = tuple(wanted[start : start + _ID_CHUNK])
            marks = ",".join("?" * len(chunk))
            for seq, record_id, body in self._fetch(
                    "query", f"SELECT seq, id, body FROM ll_records WHERE seq IN ({marks})", chunk):
                found[_as_int(seq)] = StoredRecord(_as_text(record_id), _as_bytes(body))
        return found

    @staticmethod
    def _artifact_condition(role: Role, path: str | None, digest: str | None) -> tuple[str, tuple]:
        """The WHERE clause on ``ll_artifacts`` and its parameters."""
        condition = "role = ?"
        params: list[object] = [_IN if role == "in" else _OUT]
        if path is not None:
            condition += " AND path = ?"
            params.append(path)
        if digest is not None:
            condition += " AND digest = ?"
            params.append(digest)
        return condition, tuple(params)

    def find(self, role: Role, *, path: str | None = None, digest: str | None = None) -> list[Located]:
        condition, params = self._artifact_condition(role, path, digest)
        return self._named(f"SELECT seq FROM ll_artifacts WHERE {condition}", params)

    def find_page(
        self, role: Role, *, path: str | None = None, digest: str | None = None,
        offset: int = 0, limit: int | None = None,
    ) -> list[Located]:
        """One page of :meth:`find`, read as one range of the path (or digest) index, which
        is in ledger order already, then only that page's records."""
        offset = start = max(0, int(offset))
        if limit is not None and int(limit) <= 0:
            return []
        condition, params = self._artifact_condition(role, path, digest)
        # The page after one read before starts past its last sequence number (one step down
        # the index) instead of skipping ``offset`` rows: paging through the million readers
        # of a file is then linear, not quadratic. Appends only add higher numbers, so the
        # answer is the one ``offset`` gives.
        cursors: dict = self.__dict__.setdefault("_page_cursors", {})
        query = (role, path, digest)
        after = cursors.get((*query, offset)) if offset else None
        if after is not None:
            condition, params, offset = condition + " AND seq > ?", (*params, after), 0
        # One record may hold a digest (or a role) under several paths: count it once.
        distinct = "DISTINCT " if path is None else ""
        # No limit: -1 to SQLite, NULL to PostgreSQL (which refuses a negative one).
        bound = int(limit) if limit is not None else (-1 if self._sqlite else None)
        found, last = self._named_seqs(
            f"SELECT {distinct}seq FROM ll_artifacts WHERE {condition} ORDER BY seq LIMIT ? OFFSET ?",
            (*params, bound, offset),
        )
        if last is not None and limit is not None and len(found) == int(limit):
            if len(cursors) >= _PAGE_CURSORS:
                cursors.clear()
            cursors[(*query, start + len(found))] = last
        return found

    def find_latest(self, role: Role, path: str) -> tuple[Located, str] | None:
        """The record that read (``in``) or wrote (``out``) ``path`` with the latest end
        time (then the latest in ledger order), and the end time the index claims for it:
        one step down ``ll_artifacts_latest``."""
        rows = self._fetch(
            "query",
            "SELECT a.seq, r.height, r.pos, r.id, a.ended FROM"
            " (SELECT seq, ended FROM ll_artifacts WHERE path = ? AND role = ?"
            " ORDER BY ended DESC, seq DESC LIMIT 1) a LEFT JOIN ll_records r ON r.seq = a.seq",
            (path, _IN if role == "in" else _OUT),
        )
        if not rows:
            return None
        seq, height, pos, record_id, ended = rows[0]  # the core asks bodies() if it needs it
        if record_id is None:
            raise _dangling(seq)
        return Located(_as_int(height), _as_int(pos), StoredRecord(_as_text(record_id), b"")), _as_text(ended)

    def find_ended_since(self, role: Role, path: str, since: str, offset: int,
                         limit: int) -> list[tuple[Located, str]]:
        """The records that read or wrote ``path`` and ended at ``since`` or later (as the
        index keeps end times), latest first (end time, then ledger order), ``limit`` of them
        from ``offset``: one range of ``ll_artifacts_latest``, from its top down."""
        rows = self._fetch(
            "query",
            "SELECT a.seq, r.height, r.pos, r.id, a.ended FROM"
            " (SELECT seq, ended FROM ll_artifacts WHERE path = ? AND role = ? AND ended >= ?"
            " ORDER BY ended DESC, seq DESC LIMIT ? OFFSET ?) a LEFT JOIN ll_records r ON r.seq = a.seq"
            " ORDER BY a.ended DESC, a.seq DESC",
            (path, _IN if role == "in" else _OUT, since, max(0, int(limit)), max(0, int(offset))),
        )
        found = []
        for seq, height, pos, record_id, ended in rows:
            if record_id is None:
                raise _dangling(seq)
            found.append((Located(_as_int(height), _as_int(pos), StoredRecord(_as_text(record_id), b"")),
                          _as_text(ended)))
        return found

    def find_latest_many(self, role: Role, paths: Sequence[str]) -> dict[str, tuple[Located, str]]:
        """:meth:`find_latest` of many paths, ``_ID_CHUNK`` a statement: each path one step
        down ``ll_artifacts_latest``, inside the database."""
        found: dict[str, tuple[Located, str]] = {}
        code = _IN if role == "in" else _OUT
        # PostgreSQL compares the given paths in the column's "C" collation (byte order).
        given = "p.path" if self._sqlite else 'p.path COLLATE "C"'
        # The seq and the end time come from the same first row of one order (as find_latest
        # reads them), never from a second look-up that duplicated rows could answer otherwise.
        latest = (f"FROM ll_artifacts a WHERE a.path = {given} AND a.role = ?"
                  " ORDER BY a.ended DESC, a.seq DESC LIMIT 1")
        for chunk in _chunks(paths):
            rows = self._fetch(
                "query",
                f"WITH p(path) AS (VALUES {','.join(['(?)'] * len(chunk))}),"
                f" l(path, seq, ended) AS (SELECT p.path, (SELECT a.seq {latest}), (SELECT a.ended {latest}) FROM p)"
                " SELECT l.path, l.seq, r.height, r.pos, r.id, l.ended FROM l LEFT JOIN ll_records r ON r.seq = l.seq"
                " WHERE l.seq IS NOT NULL",
                (*chunk, code, code),
            )
            for path, seq, height, pos, record_id, ended in rows:
                if record_id is None:
                    raise _dangling(seq)
                located = Located(_as_int(height), _as_int(pos), StoredRecord(_as_text(record_id), b""))
                found[_as_text(path)] = (located, _as_text(ended))
        return found

    def find_places_many(self, role: Role, paths: Sequence[str]) -> dict[str, list[Located]]:
        """:meth:`find_places` by path for many paths: one range of ``ll_artifacts_path``
        per path, ``_ID_CHUNK`` paths a statement, in ledger order per path."""
        found: dict[str, list[Located]] = {}
        code = _IN if role == "in" else _OUT
        for chunk in _chunks(paths):
            rows = self._fetch(
                "query",
                # DISTINCT: one row a record, as find_places' "seq IN (...)" gives, even where a
                # tamperer stored a (seq, role, path) twice.
                "SELECT DISTINCT a.path, a.seq, r.height, r.pos, r.id FROM ll_artifacts a"
                " LEFT JOIN ll_records r ON r.seq = a.seq"
                f" WHERE a.role = ? AND a.path IN ({','.join('?' * len(chunk))}) ORDER BY a.path, a.seq",
                (code, *chunk),
            )
            made: dict[int, Located] = {}  # one row a record: the outputs of one task share it
            for path, seq, height, pos, record_id in rows:
                located = made.get(seq)
                if located is None:
                    if record_id is None:
                        raise _dangling(seq)
                    located = made[seq] = Located(int(height), int(pos), StoredRecord(str(record_id), b""))
                found.setdefault(_as_text(path), []).append(located)
        return found

    def count_found(self, role: Role, *, path: str | None = None, digest: str | None = None,
                    at_most: int | None = None, below: int | None = None) -> int:
        """Counted on the artifacts index alone: the records it names. (A row whose record
        was deleted behind our back still counts; readers verify what they read.) With
        ``at_most``, the count stops there: a file ten million tasks read costs no more.
        With ``below``, rows of the first ``below`` records only (sequence numbers are places
        in the ledger): a reader's row moved past the verified head no longer counts for it,
        and the count then falls short of the names kept (one more range condition)."""
        condition, params = self._artifact_condition(role, path, digest)
        if below is not None:
            condition, params = f"{condition} AND seq < ?", (*params, int(below))
        distinct = "" if path is not None else "DISTINCT "
        if at_most is None:
            statement = f"SELECT count({distinct}seq) FROM ll_artifacts WHERE {condition}"
        else:
            statement = f"SELECT count(*) FROM (SELECT {distinct}seq FROM ll_artifacts WHERE {condition} LIMIT ?) c"
            params = (*params, max(0, int(at_most)))
        rows = self._fetch("counting", statement, params)
        return int(rows[0][0] or 0)

    def by_run(self, run_id: str) -> list[Located]:
        return self._located("run_id = ?", (run_id,))

    def by_run_last(self, run_id: str, limit: int) -> tuple[list[Located], int]:
        """The run's last records from the end of its index range, not the whole run."""
        count = int(self._fetch("counting", "SELECT count(*) FROM ll_records WHERE run_id = ?", (run_id,))[0][0] or 0)
        if int(limit) <= 0:
            return [], count
        last = self._located("seq IN (SELECT seq FROM ll_records WHERE run_id = ? ORDER BY seq DESC LIMIT ?)",
                             (run_id, int(limit)))
        return last, count

    def by_run_page(self, run_id: str, offset: int, limit: int) -> list[Located]:
        """One page of the run's index range (``ll_records_run`` holds the sequence numbers
        in order beside each run id), not the whole run."""
        if int(limit) <= 0:
            return []
        return self._located("seq IN (SELECT seq FROM ll_records WHERE run_id = ? ORDER BY seq LIMIT ? OFFSET ?)",
                             (run_id, int(limit), max(0, int(offset))))

    def by_id_prefix(self, prefix: str, limit: int = 2) -> list[Located]:
        """Records whose id starts with ``prefix`` (lower-case hex): one range of the ids'
        unique index, ``prefix <= id < successor``. (The check in Python keeps a collation
        that is not byte order on PostgreSQL from adding any other id.)"""
        if not prefix or any(c not in _HEX for c in prefix):
            return []
        upper = _successor(prefix)
        if upper is None:
            found = self._located("id >= ?", (prefix,))
        else:
            found = self._located("id >= ? AND id < ?", (prefix, upper))
        return [f for f in found if f.record.id.startswith(prefix)][:limit]

    # -- a directory's paths ---------------------------------------------------------------
    def paths_under(self, directory: str, after: str = "", limit: int = 10_000) -> list[str] | None:
        """One range of ``ll_artifacts_path`` (byte order: the "C" collation on PostgreSQL):
        every path that starts with ``directory/`` lies in ``[directory/, directory0)``."""
        base = directory.rstrip("/")
        low, high = base + "/", base + "0"  # "0" follows "/" in byte order
        # One lower bound: given two, SQLite starts the range at the first and filters on the
        # second, reading every entry below the directory (6 s cold at 1M records).
        start = "path > ?" if after >= low else "path >= ?"  # str order is UTF-8 byte order
        # Each next path is one step down the index (the least one past the last), not a scan
        # of every row of each path: a file a million tasks read is one step, not a million.
        rows = self._fetch(
            "query",
            "WITH RECURSIVE p(path, n) AS ("
            f" SELECT (SELECT min(path) FROM ll_artifacts WHERE {start} AND path < ?), 1"
            " UNION ALL SELECT (SELECT min(a.path) FROM ll_artifacts a WHERE a.path > p.path AND a.path < ?), p.n + 1"
            " FROM p WHERE p.path IS NOT NULL AND p.n < ?)"
            " SELECT path FROM p WHERE path IS NOT NULL",
            (max(after, low), high, high, max(1, int(limit))),
        )
        return [_as_text(row[0]) for row in rows]
