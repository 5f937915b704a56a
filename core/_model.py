"""Records, artifacts and blocks, and the bytes they are stored as.

A :class:`Record` is one task execution. Its id is the BLAKE3 of its canonical bytes, so
the id commits to every field. A :class:`Block` batches records under a header that
links to the previous block and commits to the records through a Merkle root.

:class:`StoredRecord` and :class:`StoredBlock` are what back-ends keep: the exact bytes
that were hashed plus the index keys the core extracted. Back-ends never compute a hash;
verification recomputes every id from the stored bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from blake3 import blake3

from ._artifact import (
    Artifact,
    DirectoryArtifact,
    _all_normal,
    _check_hex,
    artifact_map,
    is_alias,
    recorded_paths,
)
from ._canonical import (
    canonical_bytes,
    canonical_object,
    format_time,
    from_canonical,
    parse_time,
    parse_time_text,
    reject_non_string_keys,
)
from ._order import order_end, order_start
from ._record_body import typed_body

__all__ = [
    "Artifact",
    "DirectoryArtifact",
    "artifact_map",
    "Block",
    "BlockColumns",
    "BlockHeader",
    "Record",
    "StoredBlock",
    "StoredRecord",
    "STATUSES",
    "RECORD_VERSION",
    "digest_hex",
    "is_alias",
]

RECORD_VERSION = 1
_SUMMARY_FIELDS = ("engine", "run_id", "task_id", "task_name", "status", "started", "ended", "attempt")
STATUSES = frozenset({"succeeded", "failed", "cached"})


def digest_hex(data: bytes) -> str:
    return blake3(data).hexdigest()


@dataclass(frozen=True, slots=True)
class Record:
    """One task execution, as an engine reported it."""

    engine: str
    run_id: str
    task_id: str
    task_name: str
    status: str
    started: datetime
    ended: datetime
    # A list of Artifacts is accepted too; both become {path: {"blake3": hex, "size": n}}.
    inputs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    outputs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    code_digest: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    environment: Mapping[str, Any] = field(default_factory=dict)
    attempt: int = 1
    extra: Mapping[str, Any] = field(default_factory=dict)
    # Computed once: encoding is most of what record() costs.
    _canonical: bytes | None = field(default=None, init=False, repr=False, compare=False)
    _times: tuple[str, str] = field(default=("", ""), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # A new record names its files by their normal absolute paths (see _artifact.recorded_path);
        # a decoded one is only checked (a stored path that is not normal is refused).
        object.__setattr__(self, "inputs", recorded_paths(self.inputs, "inputs"))
        object.__setattr__(self, "outputs", recorded_paths(self.outputs, "outputs"))
        self._check_fields()
        for name in ("parameters", "environment", "extra"):
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                raise ValueError(f"{name} must be a mapping")
            reject_non_string_keys(value)

    def _check_fields(self) -> None:
        """Every check but the key scan of ``parameters``, ``environment`` and ``extra``."""
        self._check_values()
        # Formatting rejects naive datetimes early, on the caller's line.
        object.__setattr__(self, "_times", (format_time(self.started), format_time(self.ended)))

    def _check_values(self) -> None:
        """:meth:`_check_fields` but the times."""
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {sorted(STATUSES)}, got {self.status!r}")
        for name in ("engine", "run_id", "task_id", "task_name"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise ValueError(f"{name} must be a string")
            if "\x00" in value:  # PostgreSQL text cannot hold NUL: refuse it here, not at ship time
                raise ValueError(f"{name} contains a NUL character")
        object.__setattr__(self, "inputs", artifact_map(self.inputs, "inputs"))
        object.__setattr__(self, "outputs", artifact_map(self.outputs, "outputs"))
        if self.code_digest is not None and not isinstance(self.code_digest, str):
            raise ValueError("code_digest must be a string or None")
        # Not a bool (True == 1): "attempt": true is a body no writer writes, which would be a
        # second spelling, under another id, of the record whose attempt is 1.
        if not isinstance(self.attempt, int) or isinstance(self.attempt, bool) or self.attempt < 1:
            raise ValueError("attempt must be a positive integer")

    @classmethod
    def _from_json_values(cls, **fields: Any) -> Record:
        """A record whose ``parameters``, ``environment`` and ``extra`` are dicts already in
        JSON form (what :func:`jsonable` returns: string keys throughout), so their key scan
        is skipped; every other field is checked as usual. For :class:`TaskCapture`, which
        builds every record this way: the scan was a tenth of its cost per record."""
        if fields.keys() != _RECORD_FIELDS:
            raise TypeError(f"record fields missing or unknown: {sorted(fields.keys() ^ _RECORD_FIELDS)}")
        record = object.__new__(cls)
        for name, value in fields.items():
            object.__setattr__(record, name, value)
        object.__setattr__(record, "_canonical", None)
        record._check_fields()
        for name in ("parameters", "environment", "extra"):
            if type(fields[name]) is not dict:
                raise ValueError(f"{name} must be a dict in JSON form")
        return record

    def summary(self, *, keep_extra: bool = False) -> Record:
        """This record with only who ran which task, when and how it ended (``extra`` too
        where ``keep_extra``); no artifacts, parameters, environment or code digest. Built
        without a new record's checks (15 us, a tenth of verifying the outputs of 10,000
        tasks): every value is this record's, checked when it was made or decoded."""
        summary = object.__new__(Record)
        set_field = object.__setattr__
        for name in _SUMMARY_FIELDS:
            set_field(summary, name, getattr(self, name))
        for name in ("inputs", "outputs", "parameters", "environment"):
            set_field(summary, name, {})
        set_field(summary, "extra", self.extra if keep_extra else {})
        set_field(summary, "code_digest", None)
        set_field(summary, "_canonical", None)
        set_field(summary, "_times", self._times)
        return summary

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": RECORD_VERSION,
            "engine": self.engine,
            "run_id": self.run_id,
            "task_id": self.task_id,
            "task_name": self.task_name,
            "status": self.status,
            "attempt": self.attempt,
            "started": self._times[0],
            "ended": self._times[1],
            "code_digest": self.code_digest,
            "parameters": self.parameters,
            "environment": self.environment,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "extra": self.extra,
        }

    def encode(self) -> bytes:
        if self._canonical is None:
            # Keys were checked in __post_init__; paths are strings by construction.
            object.__setattr__(self, "_canonical", canonical_bytes(self.to_dict(), check_keys=False))
        return self._canonical  # type: ignore[return-value]

    @property
    def id(self) -> str:
        return digest_hex(self.encode())

    @property
    def ended_text(self) -> str:
        """``format_time(self.ended)``, as the record's bytes hold it (worked out once)."""
        return self._times[1]

    @property
    def started_text(self) -> str:
        """When the task started, by its recorder's clock (canonical UTC text)."""
        return self._times[0]

    @property
    def order_end_text(self) -> str:
        """When the task ended in the ledger's order (:mod:`._order`): its end, or just after
        the latest record its recorder had seen when it started, if that is later. What the
        index keeps as its end time, and what "the last to write a file" compares."""
        return order_end(self._times[1], self.extra)

    @property
    def order_start_text(self) -> str:
        """When the task started in the ledger's order (:mod:`._order`): where a reader's
        digests of its inputs were taken."""
        return order_start(self._times[0], self.extra)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Record:
        return cls._from_fields(data, decoded=False)

    @classmethod
    def _from_fields(cls, data: Mapping[str, Any], *, decoded: bool) -> Record:
        """``decoded``: ``data`` came from a JSON parser, so every mapping key in it is a
        string and ``parameters``, ``environment`` and ``extra`` need no key scan (a tenth of
        reading a record)."""
        if not _is_version(data.get("v")):
            raise ValueError(f"unsupported record version {data.get('v')!r}")
        unknown = data.keys() - _RECORD_FIELDS - {"v"}
        if unknown:
            raise ValueError(f"unknown record fields: {sorted(unknown)}")
        fields = {k: v for k, v in data.items() if k != "v"}
        fields["started"] = parse_time(fields["started"])
        fields["ended"] = parse_time(fields["ended"])
        if decoded and fields.keys() == _RECORD_FIELDS:
            return cls._from_json_values(**fields)
        return cls(**fields)

    @classmethod
    def decode(cls, data: bytes) -> Record:
        """Parse canonical bytes; raises ``ValueError`` if they are not canonical.

        Every reader proves and decodes the records it answers from (a full audit, one per
        output on disk), so the common case is built here in one go: every field present
        (canonical bytes hold them all), each checked as :meth:`_from_fields` checks it, the
        times parsed and their text checked as :func:`parse_time_text` does. Anything else
        takes the general path, for its error. Either way the record must encode back to
        ``data`` byte for byte. (tests/test_decode_fast.py: the same records and refusals
        as the general path, by hypothesis.)"""
        checked = typed_body(data)
        if checked is not None:
            # Every field's type and value checked by the typed decoder but the times' text
            # and the paths' form, checked here as the general path checks them.
            record = cls._unchecked(checked)
            if record._times != (checked["started"], checked["ended"]):
                raise ValueError("record bytes are not in canonical form")
            for name in ("inputs", "outputs"):
                if not _all_normal(checked[name]):  # each path then checked on its own (raises, or the same map)
                    object.__setattr__(record, name, artifact_map(checked[name], name))
            object.__setattr__(record, "_canonical", data)
            return record
        shown = canonical_object(data)
        raw = shown if shown is not None else from_canonical(data)
        if type(raw) is not dict or raw.keys() != _BODY_KEYS or not _is_version(raw["v"]):
            record = cls._from_fields(raw, decoded=True)
        else:
            # inputs and outputs are maps in canonical bytes. _check_values also takes a list
            # of entries (what a record may be built from) and makes the map of it, so a body
            # holding a list ("inputs":[]) would be taken, below, as the encoding of the record
            # with the map: a second spelling under another id, which the audit refuses.
            for name in ("inputs", "outputs"):
                if type(raw[name]) is not dict:
                    raise ValueError(f"record bytes are not in canonical form: {name} is not a map")
            record = cls._unchecked(raw)
            record._check_values()
            for name in ("parameters", "environment", "extra"):
                if type(raw[name]) is not dict:
                    raise ValueError(f"{name} must be a dict in JSON form")
            if shown is not None:
                # data is the canonical bytes of raw, and the checks passed keep every value
                # of raw as it is (the times' text, each artifact entry's keys and values):
                # data is this record's encoding, without building it again.
                object.__setattr__(record, "_canonical", data)
                return record
        if record.encode() != data:
            raise ValueError("record bytes are not in canonical form")
        return record

    @classmethod
    def _unchecked(cls, raw: dict[str, Any]) -> Record:
        """A record of every field of ``raw`` (a body's keys), the times parsed (raising
        where they are not times) and their canonical text kept, nothing else checked."""
        record = object.__new__(cls)
        set_field = object.__setattr__
        for name in _PLAIN_FIELDS:
            set_field(record, name, raw[name])
        started, started_text = parse_time_text(raw["started"])
        ended, ended_text = parse_time_text(raw["ended"])
        set_field(record, "started", started)
        set_field(record, "ended", ended)
        set_field(record, "_canonical", None)
        set_field(record, "_times", (started_text, ended_text))
        return record

    def stored(self, body: bytes | None = None, record_id: str | None = None) -> StoredRecord:
        """The stored form; ``body`` and ``record_id`` may be passed in when already computed."""
        if body is None:
            body = self.encode()
        return StoredRecord(
            record_id or blake3(body).hexdigest(),
            body,
            self.run_id,
            tuple([(p, e["blake3"]) for p, e in self.inputs.items()]),
            tuple([(p, e["blake3"]) for p, e in self.outputs.items()]),
            self.order_end_text,
        )


