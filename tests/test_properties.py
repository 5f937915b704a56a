"""Property tests of the core: encoding, tamper detection, Merkle trees."""

from __future__ import annotations

import os
import tempfile
import uuid
from dataclasses import replace
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lineage_ledger import (
    Artifact,
    MerkleBuilder,
    Record,
    StoredBlock,
    StoredRecord,
    VerificationError,
    inclusion_proof,
    merkle_root,
    open_ledger,
    verify_chain,
    verify_inclusion,
)
from lineage_ledger._model import _RECORD_FIELDS
from lineage_ledger.backends import open_backend
from tests.backend_conformance import chain_of
from tests.support.factories import make_records

_SCRATCH = tempfile.mkdtemp(prefix="ll-prop-")  # hypothesis examples cannot take tmp_path

hex64 = st.text("0123456789abcdef", min_size=64, max_size=64)
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
# Names and paths go into indexed text columns, where NUL is refused at construction.
name = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | text
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(text, children, max_size=3),
    max_leaves=10,
)
times = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(timezone.utc)
)
artifacts = st.builds(
    Artifact, path=name.map(lambda t: "/d/" + t), blake3=hex64, size=st.integers(0, 2**40)
)
records = st.builds(
    Record,
    engine=name, run_id=name, task_id=name, task_name=name,
    status=st.sampled_from(["succeeded", "failed", "cached"]),
    started=times, ended=times,
    inputs=st.lists(artifacts, max_size=3), outputs=st.lists(artifacts, max_size=3),
    code_digest=st.none() | hex64,
    parameters=st.dictionaries(text, json_values, max_size=4),
    environment=st.dictionaries(text, text, max_size=3),
    attempt=st.integers(1, 5),
    extra=st.dictionaries(text, json_values, max_size=2),
)


@given(records)
def test_canonical_encoding_round_trips(record):
    data = record.encode()
    again = Record.decode(data)
    assert again == record
    assert again.encode() == data
    assert again.id == record.id


@given(records)
def test_a_capture_built_record_is_the_same_record(record):
    """TaskCapture builds records without re-scanning keys of JSON-form values: same bytes,
    and the checks that remain still refuse what Record refuses."""
    fields = {name: getattr(record, name) for name in _RECORD_FIELDS}
    built = Record._from_json_values(**fields)
    assert built == record and built.encode() == record.encode()
    with pytest.raises(TypeError, match="missing or unknown"):
        Record._from_json_values(**{k: v for k, v in fields.items() if k != "attempt"})
    with pytest.raises(ValueError, match="parameters must be a dict"):
        Record._from_json_values(**{**fields, "parameters": [1]})
    with pytest.raises(ValueError, match="status"):
        Record._from_json_values(**{**fields, "status": "done"})


@given(records, st.data())
def test_any_field_change_changes_the_id(record, data):
    other = replace(record, task_id=record.task_id + data.draw(name.filter(bool)))
    assert other.id != record.id


def _ledger_blocks(n_records, block_size):
    return chain_of(make_records(n_records), block_size)


def _flip(data: bytes, index: int, mask: int) -> bytes:
    return data[:index] + bytes([data[index] ^ mask]) + data[index + 1 :]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_flipping_any_stored_byte_is_detected(data):
    blocks = _ledger_blocks(data.draw(st.integers(1, 12), label="records"), data.draw(st.integers(1, 5)))
    verify_chain(blocks)  # the untouched chain verifies
    which = data.draw(st.integers(0, len(blocks) - 1), label="block")
    block = blocks[which]
    mask = data.draw(st.integers(1, 255), label="xor mask")
    part = data.draw(st.sampled_from(["header", "block id", "record body", "record id"]), label="part")
    if part == "header":
        i = data.draw(st.integers(0, len(block.header) - 1))
        tampered = replace(block, header=_flip(block.header, i, mask))
    elif part == "block id":
        raw = block.id.encode()
        tampered = replace(block, id=_flip(raw, data.draw(st.integers(0, 63)), mask).decode("latin-1"))
    else:
        r = data.draw(st.integers(0, len(block.records) - 1))
        record = block.records[r]
        if part == "record body":
            i = data.draw(st.integers(0, len(record.body) - 1))
            changed = StoredRecord(record.id, _flip(record.body, i, mask))
        else:
            changed = StoredRecord(_flip(record.id.encode(), data.draw(st.integers(0, 63)), mask).decode("latin-1"), record.body)
        tampered = replace(block, records=block.records[:r] + (changed,) + block.records[r + 1 :])
    forged = blocks[:which] + [tampered] + blocks[which + 1 :]
    with pytest.raises(VerificationError) as caught:
        verify_chain(forged)
    assert caught.value.height is not None and caught.value.height <= which + 1


def test_dropping_reordering_or_inserting_records_is_detected():
    blocks = _ledger_blocks(9, 3)
    b = blocks[1]
    for records in (b.records[:-1], b.records[::-1], b.records + (b.records[0],)):
        with pytest.raises(VerificationError):
            verify_chain(blocks[:1] + [StoredBlock(b.height, b.id, b.header, records)] + blocks[2:])
    with pytest.raises(VerificationError):
        verify_chain([blocks[0], blocks[2]])  # a block removed


ids = st.lists(hex64, min_size=0, max_size=70)


@given(ids, st.lists(st.integers(1, 9), max_size=30))
def test_merkle_root_does_not_depend_on_batching(leaves, cuts):
    builder, start = MerkleBuilder(), 0
    for cut in cuts:
        builder.extend(leaves[start : start + cut])
        start += cut
    builder.extend(leaves[start:])
    assert builder.root() == merkle_root(leaves)
    assert builder.size == len(leaves)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 60), st.integers(1, 25), st.integers(1, 25))
