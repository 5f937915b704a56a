"""The thin contract every storage back-end implements.

A back-end stores what the core built and answers indexed look-ups. It never computes
a hash: ids, links and Merkle roots arrive ready-made and are handed back byte for byte,
so that verification can recompute them. Appends are atomic per call and idempotent
(a block already stored under the same id is skipped); a height or record id already
taken by something else raises :class:`~lineage_ledger.AppendConflict`, after which
the core rebuilds its block on the new head.
"""

from __future__ import annotations

import re
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, NamedTuple

from lineage_ledger._model import BlockColumns, StoredBlock, StoredRecord

__all__ = ["Backend", "ChainHead", "IndexRow", "IndexSummary", "Located", "RedactedError", "Role", "fold_artifacts", "redact",
           "safe_cause"]

Role = Literal["in", "out"]


@dataclass(frozen=True, slots=True)
class ChainHead:
    height: int
    id: str


@dataclass(frozen=True, slots=True)
class Located:
    """A stored record and where it sits in the ledger (block height, position)."""

    height: int
    position: int
    record: StoredRecord


@dataclass(frozen=True, slots=True)
class IndexRow:
    """One record's index entries exactly as a back-end stores them, for the audit to compare
    with what the verified record body says.

    ``inputs`` and ``outputs`` are ``(path, digest)`` pairs sorted by path. Index rows whose
    sequence number has no record row come out with ``id=""`` and ``height=pos=-1``.
    """

    seq: int
    id: str
    height: int
    pos: int
    run_id: str
    inputs: tuple[tuple[str, str], ...]
    outputs: tuple[tuple[str, str], ...]


class IndexSummary(NamedTuple):
    """One record's index row with its artifact rows folded into one text by
    :func:`fold_artifacts`, for an audit to compare with the record in one string compare."""

    seq: int
    id: str
    height: int
    pos: int
    run_id: str
    artifacts: str | None  # None: the record has no artifact rows


def fold_artifacts(inputs: Iterable[tuple[str, str]], outputs: Iterable[tuple[str, str]],
                   ended: str) -> str | None:
    """``ROLE:LEN:PATH DIGEST ENDED`` (no spaces) per artifact row: role 0 inputs, then 1
    outputs, each by path; the path's length in characters makes the text unambiguous
    (digest and time have fixed forms). Rows joined by newlines."""
    parts = [f"0:{len(p)}:{p}{d}{ended}" for p, d in inputs] + [f"1:{len(p)}:{p}{d}{ended}" for p, d in outputs]
    return "\n".join(parts) if parts else None


_SCHEME_USER_PASSWORD = re.compile(r"^[^:/?#]+://(?P<user>[^:/@?#]*):(?P<password>.*)@")


def _url_passwords(url: str) -> set[str]:
    """Every spelling of the password in ``url`` a message could carry: as written and
    percent-decoded, read the way SQLAlchemy does (up to the first ``@``) and the way a
    browser does (up to the last ``@`` of the authority)."""
    found: set[str] = set()
    if not isinstance(url, str) or "://" not in url:
        return found
    rest = url.split("://", 1)[1]
    user_info = rest.split("@", 1)[0] if "@" in rest else None
    candidates = []
    if user_info is not None and ":" in user_info:
        candidates.append(user_info.split(":", 1)[1])  # SQLAlchemy: the password ends at the first '@'
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in authority:
        info = authority.rpartition("@")[0]
        if ":" in info:
            candidates.append(info.split(":", 1)[1])
    match = _SCHEME_USER_PASSWORD.match(url)
    if match:  # the widest reading: everything up to the last '@' before the host
        candidates.append(match.group("password"))
    for candidate in candidates:
        for spelling in (candidate, urllib.parse.unquote(candidate), urllib.parse.unquote_plus(candidate)):
            if spelling:
                found.add(spelling)
    return found


