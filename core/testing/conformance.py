"""The conformance suite every back-end's tests subclass (pytest classes).

A subclass provides a ``url`` fixture that returns the URL of a fresh, empty ledger. Two
tests start writer processes (``python -m lineage_ledger.testing.writer``); they are skipped
for a back-end that keeps one store per process.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from .. import AppendConflict, build_block, open_ledger
from ..backends import open_backend
from .records import chain_of, make_records

WRITER = [sys.executable, "-m", "lineage_ledger.testing.writer"]


class BackendConformance:
    """Subclass it and override the ``url`` fixture; the class attributes size the load."""

    concurrent_writers = 4
    records_per_writer = 250

    @pytest.fixture
    def url(self):  # pragma: no cover - every subclass overrides it
        raise NotImplementedError("a BackendConformance subclass provides a `url` fixture: a fresh, empty ledger")

    @pytest.fixture
    def backend(self, url):
        backend = open_backend(url)
        yield backend
        backend.close()

    def test_empty_ledger(self, backend):
        assert backend.head() is None
        assert list(backend.blocks()) == []
        assert backend.known(["00" * 32]) == set()
        assert backend.find("out", path="/nothing") == []

    def test_append_and_read_back_byte_for_byte(self, backend):
        blocks = chain_of(make_records(25), 10)
        backend.append(blocks)
        stored = list(backend.blocks())
        assert [(s.height, s.id, s.header) for s in stored] == [(b.height, b.id, b.header) for b in blocks]
        assert [[(r.id, r.body) for r in s.records] for s in stored] == [
            [(r.id, r.body) for r in b.records] for b in blocks
        ]
        head = backend.head()
        assert (head.height, head.id) == (2, blocks[-1].id)

    def test_reappend_is_idempotent(self, backend):
        blocks = chain_of(make_records(12), 5)
        backend.append(blocks)
        backend.append(blocks)
        backend.append(blocks[1:2])
        assert [s.id for s in backend.blocks()] == [b.id for b in blocks]
        assert sum(len(s.records) for s in backend.blocks()) == 12

    def test_conflicting_height_is_refused_atomically(self, backend):
        backend.append(chain_of(make_records(3), 3))
        rival = chain_of(make_records(3, run_id="rival"), 3)  # another genesis block
        with pytest.raises(AppendConflict):
            backend.append(rival)
        assert backend.head().height == 0
        assert backend.known([r.id for r in rival[0].records]) == set()

    def test_duplicate_record_in_new_block_is_refused(self, backend):
        records = make_records(4)
        first = chain_of(records, 4)
        backend.append(first)
        again = build_block([records[0].stored()], backend.head()).stored()
        with pytest.raises(AppendConflict):
            backend.append([again])
        assert backend.head().height == 0

    def test_range_reads_keep_order(self, backend):
        records = make_records(700)
        blocks = chain_of(records, 1)  # more blocks than one read chunk
        backend.append(blocks)
        assert [b.height for b in backend.blocks()] == list(range(700))
        assert [b.height for b in backend.blocks(650, 655)] == list(range(650, 655))
        assert [b.records[0].id for b in backend.blocks(10, 12)] == [blocks[10].records[0].id, blocks[11].records[0].id]

    def test_indexed_queries(self, backend):
        records = make_records(20, run_id="a") + make_records(5, run_id="b", start=20)
        backend.append(chain_of(records, 7))
        target = records[3].stored()
        out_path, out_digest = target.outputs[0]
        found = backend.find("out", path=out_path)
        assert [f.record.id for f in found] == [target.id]
        assert [f.record.id for f in backend.find("out", digest=out_digest)] == [target.id]
        consumers = backend.find("in", path="/data/in-3")
        assert sorted(f.record.id for f in consumers) == sorted(
            r.stored().id for r in records if "/data/in-3" in r.inputs
        )
        assert [(f.height, f.position) for f in consumers] == sorted((f.height, f.position) for f in consumers)
        assert len(backend.by_run("b")) == 5
        assert backend.by_id_prefix(target.id[:10])[0].record.id == target.id
        assert backend.known([target.id, "ab" * 32]) == {target.id}

    def test_many_path_reads_answer_as_one_path_reads_do(self, backend):
        """``find_latest_many`` and ``find_places_many`` (what a verification of many files
        reads ahead) give each path what ``find_latest`` and ``find_places`` give it."""
        records = make_records(20, run_id="a") + make_records(5, run_id="b", start=20)
        backend.append(chain_of(records, 7))
        paths = sorted({p for r in records for p in (*r.inputs, *r.outputs)})
        paths += ["/nowhere", paths[0]]  # one no record names, one twice

        def place(found):
            return (found.height, found.position, found.record.id)

        for role in ("in", "out"):
            latest = backend.find_latest_many(role, paths)
            places = backend.find_places_many(role, paths)
            for path in paths:
                one = backend.find_latest(role, path)
                many = latest.get(path)
                assert (None if one is None else (place(one[0]), one[1])) == (
                    None if many is None else (place(many[0]), many[1])), (role, path)
                assert [place(f) for f in backend.find_places(role, path=path)] == [
                    place(f) for f in places.get(path, [])], (role, path)
        assert backend.find_latest_many("in", []) == {} and backend.find_places_many("out", []) == {}

    def test_records_ended_since_a_time_come_latest_first_a_page_at_a_time(self, backend):
        """``find_ended_since`` (where a back-end keeps end times): the records naming a path
        in a role that ended at a time or later, by end time then ledger order, newest first,
        paged; each with the end time ``find_latest`` gives the first."""
        if not backend.keeps_end_times:
            pytest.skip("this back-end keeps no index of end times")
        records = make_records(40, run_id="a")  # /data/in-0 is read by records 0, 5, ..., 35
        backend.append(chain_of(records, 6))
        readers = [r for r in records if "/data/in-0" in r.inputs]
        since = readers[3].order_end_text
        expected = [(r.order_end_text, r.stored().id) for r in reversed(readers[3:])]

        def ids(rows):
            return [(ended, located.record.id) for located, ended in rows]

        assert ids(backend.find_ended_since("in", "/data/in-0", since, 0, 100)) == expected
        pages = [ids(backend.find_ended_since("in", "/data/in-0", since, offset, 2)) for offset in range(0, 6, 2)]
        assert [row for page in pages for row in page] == expected and [len(p) for p in pages] == [2, 2, 1]
        latest = backend.find_latest("in", "/data/in-0")
        assert latest is not None and ids([latest]) == expected[:1]
        assert backend.find_ended_since("out", "/data/in-0", since, 0, 10) == []
        assert backend.find_ended_since("in", "/data/in-0", "9999-01-01T00:00:00.000000Z", 0, 10) == []

    def test_paths_under_a_directory_are_listed_once_in_byte_order(self, backend):
        """``paths_under`` (where the back-end keeps an index): every path an index row names
        below the directory, each once, in byte order, paged by ``after``; none outside it."""
        records = make_records(12, run_id="a")
        backend.append(chain_of(records, 5))
        named = {p for r in records for p in (*r.inputs, *r.outputs)}
        directory = "/data"
        first = backend.paths_under(directory, "", 5)
        if first is None:  # no index to list paths from: it says so for every directory
            assert backend.paths_under("/nowhere") is None and backend.paths_under(directory, "/data/in-0") is None
            return
        listed, page = list(first), first
        while len(page) == 5:
            page = backend.paths_under(directory + "/", listed[-1], 5)
            listed += page
        expected = sorted((p for p in named if p.startswith(directory + "/")), key=lambda p: p.encode())
        assert listed == expected and expected
        assert backend.paths_under("/dat", "", 100) == []  # a name's prefix is not a directory
        assert backend.paths_under("/nowhere", "", 100) == []

    def test_the_last_records_of_a_run_are_the_end_of_the_whole_run(self, backend):
        records = make_records(9, run_id="a") + make_records(4, run_id="b", start=9) + make_records(3, run_id="a",
                                                                                               start=13)
        backend.append(chain_of(records, 5))

        def place(found):
            return (found.height, found.position, found.record.id, found.record.body)

        whole = [place(f) for f in backend.by_run("a")]
        assert len(whole) == 12
        for limit in (1, 5, 12, 50):
            last, count = backend.by_run_last("a", limit)
            assert [place(f) for f in last] == whole[-limit:] and count == 12, limit
        assert backend.by_run_last("a", 0) == ([], 12)
        assert backend.by_run_last("nothing", 3) == ([], 0)
        for size in (1, 5, 12, 50):  # pages of the run, read one after another, are the whole run
            pages = [backend.by_run_page("a", offset, size) for offset in range(0, 13, size)]
            assert [place(f) for page in pages for f in page] == whole, size
            assert all(len(page) == size for page in pages[:-1]) and len(pages[-1]) < size, size
        assert backend.by_run_page("a", 12, 5) == [] and backend.by_run_page("nothing", 0, 5) == []

    def test_records_at_ledger_positions(self, backend):
        """``records_at`` (where a back-end answers it) gives the records at ledger positions
        counted across blocks, as stored; positions past the end are left out."""
        records = make_records(13)
        backend.append(chain_of(records, 5))
        found = backend.records_at([0, 4, 5, 12, 13, 99])
        if found is None:
            return  # the core reads the blocks that hold them instead
        stored = [r for block in backend.blocks() for r in block.records]
        assert sorted(found) == [0, 4, 5, 12]
        for position, record in found.items():
            assert (record.id, record.body) == (stored[position].id, stored[position].body)

    def test_ledger_on_backend_verifies(self, url, tmp_path):
        ledger = open_ledger(url, spool=str(tmp_path / "spool"))
        with ledger.recorder(batch_size=50, max_age=0.05) as recorder:
            for record in make_records(120):
                recorder.record(record)
        summary = ledger.verify_chain()
        assert summary.records == 120
        assert ledger.producer("/data/out-run-1-7").record.task_id == "task-7"
        ledger.close()

    def test_directory_artifacts_and_their_manifest_kept_once(self, url, tmp_path):
        """A directory is recorded by its manifest's digest; the manifest record (a large body:
        300 entries) is stored once however many tasks name the directory, and read back whole."""
        from .. import Record, hash_file, utcnow, verify_lineage
        from .._capture.files import entries_of, manifest_records_of

        root = tmp_path / "index"
        for i in range(300):
            (root / f"part{i // 100}").mkdir(parents=True, exist_ok=True)
            (root / f"part{i // 100}" / f"chunk{i:03d}.bin").write_bytes(b"%d" % i * 50)
        directory = hash_file(root)
        ledger = open_ledger(url, spool=str(tmp_path / "spool"))
        for task in ("index", "align"):
            now = utcnow()
            record = Record(engine="conformance", run_id="dirs", task_id=task, task_name=task, status="succeeded",
                            started=now, ended=now, **{"outputs" if task == "index" else "inputs": entries_of([directory])})
            ledger.append_records([r.stored() for r in [*manifest_records_of([directory]), record]])
        assert len(ledger.run("manifest:" + directory.blake3)) == 1
        assert ledger.manifest(directory.blake3) == directory.manifest
        assert ledger.producer(str(root)).record.outputs[str(root)]["type"] == "dir"
        assert ledger.verify_chain().records == 3
        assert verify_lineage(ledger, [str(root)]).ok
        ledger.close()

    def test_concurrent_writers_from_several_processes(self, url, tmp_path):
        if not open_backend(url).shared_between_processes:
            pytest.skip("this back-end keeps one store per process")
        writers = [
            subprocess.Popen([*WRITER, url, str(tmp_path / f"spool{i}"), f"w{i}",
                              str(self.records_per_writer)])
            for i in range(self.concurrent_writers)
        ]
        assert [w.wait(timeout=600) for w in writers] == [0] * self.concurrent_writers
        ledger = open_ledger(url, spool=str(tmp_path / "check"))
        summary = ledger.verify_chain()
        assert summary.records == self.concurrent_writers * self.records_per_writer
        for i in range(self.concurrent_writers):
            tasks = {entry.record.task_id for entry in ledger.run(f"w{i}")}
            assert len(tasks) == self.records_per_writer
        ledger.close()

    def test_verification_while_another_process_appends(self, url, tmp_path):
        """Reading the chain, the head and the count are separate queries: a block that lands
        between them must not look like a missing block or a record outside the chain."""
        if not open_backend(url).shared_between_processes:
            pytest.skip("this back-end keeps one store per process")
        ledger = open_ledger(url, spool=str(tmp_path / "check"))
        writer = subprocess.Popen([*WRITER, url, str(tmp_path / "spool"), "busy",
                                   str(self.records_per_writer * 4)])
        overlapping = 0
        try:
            while writer.poll() is None:
                summary = ledger.verify_chain()  # the head read first, whatever lands meanwhile
                entries = ledger.run("busy")  # proved against a head at least as new
                assert summary.records <= len(entries) <= ledger.tree_head().size
                overlapping += writer.poll() is None
        finally:
            assert writer.wait(timeout=600) == 0
        assert overlapping >= 1, "no verification ran while the writer was appending"
        assert ledger.verify_chain().records == self.records_per_writer * 4
        ledger.close()

    def test_audit_stream_pages_and_origin(self, url, backend):
        """What the verification model reads: index rows as stored (None where a back-end
        keeps no separate index), pages of find() in ledger order, counts, a stable origin."""
        records = make_records(20, run_id="a") + make_records(5, run_id="b", start=20)
        blocks = chain_of(records, 7)
        backend.append(blocks)
        rows = backend.index_rows(10**9)
        if rows is not None:
            expected, seq = [], 0
            for block in blocks:
                for pos, record in enumerate(block.records):
                    expected.append((seq, record.id, block.height, pos, record.run_id,
                                     tuple(sorted(record.inputs)), tuple(sorted(record.outputs))))
                    seq += 1
            assert [(r.seq, r.id, r.height, r.pos, r.run_id, r.inputs, r.outputs) for r in rows] == expected
            assert len(list(backend.index_rows(9))) == 9
        for role, keys in (("in", {"path": "/data/in-3"}), ("out", {}), ("in", {"digest": records[2].stored().inputs[0][1]})):
            found = backend.find(role, **keys)
            assert backend.count_found(role, **keys) == len(found)
            assert backend.count_found(role, at_most=2, **keys) == min(2, len(found))
            assert backend.find_page(role, offset=1, limit=2, **keys) == found[1:3]
            assert backend.find_page(role, offset=2, **keys) == found[2:]
        origin = backend.origin
        assert isinstance(origin, str) and origin
        again = open_backend(url, create=False)
        try:
            assert again.origin == origin
        finally:
            again.close()