# Not a frozen dataclass: one is built per record() call, and a frozen dataclass pays an
# object.__setattr__ per field. Treat instances as immutable all the same.
@dataclass(slots=True, eq=True)
class StoredRecord:
    """A record's canonical bytes, its claimed id, and the keys back-ends index it by."""

    id: str
    body: bytes
    run_id: str = ""
    inputs: tuple[tuple[str, str], ...] = ()
    outputs: tuple[tuple[str, str], ...] = ()
    # The task's end in the ledger's order (Record.order_end_text), canonical UTC text, for
    # "which record saw this path last". Derived
    # from the body like the index keys; not compared (a store may not hand it back).
    ended: str = field(default="", compare=False)

    @classmethod
    def from_body(cls, body: bytes) -> StoredRecord:
        return Record.decode(body).stored()


@dataclass(frozen=True, slots=True)
class BlockHeader:
    height: int
    prev: str | None
    merkle_root: str
    time: datetime
    count: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": RECORD_VERSION,
            "height": self.height,
            "prev": self.prev,
            "merkle_root": self.merkle_root,
            "time": format_time(self.time),
            "count": self.count,
        }

    def encode(self) -> bytes:
        return canonical_bytes(self.to_dict())

    @property
    def id(self) -> str:
        return digest_hex(self.encode())

    @classmethod
    def decode(cls, data: bytes) -> BlockHeader:
        raw = from_canonical(data)
        if not isinstance(raw, dict) or raw.get("v") != RECORD_VERSION:
            raise ValueError("not a version-1 block header")
        if set(raw) != {"v", "height", "prev", "merkle_root", "time", "count"}:
            raise ValueError(f"unexpected header fields: {sorted(raw)}")
        header = cls(
            height=raw["height"],
            prev=None if raw["prev"] is None else _check_hex(raw["prev"], "prev"),
            merkle_root=_check_hex(raw["merkle_root"], "merkle_root"),
            time=parse_time(raw["time"]),
            count=raw["count"],
        )
        if header.encode() != data:
            raise ValueError("header bytes are not in canonical form")
        return header