def redact(text: str, url: str) -> str:
    """``text`` with the password of ``url`` replaced by ``***`` wherever it appears (as
    written in the URL and percent-decoded), and ``user:anything@`` forms of the URL's user
    written ``user:***@``. For messages and logs: a driver's error text may quote the DSN."""
    text = str(text)
    passwords = _url_passwords(url)
    # Longest first, so that a password containing another spelling is replaced whole.
    for password in sorted(passwords, key=len, reverse=True):
        text = text.replace(password, "***")
    if passwords:
        users = {urllib.parse.unquote(u) for u in re.findall(r"^[^:/?#]+://([^:/@?#]*):", url)} - {""}
        for user in users:
            replacement = user.replace("\\", "\\\\") + ":***@"  # a literal for re.sub
            text = re.sub(re.escape(user) + r":(?!\*\*\*@)[^\s@]*@", replacement, text)
        text = re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", text, flags=re.IGNORECASE)
    return text


class RedactedError(Exception):
    """Stands in, as the cause of an error this back-end raises, for a library error whose
    text held the URL's password (the password replaced by ``***``)."""


def safe_cause(err: BaseException, url: str) -> BaseException:
    text = str(err)
    clean = redact(text, url)
    if clean == text:
        return err
    return RedactedError(f"{type(err).__module__}.{type(err).__qualname__}: {clean}")


