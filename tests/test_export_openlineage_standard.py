"""OpenLineage run events as an OpenLineage consumer reads them, checked with
openlineage-python's generated spec classes (2-0-2), on a ledger made by a real Snakemake run
and a ``lineage-ledger run`` step over files named with spaces, non-ASCII letters, ``#`` and
``%``, a directory output, a failed and a retried task (tests/support/odd_names.py); and
``export --emit URL`` posting to a local receiver that asks for a token. (About 15 s.)"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from tests.conftest import run_cli
from tests.support.odd_names import RUN, odd_workflow, recorded
from tests.test_export import ROOT, check_openlineage

pytest.importorskip("openlineage.client", reason="the exports extra")

from openlineage.client import facet_v2 as facets  # noqa: E402
from openlineage.client.generated import base  # noqa: E402

STANDARD = {  # the standard facets the export uses, and the classes that define them
    "parent": facets.parent_run.ParentRunFacet, "processing_engine": facets.processing_engine_run.ProcessingEngineRunFacet,
    "errorMessage": facets.error_message_run.ErrorMessageRunFacet, "jobType": facets.job_type_job.JobTypeJobFacet,
    "version": facets.dataset_version_dataset.DatasetVersionDatasetFacet,
    "datasetType": facets.dataset_type_dataset.DatasetTypeDatasetFacet,
    "symlinks": facets.symlinks_dataset.SymlinksDatasetFacet,
    "outputStatistics": facets.output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet,
}


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    where = tmp_path_factory.mktemp("odd")
    env = odd_workflow(where)
    events = where / "events.jsonl"
    run_cli("export", "--run", RUN, "--format", "openlineage", "-o", events, cwd=where, env=env, check_rc=0)
    return where, env, [json.loads(line) for line in events.read_text(encoding="utf-8").splitlines()]


def _facets(event: dict):
    """(where, name, facet) of every facet of the event."""
    for part in ("run", "job"):
        for name, facet in event[part].get("facets", {}).items():
            yield part, name, facet
    for dataset in event.get("inputs", []) + event.get("outputs", []):
        for group in ("facets", "inputFacets", "outputFacets"):
            for name, facet in dataset.get(group, {}).items():
                yield group, name, facet


def test_events_are_openlineage_run_events(odd):
    where, env, events = odd
    check_openlineage(events)  # rebuilt with the client's classes; the BLAKE3 facet's schema
    tasks = {r["id"]: r for r in recorded(where, env) if r["run_id"] == RUN}
    for event in events:
        assert datetime.fromisoformat(event["eventTime"]).utcoffset() is not None, event["eventTime"]
        uuid.UUID(event["run"]["runId"])
        assert urlsplit(event["producer"]).scheme and event["schemaURL"] == base.RunEvent(
            eventType=base.EventType.START, eventTime=event["eventTime"], run=base.Run(runId=event["run"]["runId"]),
            job=base.Job(namespace="n", name="j"), producer=event["producer"]).schemaURL
        for _, name, facet in _facets(event):
            assert urlsplit(facet["_producer"]).scheme, (name, facet)
            schema = urlsplit(facet["_schemaURL"])
            assert schema.scheme and schema.fragment.startswith("/$defs/"), (name, facet)
            if name in STANDARD:
                assert facet["_schemaURL"] == STANDARD[name]._get_schema(), name
    by_record = {}
    for event in events:
        ledger = event["run"]["facets"].get("lineageLedger_run", {})
        if "record" in ledger:
            by_record.setdefault(ledger["record"], []).append(event)
    assert set(by_record) == set(tasks)
    for record_id, (start, end) in by_record.items():
        task = tasks[record_id]
        assert start["eventType"] == "START" and start["run"]["runId"] == end["run"]["runId"]
        assert end["eventType"] == ("FAIL" if task["status"] == "failed" else "COMPLETE")
        assert ("errorMessage" in end["run"]["facets"]) == (task["status"] == "failed")
        # Dataset names are the recorded paths, odd characters and all.
        assert sorted(d["name"] for d in start["inputs"]) == sorted(
            p for p, a in task["inputs"].items() if "alias_of" not in a)
        if task["status"] != "failed":
            assert sorted(d["name"] for d in end["outputs"]) == sorted(task["outputs"])
    try:  # the client's own naming of a local file (openlineage-python 1.30 and later)
        from openlineage.client.naming.dataset import LocalFileSystem
    except ImportError:
        LocalFileSystem = None  # noqa: N806
    if LocalFileSystem is not None:
        for dataset in (d for e in events for d in e["inputs"] + e["outputs"]):
            named = LocalFileSystem(path=dataset["name"])
            assert (dataset["namespace"], dataset["name"]) == (named.get_namespace(), named.get_name())
    retries = [e for e in events if e["job"]["name"] == "snakemake.retry" and e["eventType"] != "START"]
    assert sorted(e["eventType"] for e in retries) == ["COMPLETE", "FAIL"]
    assert len({e["run"]["runId"] for e in retries}) == 2


def test_facets_name_lineage_ledger_as_their_producer(odd):
    """Each facet's ``_producer`` is 'the URI identifying the producer of this metadata'; ours
    said https://github.com/OpenLineage/OpenLineage/tree/1.54.0/client/python (the client
    library's default) while the event said lineage-ledger made it."""
    _, _, events = odd
    for event in events:
        for _, name, facet in _facets(event):
            assert facet["_producer"] == event["producer"], (name, facet["_producer"])


