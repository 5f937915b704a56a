"""Record.decode's one-go paths (core/_model.py, core/_record_body.py) against the general one it short-cuts: the
same records from the same bytes, and the same bytes refused. The reference below is written
apart from the code under test: json.loads, the public Record constructor on parse_time's
datetimes, and a canonical re-encoding whose times are formatted the general way (no fast
path). Hypothesis, a few seconds."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lineage_ledger import Artifact, Record
from lineage_ledger._canonical import canonical_object, format_time, parse_time, parse_time_text
from lineage_ledger._model import _RECORD_FIELDS, RECORD_VERSION
from lineage_ledger._record_body import typed_body

UNREADABLE = (ValueError, KeyError, TypeError, AttributeError)  # what a reader turns into RecordTampered


def _general(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def reference(data: bytes) -> Record:
    raw = json.loads(data.decode("utf-8"))
    if not isinstance(raw, dict) or raw.get("v") != RECORD_VERSION or raw.keys() - _RECORD_FIELDS - {"v"}:
        raise ValueError("not a version-1 record")
    fields = {k: v for k, v in raw.items() if k != "v"}
    fields["started"], fields["ended"] = parse_time(fields["started"]), parse_time(fields["ended"])
    record = Record(**fields)
    again = record.to_dict() | {"started": _general(record.started), "ended": _general(record.ended)}
    if _canonical(again) != data:
        raise ValueError("not canonical")
    return record


def _same(data: bytes) -> None:
    try:
        expected = reference(data)
    except UNREADABLE:
        expected = None
    try:
        got = Record.decode(data)
    except UNREADABLE:
        assert expected is None, data
        return
    assert expected is not None, data
    assert got.to_dict() == expected.to_dict() and got.encode() == data
    for name in ("started", "ended"):
        assert getattr(got, name) == getattr(expected, name)
        assert getattr(got, name).tzinfo is getattr(expected, name).tzinfo is timezone.utc


name = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8)
hex64 = st.text("0123456789abcdef", min_size=64, max_size=64)
times = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(timezone.utc))
whole = times.map(lambda t: t.replace(microsecond=0))
values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                      | name, lambda c: st.lists(c, max_size=3) | st.dictionaries(name, c, max_size=3), max_leaves=6)
artifacts = st.builds(Artifact, path=name.map(lambda t: "/d/" + t), blake3=hex64, size=st.integers(0, 2**70))
records = st.builds(
    Record, engine=name, run_id=name, task_id=name, task_name=name,
    status=st.sampled_from(["succeeded", "failed", "cached"]), started=times | whole, ended=times | whole,
    inputs=st.lists(artifacts, max_size=2), outputs=st.lists(artifacts, max_size=2), code_digest=st.none() | hex64,
    parameters=st.dictionaries(name, values, max_size=3), environment=st.dictionaries(name, name, max_size=2),
    attempt=st.integers(1, 3), extra=st.dictionaries(name, values, max_size=2))

# Texts a time field may be edited to: canonical ones, and near misses of every kind.
time_texts = st.one_of(
    times.map(format_time), whole.map(format_time),
    times.map(lambda t: t.isoformat()), times.map(lambda t: t.replace(tzinfo=None).isoformat()),
    times.map(lambda t: format_time(t).replace("T", " ")), times.map(lambda t: format_time(t).lower()),
    times.map(lambda t: format_time(t)[:-1] + "0Z"), times.map(lambda t: format_time(t)[:19] + "Z"),
    times.map(lambda t: format_time(t).replace("0", "\u0660")),  # Arabic-Indic digits
    st.sampled_from(["2025-01-01T24:00:00.000000Z", "2025-02-30T00:00:00.000000Z", "0000-01-01T00:00:00.000000Z",
                     "2025-01-01T00:00:60.000000Z", "2025-01-01T00:00:00.000000+00:00", "2025-01-01T00:00:00,000000Z",
                     "2025-01-01T00:00:00.000000Z ", "+2025-01-01T00:00:00.000000Z", "2025-W01-1T00:00:00.000000Z"]),
    st.integers(), st.none(), st.text(max_size=30))


def _edit_json(record: Record, data) -> bytes:
    body = json.loads(record.encode())
    field = data.draw(st.sampled_from(sorted(body)))
    how = data.draw(st.sampled_from(["time", "value", "drop", "add", "entry"]))
    if how == "time":
        body[data.draw(st.sampled_from(["started", "ended"]))] = data.draw(time_texts)
    elif how == "value":
        body[field] = data.draw(values | st.just(True) | st.just(1.0) | st.just(RECORD_VERSION + 1) | name)
    elif how == "drop":
        del body[field]
    elif how == "add":
        body[data.draw(name)] = data.draw(values)
    elif body["outputs"]:
        path = next(iter(body["outputs"]))
        entry = body["outputs"][path]
        entry[data.draw(st.sampled_from(["blake3", "size", "type", "alias_of", "other"]))] = data.draw(
            values | hex64 | st.just(path) | st.just("dir"))
    return _canonical(body)


@settings(max_examples=100, deadline=None)
@given(records)
def test_canonical_bytes_read_back_the_same(record):
    data = record.encode()
    _same(data)
    # canonical_object's path is the one taken wherever nothing is in its way.
    assert (canonical_object(data) is not None) == (b"\\" not in data and not _has_float(json.loads(data)))
    # The typed path (core/_record_body.py) too, for these records (every entry a file's).
    assert (typed_body(data) is not None) == (canonical_object(data) is not None)


@settings(max_examples=200, deadline=None)
@given(records, st.data())
def test_edited_fields_are_read_or_refused_alike(record, data):
    _same(_edit_json(record, data))


@settings(max_examples=150, deadline=None)
@given(records, st.data())
def test_edited_bytes_are_read_or_refused_alike(record, data):
    """Bytes that are not canonical (spaces, escapes, key order, any byte changed)."""
    raw = record.encode()
    how = data.draw(st.sampled_from(["byte", "insert", "delete", "spaced", "escaped", "unsorted"]))
    if how == "spaced":
        raw = json.dumps(json.loads(raw), sort_keys=True, ensure_ascii=False).encode()
    elif how == "escaped":
        raw = json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode()
    elif how == "unsorted":
        raw = json.dumps(dict(reversed(json.loads(raw).items())), separators=(",", ":"), ensure_ascii=False).encode()
    else:
        at = data.draw(st.integers(0, len(raw) - 1))
        byte = bytes([data.draw(st.integers(0, 255))])
        keep = raw[at:] if how == "insert" else raw[at + 1:]
        raw = raw[:at] + (b"" if how == "delete" else byte) + keep
    _same(raw)  # bytes that are not UTF-8 too: msgspec refuses them, json.loads raises


@settings(max_examples=300, deadline=None)
@given(time_texts)
def test_parse_time_text_is_parse_time_and_format_time(text):
    try:
        expected = parse_time(text)
    except ValueError:
        with pytest.raises(ValueError):
            parse_time_text(text)
        return
    moment, canonical = parse_time_text(text)
    assert moment == expected and moment.tzinfo is expected.tzinfo and canonical == format_time(expected)


@given(times | whole, st.sampled_from([timezone.utc, timezone.max, timezone.min]))
def test_format_time_of_a_whole_second_is_the_general_spelling(moment, zone):
    assert format_time(moment.astimezone(zone)) == _general(moment)


@given(records, st.booleans())
def test_a_summary_is_the_record_the_constructor_builds_of_its_fields(record, keep_extra):
    """Record.summary (what a lineage keeps of each producer) skips the constructor's checks;
    it must be the record the constructor builds of the same fields, byte for byte."""
    expected = Record(engine=record.engine, run_id=record.run_id, task_id=record.task_id,
                      task_name=record.task_name, status=record.status, started=record.started,
                      ended=record.ended, attempt=record.attempt, extra=record.extra if keep_extra else {})
    got = Record.decode(record.encode()).summary(keep_extra=keep_extra)
    assert got == expected and got.encode() == expected.encode() and got.id == expected.id
    assert got.ended_text == expected.ended_text


# canonical_object lets msgspec stand for json where they write the same bytes: any text
# (controls, DEL, line separators, quotes, non-BMP beside BMP keys), floats of every size,
# integers past 64 bits: shown canonical only where json would write the same bytes.
any_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=6) | st.sampled_from(
    ["\x7f", "\u2028", "\u2029", "/", '"', "\\", "\n", "\x1f", "\ufeff", "\uffff", "\U0001f600", "\xe9"])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=2**63 - 2, max_value=2**65)
    | st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([10**40, -(10**19), 1e16, 1e-7, 5e-324, -0.0])
    | any_text, lambda c: st.lists(c, max_size=3) | st.dictionaries(any_text, c, max_size=3), max_leaves=8)


def _spellings(value) -> list[bytes]:
    """``value`` as json writes it canonically, as msgspec writes it sorted, and ASCII-escaped."""
    out = [msgspec.json.encode(value, order="sorted")]
    try:
        out.append(_canonical(value))
        out.append(json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode())
    except ValueError:
        pass
    return out


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_a_value_shown_canonical_is_what_json_reads_and_writes(value):
    for data in _spellings(value) + _spellings({"k": value, "\U0001f600": 1, "\uffff": [value]}):
        shown = canonical_object(data)
        if shown is not None:
            assert shown == json.loads(data) and _canonical(shown) == data
        elif b"\\" not in data and type(value) is dict and not _has_float(value):
            # Nothing in the way: the fast path must be taken (or the tests above test nothing).
            assert _canonical(json.loads(data)) != data


def _has_float(value) -> bool:
    if isinstance(value, dict):
        return any(map(_has_float, value.values()))
    if isinstance(value, list):
        return any(map(_has_float, value))
    return type(value) is float


@settings(max_examples=200, deadline=None)
@given(records, st.dictionaries(any_text, json_values, max_size=3), st.sampled_from(["parameters", "extra", "environment"]))
def test_records_spelled_by_msgspec_are_read_or_refused_alike(record, value, field):
    """Bodies with any value in a free-form field, spelled by json, by msgspec and escaped:
    each read as the general path reads it, or refused as it refuses it."""
    body = json.loads(record.encode()) | {field: value}
    for data in _spellings(body):
        _same(data)


def test_directory_and_alias_entries_take_the_general_path_and_read_back():
    """The typed path's entry holds a file's two keys: a directory's ``type`` or an alias's
    ``alias_of`` is dropped by its decoder, so it must answer None (not a record without
    them), and the general path reads the record whole."""
    now = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc)
    record = Record(engine="e", run_id="r", task_id="t", task_name="n", status="succeeded", started=now, ended=now,
                    inputs={"/d/real": {"blake3": "a" * 64, "size": 1},
                            "/d/link": {"blake3": "a" * 64, "size": 1, "alias_of": "/d/real"}},
                    outputs={"/d/out": {"blake3": "b" * 64, "size": 2, "type": "dir"}})
    data = record.encode()
    assert canonical_object(data) is not None and typed_body(data) is None
    again = Record.decode(data)
    assert again.outputs["/d/out"]["type"] == "dir" and again.inputs["/d/link"]["alias_of"] == "/d/real"
    assert again.encode() == data