class Backend(ABC):
    """Base class of storage drivers; subclasses are chosen by URL scheme."""

    #: True where :meth:`find_latest` answers from an index of the records' end times.
    keeps_end_times: ClassVar[bool] = False
    #: False where every process has its own store (``memory://``).
    shared_between_processes: ClassVar[bool] = True
    #: True where :meth:`by_run_page` reads only that page; otherwise the core reads a run
    #: whole, once (each page of the default slices the whole run).
    pages_runs: ClassVar[bool] = False

    def __init__(self, url: str) -> None:
        self.url = url

    @property
    def display_url(self) -> str:
        """The URL with its password replaced by ``***``: what messages and logs show.
        (Made once per URL: every read names it, in case it fails.)"""
        shown = self.__dict__.get("_display")
        if shown is None or shown[0] is not self.url:
            shown = self.__dict__["_display"] = (self.url, redact(self.url, self.url))
        return shown[1]

    @property
    def origin(self) -> str:
        """The ledger's name across copies (checkpoints carry it). Back-ends that store one
        return it; the default is :attr:`identity`."""
        return self.identity

    @property
    def trust_identity(self) -> str:
        """What this user's remembered tree head of this store is kept under (its state
        directory): :attr:`identity`, but for a ledger file, which is named by its path as
        given (absolute, links not resolved). A link put where a verified ledger was then
        still meets that ledger's head: a rewritten copy behind it is not a new ledger."""
        return self.identity

    @property
    def identity(self) -> str:
        """What names this store, the same however its URL was spelled, with no secret in it.

        The spool directory is keyed by it: records a crash leaves behind must be replayed
        into the same store, never into another one opened from the same directory.
        """
        scheme, _, rest = self.url.partition("://")
        netloc, slash, path = rest.partition("/")
        if "@" in netloc:  # drop a password: the key is written to disk
            user, _, host = netloc.rpartition("@")
            netloc = user.split(":", 1)[0] + "@" + host
        return f"{scheme}://{netloc}{slash}{path}"

    @abstractmethod
    def append(self, blocks: Sequence[StoredBlock]) -> None:
        """Store ``blocks`` (consecutive, on the current head) in one atomic step."""

    @abstractmethod
    def head(self) -> ChainHead | None:
        """The highest block, or ``None`` for an empty ledger."""

    @abstractmethod
    def blocks(self, start: int = 0, stop: int | None = None) -> Iterator[StoredBlock]:
        """Blocks ``start <= height < stop`` in height order, records in block order."""

    def block_columns(self, start: int = 0, stop: int | None = None) -> Iterator[BlockColumns]:
        """The same blocks as :meth:`blocks`, each as (height, id, header, record ids, record
        bodies): what chain verification reads. Back-ends may override it to skip building
        an object per record; the bytes must be the stored ones, exactly as ``blocks`` gives."""
        for block in self.blocks(start, stop):
            records = block.records
            yield BlockColumns(
                block.height, block.id, block.header, [r.id for r in records], [r.body for r in records]
            )

    def block_id_at(self, height: int) -> str | None:
        """The id stored for block ``height`` (None where there is none): what a writer
        compares with the block its remembered tree head ended on before each shipment.
        The default reads the block; back-ends with a table of blocks read one row."""
        block = next(iter(self.block_columns(height, height + 1)), None)
        return None if block is None or block.height != height else block.id

    @abstractmethod
    def record_count(self) -> int:
        """How many records are stored, in blocks or not (verification compares)."""

    @abstractmethod
    def known(self, record_ids: Iterable[str]) -> set[str]:
        """The subset of ``record_ids`` already stored."""

    @abstractmethod
    def find(
        self, role: Role, *, path: str | None = None, digest: str | None = None
    ) -> list[Located]:
        """Records with an input (``in``) or output (``out``) matching path and/or digest."""

    def find_places(self, role: Role, *, path: str | None = None, digest: str | None = None) -> list[Located]:
        """:meth:`find` where a record may come without its body (``b""``): the core asks
        :meth:`bodies` for those of records it has not proved before. The default is
        :meth:`find`; back-ends whose bodies are costly to move (a record naming 10,000
        outputs, asked once per output) override both."""
        return self.find(role, path=path, digest=digest)

    def bodies(self, record_ids: Sequence[str]) -> dict[str, bytes]:
        """The stored bodies of ``record_ids`` (those found), as stored."""
        found: dict[str, bytes] = {}
        for record_id in record_ids:
            for located in self.by_id_prefix(record_id, limit=2):
                if located.record.id == record_id:
                    found[record_id] = located.record.body
        return found

    def records_at(self, seqs: Sequence[int]) -> dict[int, StoredRecord] | None:
        """The stored records at ledger positions ``seqs`` (0 for the first record ever
        appended), those found, by position: what a reader fetches where the names kept
        beside its verified tree point and the index did not. ``None`` (the default): ask
        for the blocks holding them instead."""
        return None

    def find_page(
        self, role: Role, *, path: str | None = None, digest: str | None = None,
        offset: int = 0, limit: int | None = None,
    ) -> list[Located]:
        """One page of :meth:`find`'s answer, in the same (ledger) order: ``limit`` records
        from ``offset`` on (all of them when ``limit`` is ``None``). The default slices
        ``find``; back-ends with an index override it to read only the page."""
        offset = max(0, int(offset))
        found = self.find(role, path=path, digest=digest)
        return found[offset:] if limit is None else found[offset : offset + max(0, int(limit))]

    def count_found(self, role: Role, *, path: str | None = None, digest: str | None = None,
                    at_most: int | None = None, below: int | None = None) -> int:
        """How many records :meth:`find` would return, or ``at_most`` where there are more.
        Back-ends with an index count its rows (which differs from ``len(find(...))`` only on
        an index edited behind their back), and with ``below``, only rows of the first
        ``below`` records (a verified head's): a row moved past them counts no more. Here the
        answer is computed from the records, so there is no row to move."""
        found = len(self.find(role, path=path, digest=digest))
        return found if at_most is None else min(found, max(0, at_most))

    def index_rows(self, stop_seq: int) -> Iterator[IndexRow] | None:
        """Every stored index row with ``seq < stop_seq``, one :class:`IndexRow` per sequence
        number, in sequence order, exactly as stored (rows a tamperer added included), read
        in bounded memory; rows at or past ``stop_seq`` (appended meanwhile) are left out.

        ``None`` means this back-end keeps no index that can be written apart from the
        records (its look-ups are computed from the record bodies), so there is nothing to
        compare: the default."""
        return None

    def index_summaries(self, start_seq: int, stop_seq: int) -> list[IndexSummary] | None:
        """The records with ``start_seq <= seq < stop_seq`` as :class:`IndexSummary` rows
        (artifact rows folded by :func:`fold_artifacts`), in sequence order: what the audit
        compares with the verified records, a range at a time. ``None`` (the default): this
        back-end keeps no index that can be written apart from the records."""
        return None

    def artifact_count(self, stop_seq: int, start_seq: int | None = None) -> int:
        """How many artifact rows are stored with ``start_seq <= seq < stop_seq`` (no lower
        bound where ``start_seq`` is None), orphans included (asked only where
        :meth:`index_summaries` answers)."""
        return 0

    def paths_under(self, directory: str, after: str = "", limit: int = 10_000) -> list[str] | None:
        """The paths the index names (any role) that lie below ``directory`` (a normal,
        absolute path), in byte order, each once: at most ``limit`` of them, those after
        ``after``. ``None`` (the default): this back-end keeps no index to ask."""
        return None

    def rows_outside_the_chain(self, size: int, blocks: int) -> int:
        """How many index rows lie where no chain of ``blocks`` blocks and ``size`` records
        puts them, and no append since can have put them: record rows before the first
        record, or past ``size`` in a block at or below the audited ones or in no block at
        all; artifact rows past ``size`` that name no stored record; block rows below 0.
        (A writer stores a block, its records and their artifact rows in one transaction, so
        in one snapshot a row appended since always has its record and its block.) Asked
        only where :meth:`index_summaries` answers."""
        return 0

    def find_latest_many(self, role: Role, paths: Sequence[str]) -> dict[str, tuple[Located, str]]:
        """:meth:`find_latest` of each of ``paths`` (those with an answer): what a
        verification of many files asks at once. The default asks each path."""
        found = {}
        for path in paths:
            answer = self.find_latest(role, path)
            if answer is not None:
                found[path] = answer
        return found

    def find_places_many(self, role: Role, paths: Sequence[str]) -> dict[str, list[Located]]:
        """:meth:`find_places` by path for each of ``paths`` (those with rows). The default
        asks each path."""
        found = {}
        for path in paths:
            rows = self.find_places(role, path=path)
            if rows:
                found[path] = rows
        return found

    def find_latest(self, role: Role, path: str) -> tuple[Located, str] | None:
        """The record that read or wrote ``path`` with the latest end time (then the latest
        in ledger order), and the end time the index claims; ``None`` where none did. The
        record may come without its body (``b""``), as from :meth:`find_places`.
        Asked only where :attr:`keeps_end_times` is true; the core otherwise reads every
        record :meth:`find` returns."""
        return None

    def find_ended_since(self, role: Role, path: str, since: str, offset: int,
                         limit: int) -> list[tuple[Located, str]]:
        """The records that read or wrote ``path`` and ended at ``since`` or later, with the
        end time the index claims for each, latest first (end time, then ledger order):
        ``limit`` of them from ``offset``. Which of those saw the file last is worked out by
        the core (a reader counts from its start, :meth:`lineage_ledger.Ledger.last_seen`).
        Asked only where :attr:`keeps_end_times` is true, as :meth:`find_latest` is."""
        raise NotImplementedError(f"{type(self).__name__} keeps no index of end times")

    def endorsed_head(self) -> tuple[int, str] | None:
        """(tree size, root hex) that parties other than this client vouch for (Fabric: the
        endorsing peers' signed tree head, signatures proved; BAASH: its quorum), or None
        (the default): nothing to compare. Raises a VerificationError for a forged answer."""
        return None

    @abstractmethod
    def by_run(self, run_id: str) -> list[Located]:
        """Records of one workflow run, in ledger order."""

    def by_run_last(self, run_id: str, limit: int) -> tuple[list[Located], int]:
        """The last ``limit`` records of one run, in ledger order, and how many the run has
        (as the index says): what `log --run RUN -n N` shows. The default slices
        :meth:`by_run`; back-ends with an index read only those."""
        found = self.by_run(run_id)
        return found[-max(0, int(limit)):] if limit > 0 else [], len(found)

    def by_run_page(self, run_id: str, offset: int, limit: int) -> list[Located]:
        """Records ``offset`` to ``offset + limit`` of one run, in ledger order: a page of
        ``log --run RUN -n 0``, so that a run of 100,000 tasks is never held whole. The
        default slices :meth:`by_run`; back-ends with an index read only those."""
        offset, limit = max(0, int(offset)), max(0, int(limit))
        return self.by_run(run_id)[offset : offset + limit] if limit else []

    @abstractmethod
    def by_id_prefix(self, prefix: str, limit: int = 2) -> list[Located]:
        """Records whose id starts with ``prefix`` (at most ``limit``)."""

    def close(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Release connections; the default has nothing to release."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.display_url!r})"