class _Receiver(BaseHTTPRequestHandler):
    """A Marquez-style endpoint behind a gateway: it takes events at ``/gw/api/v1/lineage`` with
    ``Authorization: Bearer <token>`` only."""

    token = "tok-s3cr3t"
    received: list[tuple[str, str | None]] = []

    def do_POST(self):  # noqa: N802 - the handler's API
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).received.append((self.path, self.headers.get("Authorization")))
        good = self.path == "/gw/api/v1/lineage" and self.headers.get("Authorization") == f"Bearer {self.token}"
        self.send_response(201 if good else 401 if self.path == "/gw/api/v1/lineage" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    _Receiver.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_emit_posts_under_the_urls_own_path(odd, receiver):
    """docs/exports.md: '--emit URL posts each event to URL/api/v1/lineage'. For a URL with a
    path (a Marquez behind a gateway, http://host/gw) they went to http://host/api/v1/lineage."""
    where, env, events = odd
    key = {"OPENLINEAGE_API_KEY": _Receiver.token}
    result = run_cli("export", "--run", RUN, "--format", "openlineage", "--emit", f"{receiver}/gw",
                     cwd=where, env={**env, **key})
    assert {path for path, _ in _Receiver.received} == {"/gw/api/v1/lineage"}, _Receiver.received
    assert result.returncode == 0, result.stderr
    assert len(_Receiver.received) == len(events)


def test_emit_authenticates_with_the_openlineage_api_key_and_never_prints_it(odd, receiver):
    """An endpoint that asks for a token (OpenLineage's clients send ``OPENLINEAGE_API_KEY`` as
    a Bearer token) refused every event: --emit sent no Authorization header at all. The key
    is never printed, also when the endpoint refuses it."""
    where, env, events = odd
    emit = ("export", "--run", RUN, "--format", "openlineage", "--emit", f"{receiver}/gw/")
    done = run_cli(*emit, cwd=where, env={**env, "OPENLINEAGE_API_KEY": _Receiver.token})
    assert done.returncode == 0, done.stderr
    assert _Receiver.received == [("/gw/api/v1/lineage", f"Bearer {_Receiver.token}")] * len(events)
    assert _Receiver.token not in done.stdout + done.stderr
    refused = run_cli(*emit, cwd=where, env={**env, "OPENLINEAGE_API_KEY": "wrong-s3cr3t"})
    assert refused.returncode == 2 and "did not take the OpenLineage events" in refused.stderr
    assert "401" in refused.stderr and "wrong-s3cr3t" not in refused.stdout + refused.stderr


def test_the_ledger_run_facet_has_a_schema_of_its_own(odd):
    """A custom facet's ``_schemaURL`` points to the schema of that facet. ``lineageLedger_run``
    (the ledger's record, task id, attempt and status of a task; the ledger's run id of a
    workflow run) said https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunFacet,
    the core's generic run facet, and no schema in the repository described it."""
    import jsonschema

    _, _, events = odd
    schema = json.loads((ROOT / "core" / "exports" / "schemas" / "run-facet.json").read_text(encoding="utf-8"))
    definition = schema["$defs"]["LineageLedgerRunFacet"]["allOf"][1]
    for event in events:
        facet = event["run"]["facets"]["lineageLedger_run"]
        assert facet["_schemaURL"] == schema["$id"] + "#/$defs/LineageLedgerRunFacet"
        jsonschema.validate(facet, definition)
        assert ("run_id" in facet) == event["job"]["name"].endswith(".run")


def test_a_failed_tasks_outputs_are_in_its_fail_event(tmp_path):
    """A command that wrote part.txt and then failed is recorded with part.txt as its output
    (PROV: wasGeneratedBy; the crate: the action's result). Its OpenLineage FAIL event said
    ``outputs: []``: a consumer never learnt where part.txt came from."""
    (tmp_path / "in.txt").write_text("x\n")
    run_cli("run", "-i", "in.txt", "-o", "part.txt", "-n", "half", "--run-id", "f", "--",
            "sh", "-c", "echo partial > part.txt; exit 3", cwd=tmp_path, check_rc=3)
    written = run_cli("export", "--run", "f", "--format", "openlineage", "-o", "-", cwd=tmp_path, check_rc=0)
    events = [json.loads(line) for line in written.stdout.splitlines()]
    (fail,) = [e for e in events if e["job"]["name"] == "cli.half" and e["eventType"] == "FAIL"]
    assert [d["name"] for d in fail["outputs"]] == [str(tmp_path / "part.txt")]
    assert fail["outputs"][0]["facets"]["lineageLedger_blake3"]["size"] == len("partial\n")
    check_openlineage(events)