def test_log_root_does_not_depend_on_block_size(n, size_a, size_b):
    """The same records batched into blocks differently give the same log checkpoint."""
    summaries = []
    for size in (size_a, size_b):
        # A memory ledger never writes its spool: the path only has to be private to this test.
        with open_ledger(f"memory://{uuid.uuid4().hex}", spool=os.path.join(_SCRATCH, "spool")) as ledger:
            ledger.append_records([r.stored() for r in make_records(n)], block_size=size)
            summaries.append(ledger.verify_chain())
    assert summaries[0].log_root == summaries[1].log_root
    assert summaries[0].records == summaries[1].records == n


@given(st.lists(hex64, min_size=1, max_size=40), st.data())
def test_inclusion_proofs_verify_and_bind_index_and_root(leaves, data):
    index = data.draw(st.integers(0, len(leaves) - 1))
    root = merkle_root(leaves)
    proof = inclusion_proof(leaves, index)
    assert verify_inclusion(leaves[index], index, len(leaves), proof, root)
    if len(set(leaves)) == len(leaves) and len(leaves) > 1:
        other = (index + 1) % len(leaves)
        assert not verify_inclusion(leaves[other], index, len(leaves), proof, root)
    assert not verify_inclusion(leaves[index], index, len(leaves), proof, "00" * 32)


def test_known_merkle_shapes():
    """RFC 6962 shape: three leaves hash as node(node(l0, l1), l2)."""
    from lineage_ledger._log.merkle import leaf_hash, node_hash

    a, b, c = (f"{i:064x}" for i in range(3))
    assert merkle_root([a, b, c]) == node_hash(node_hash(leaf_hash(a), leaf_hash(b)), leaf_hash(c)).hex()
    assert merkle_root([a]) == leaf_hash(a).hex()


def test_backends_return_bytes_that_verify(tmp_path):
    backend = open_backend(f"sqlite:///{tmp_path}/l.db")
    backend.append(_ledger_blocks(30, 7))
    assert verify_chain(backend.blocks()).records == 30


@given(st.integers(0, 40), st.lists(st.integers(0, 40), max_size=6))
def test_merkle_builder_reuses_block_subtrees_exactly(start, blocks):
    """add_levels (whole blocks, subtrees reused) gives the state that leaf-by-leaf adding gives."""
    from lineage_ledger._log.merkle import leaf_hash, merkle_levels

    counter = iter(range(10_000))
    by_levels, by_leaves = MerkleBuilder(), MerkleBuilder()
    first = [f"{next(counter):064x}" for _ in range(start)]
    by_levels.extend(first)
    by_leaves.extend(first)
    for size in blocks:
        leaves = [leaf_hash(f"{next(counter):064x}") for _ in range(size)]
        by_levels.add_levels(merkle_levels(leaves))
        for leaf in leaves:
            by_leaves.add_leaf_hash(leaf)
        assert by_levels.size == by_leaves.size and by_levels.root() == by_leaves.root()
    assert by_levels._stack == by_leaves._stack


@given(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.sampled_from([timezone.utc, timezone.max, timezone.min]),
)
def test_one_instant_has_one_spelling(naive, zone):
    """format_time's fast path for UTC agrees with the general path, and parsing inverts it."""
    from lineage_ledger._canonical import format_time, parse_time

    moment = naive.replace(tzinfo=zone)
    text = format_time(moment)
    assert len(text) == 27 and text.endswith("Z")
    assert parse_time(text) == moment
    assert format_time(moment.astimezone(timezone.utc)) == text
    general = moment.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
    assert text == general


@settings(max_examples=200, deadline=None)
@given(digest=st.one_of(st.text(max_size=70), st.integers(), st.none()),
       size=st.one_of(st.integers(-5, 5), st.text(max_size=3), st.floats(allow_nan=False), st.none()))
def test_a_record_body_reads_back_only_with_valid_entries(digest, size):
    """Reading a record body checks each entry as building an Artifact does: 64 lower-case
    hex digits and a non-negative whole size; anything else is refused as unreadable."""
    import json

    body = json.loads(make_records(1)[0].encode())
    path = next(iter(body["outputs"]))
    body["outputs"][path] = {"blake3": digest, "size": size}
    data = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    try:
        Artifact(path, digest, size)  # type: ignore[arg-type]
        valid = True
    except ValueError:
        valid = False
    if valid:
        assert Record.decode(data).outputs[path] == {"blake3": digest, "size": size}
    else:
        with pytest.raises(ValueError):
            Record.decode(data)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 40)), max_size=60))
def test_record_bits_hold_exactly_the_records_added(places):
    """`depends` remembers the records it listed a bit each, by leaf index (a block's first
    leaf plus the position): it holds exactly what was added, as a set of places would."""
    from lineage_ledger._ledger.derived import RecordBits
    from lineage_ledger._ledger.lineage import LedgerRecord

    def start(height: int) -> int:
        return height * 41  # blocks of 41 records: every (height, position) here is one leaf

    bits, added = RecordBits(start), set()
    record = make_records(1)[0]
    for height, position in places:
        entry = LedgerRecord("x", record, height, position)
        assert (entry in bits) == ((height, position) in added)
        bits.add(entry)
        added.add((height, position))
        assert entry in bits
    for height in range(52):
        for position in range(41):
            assert (LedgerRecord("x", record, height, position) in bits) == ((height, position) in added)
