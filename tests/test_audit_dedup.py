"""The full audit's duplicate-id check (:mod:`lineage_ledger._log.dedup`) on its own: both
ways give the exact answer a set gives, the scratch table leaves nothing behind, and a
ledger audited through the scratch table gets the same tree as through the Bloom filter."""

from __future__ import annotations

import os

from blake3 import blake3
from hypothesis import given, settings
from hypothesis import strategies as st

from lineage_ledger._log.dedup import IdDedup


def _leaf(record_id: bytes) -> bytes:
    return blake3(b"\x00" + record_id).digest()


ids = st.lists(st.integers(min_value=0, max_value=300), min_size=0, max_size=400)


@settings(max_examples=60, deadline=None)
@given(numbers=ids, cut=st.integers(min_value=1, max_value=50), bloom=st.booleans())
def test_the_check_finds_exactly_the_repeated_ids(tmp_path_factory, numbers, cut, bloom):
    """Ids drawn from a small range repeat often; fed in ranges of any size, the scratch table
    names exactly the repeated ids and the Bloom filter suspects at least them (its false
    suspects are looked up exactly by the audit)."""
    scratch = tmp_path_factory.mktemp("dedup")
    raw = [blake3(str(n).encode()).digest() for n in numbers]
    os.environ["LINEAGE_AUDIT_BLOOM_MAX"] = str(10**9 if bloom else 0)
    try:
        with IdDedup(len(raw), scratch) as dedup:
            for at in range(0, len(raw), cut):
                part = raw[at : at + cut]
                dedup.add(b"".join(part), b"".join(map(_leaf, part)))
            found = set(dedup.duplicates())
            assert dedup.exact is not bloom
    finally:
        del os.environ["LINEAGE_AUDIT_BLOOM_MAX"]
    repeated = {r.hex() for r in raw if raw.count(r) > 1}
    if bloom:
        assert repeated <= found
    else:
        assert found == repeated
    assert list(scratch.iterdir()) == []  # the scratch table is gone


def test_an_empty_range_and_no_records(tmp_path, monkeypatch):
    monkeypatch.setenv("LINEAGE_AUDIT_BLOOM_MAX", "0")
    with IdDedup(0, tmp_path) as dedup:
        dedup.add(b"", b"")
        assert dedup.duplicates() == []
    assert not (tmp_path / "dedup.db").exists()


def test_a_planted_scratch_file_is_refused(tmp_path, monkeypatch):
    """The table is created, never opened: a file (or a link) already in its place means
    someone else is in the audit's private directory, and the audit stops."""
    monkeypatch.setenv("LINEAGE_AUDIT_BLOOM_MAX", "0")
    (tmp_path / "elsewhere").write_bytes(b"")
    (tmp_path / "dedup.db").symlink_to(tmp_path / "elsewhere")
    try:
        IdDedup(10, tmp_path)
    except FileExistsError:
        pass
    else:
        raise AssertionError("a planted dedup.db was opened")
    assert (tmp_path / "elsewhere").read_bytes() == b""