@dataclass(frozen=True, slots=True)
class StoredBlock:
    """A block as back-ends keep it: header bytes, claimed id, and its records in order."""

    height: int
    id: str
    header: bytes
    records: tuple[StoredRecord, ...]


class BlockColumns(NamedTuple):
    """A stored block as verification reads it: no object per record, only two columns.

    ``ids[i]`` and ``bodies[i]`` are record ``i``'s claimed id and stored bytes.
    """

    height: int
    id: str
    header: bytes
    ids: Sequence[str]
    bodies: Sequence[bytes]


@dataclass(frozen=True, slots=True)
class Block:
    header: BlockHeader
    records: tuple[StoredRecord, ...]

    @property
    def id(self) -> str:
        return self.header.id

    @property
    def height(self) -> int:
        return self.header.height

    def stored(self) -> StoredBlock:
        return StoredBlock(self.header.height, self.header.id, self.header.encode(), self.records)


def _is_version(value: Any) -> bool:
    """Whether a body's ``v`` is this version: the integer, not ``true`` (``True == 1``: a body
    no writer writes, which the one-go path took without encoding it again)."""
    return type(value) is int and value == RECORD_VERSION


_RECORD_FIELDS = frozenset(f for f in Record.__dataclass_fields__ if not f.startswith("_"))
_BODY_KEYS = _RECORD_FIELDS | {"v"}  # what canonical bytes hold: Record.to_dict's keys
_PLAIN_FIELDS = tuple(_RECORD_FIELDS - {"started", "ended"})  # set as they are decoded
