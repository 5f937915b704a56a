"""lineage-ledger export (W3C PROV, Workflow Run RO-Crate, OpenLineage) and verify-lineage --crate.

Ledgers are made with the real CLI; each export is checked by its own ecosystem's reader or
validator: ``prov.read``, ``roc-validator`` (Provenance Run Crate 0.5, every REQUIRED check),
openlineage-python's event classes (which carry the OpenLineage 2-0-2 schema's types and
validators) and the facet's JSON schema from the repository.

``tests/vectors/ro-crate-1.1-context.jsonld`` is the RO-Crate 1.1 JSON-LD context (CC0,
from the RO-Crate specification): roc-validator resolves it over HTTP, and the tests run
offline, so it is put in the validator's HTTP cache first.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parent.parent
CONTEXT = ROOT / "tests" / "vectors" / "ro-crate-1.1-context.jsonld"
FACET_SCHEMA = ROOT / "core" / "exports" / "schemas" / "blake3-facet.json"


# -- the validators ------------------------------------------------------------------------
def _warm_validator_cache(cache: Path) -> None:
    import urllib3
    from rocrate_validator.utils.http import HttpRequester

    body = CONTEXT.read_bytes()
    url = json.loads(body)["@id"]
    # A process-wide singleton, configured again by every validation's settings: the same
    # cache path here and there keeps what is saved now.
    requester = HttpRequester.initialize_cache(cache_max_age=-1, cache_path=str(cache), offline=True)
    import requests

    for accept in ("application/ld+json, application/json", "application/ld+json, application/json, */*;q=0.1"):
        response = requests.Response()
        response.status_code, response._content, response.url, response.encoding = 200, body, url, "utf-8"
        response.headers["Content-Type"] = "application/ld+json"
        response.raw = urllib3.HTTPResponse(body=io.BytesIO(body), headers={"Content-Type": "application/ld+json"},
                                            status=200, preload_content=False, request_url=url)
        response.request = requests.Request("GET", url, headers={"Accept": accept}).prepare()
        requester.session.cache.save_response(response)


def validate_crate(crate: Path, cache_dir: Path) -> None:
    """Every REQUIRED check of the Provenance Run Crate 0.5 profile (and the profiles it
    builds on: Workflow Run Crate, Process Run Crate, Workflow RO-Crate, RO-Crate 1.1)."""
    pytest.importorskip("rocrate_validator", reason="roc-validator is in the dev extra")
    from rocrate_validator import models, services

    _warm_validator_cache(cache_dir / "roc-cache")
    settings = services.ValidationSettings(
        rocrate_uri=str(crate), profile_identifier="provenance-run-crate-0.5", offline=True,
        requirement_severity=models.Severity.REQUIRED, cache_path=str(cache_dir / "roc-cache"))
    result = services.validate(settings)
    issues = [f"{i.check.identifier if i.check else ''}: {i.message}" for i in result.get_issues()]
    assert result.passed(), "\n".join(issues)


def check_prov(path: Path, tasks: int) -> None:
    import prov
    from prov.model import ProvActivity, ProvAgent, ProvDerivation, ProvEntity, ProvGeneration, ProvUsage

    document = prov.read(str(path), format="json")
    records = list(document.get_records())
    activities = [r for r in records if isinstance(r, ProvActivity)]
    assert len(activities) == tasks
    files = [r for r in records if isinstance(r, ProvEntity) and str(r.identifier).startswith("file:v")]
    assert files
    for entity in files:
        attributes = {str(k): v for k, v in entity.attributes}
        assert len(attributes["ll:blake3"]) == 64 and int(attributes["ll:size"]) >= 0
    kinds = {type(r) for r in records}
    assert {ProvUsage, ProvGeneration, ProvDerivation, ProvAgent} <= kinds
    agents = {str(r.identifier) for r in records if isinstance(r, ProvAgent)}
    assert any(a.startswith("agent:engine-") for a in agents) and any(a.startswith("agent:user-") for a in agents)
    assert any(a.startswith("agent:host-") for a in agents)


def check_openlineage(events: list[dict]) -> None:
    """Each event rebuilt with openlineage-python's generated classes (their attrs validators
    check run ids, times and event types) and compared with what was written; every
    dataset's BLAKE3 facet valid under the repository's JSON schema."""
    import attr
    import jsonschema
    from openlineage.client.generated import base
    from openlineage.client.serde import Serde

    schema = json.loads(FACET_SCHEMA.read_text())
    facet_schema = schema["$defs"]["Blake3DatasetFacet"]["allOf"][1]
    allowed = {f.name for f in attr.fields(base.RunEvent)}
    for event in events:
        assert set(event) <= allowed | {"schemaURL"}, set(event) - allowed
        rebuilt = base.RunEvent(
            eventType=base.EventType(event["eventType"]), eventTime=event["eventTime"], producer=event["producer"],
            run=base.Run(runId=event["run"]["runId"]), job=base.Job(namespace=event["job"]["namespace"],
                                                                     name=event["job"]["name"]),
            inputs=[base.InputDataset(namespace=d["namespace"], name=d["name"]) for d in event["inputs"]],
            outputs=[base.OutputDataset(namespace=d["namespace"], name=d["name"]) for d in event["outputs"]])
        assert event["schemaURL"] == rebuilt.schemaURL
        assert json.loads(Serde.to_json(rebuilt))["run"]["runId"] == event["run"]["runId"]
        for dataset in event["inputs"] + event["outputs"]:
            facet = dataset["facets"]["lineageLedger_blake3"]
            jsonschema.validate(facet, facet_schema)
            assert dataset["facets"]["version"]["datasetVersion"] == facet["blake3"]
            assert facet["_schemaURL"].startswith(schema["$id"])


def export_everything(cli, where: Path, *selection: str, tasks: int, env: dict | None = None,
                      provn: bool = True) -> Path:
    """Every format through the CLI, each checked by its validator; the crate verified offline.
    (PROV-N has no reader to check it with: ``provn=False`` leaves it out.)"""
    kw = {"env": env} if env else {}
    cli("export", *selection, "--format", "prov-json", "-o", where / "out.prov.json", check_rc=0, **kw)
    check_prov(where / "out.prov.json", tasks)
    if provn:
        cli("export", *selection, "--format", "prov-n", "-o", where / "out.provn", check_rc=0, **kw)
        text = (where / "out.provn").read_text()
        assert text.startswith("document") and text.count("activity(task:r") == tasks
    cli("export", *selection, "--format", "openlineage", "-o", where / "out.jsonl", check_rc=0, **kw)
    events = [json.loads(line) for line in (where / "out.jsonl").read_text().splitlines()]
    task_events = [e for e in events if not e["job"]["name"].endswith(".run")]
    assert len(task_events) == 2 * tasks
    check_openlineage(events)
    crate = where / "crate"
    cli("export", *selection, "--format", "ro-crate", "-o", crate, check_rc=0, **kw)
    validate_crate(crate, where)
    verified = cli("--crate", crate, program="verify-lineage", check_rc=0, **kw)
    assert f"records proved: {tasks};" in verified.stdout and "crate verified" in verified.stdout
    return crate


# -- a CLI pipeline, recorded once for the module ------------------------------------------
@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Three CLI steps of run r1 (the last one fails) in a directory of their own."""
    where = tmp_path_factory.mktemp("pipeline")
    (where / "raw.txt").write_text("pear\napple\nfig\n")
    steps = [
        (["-i", "raw.txt", "-o", "sorted.txt", "-n", "sort", "-p", "order=asc"], "sort raw.txt > sorted.txt", 0),
        (["-i", "sorted.txt", "-o", "top.txt", "-n", "head"], "head -n 1 sorted.txt > top.txt", 0),
        (["-i", "top.txt", "-o", "never.txt", "-n", "broken-step"], "exit 3", 3),
    ]
    for args, script, rc in steps:
        run_cli("run", *args, "--run-id", "r1", "--", "sh", "-c", script, cwd=where, check_rc=rc)
    return where


@pytest.fixture
def at(pipeline):
    """Run the CLI in the pipeline's directory, on its ledger."""

    def call(*args, **kw):
        return run_cli(*args, cwd=pipeline, **kw)

    return call


def test_cli_example_exports_pass_their_validators(at, pipeline, tmp_path):
    crate = export_everything(at, tmp_path, "--run", "r1", tasks=3)
    metadata = json.loads((crate / "ro-crate-metadata.json").read_text())
    graph = {e["@id"]: e for e in metadata["@graph"]}
    actions = [e for e in graph.values() if e["@type"] == "CreateAction" and "identifier" in e]
    assert len(actions) == 3
    failed = [a for a in actions if a["actionStatus"].endswith("FailedActionStatus")]
    assert len(failed) == 1 and "broken-step" in failed[0]["name"]
    assert (crate / "data" / "sorted.txt").read_text() == "apple\nfig\npear\n"
    assert graph["data/sorted.txt"]["blake3"] == json.loads(
        at("hash", "--json", "sorted.txt", check_rc=0).stdout)["blake3"]
    events = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [e["eventType"] for e in events if e["job"]["name"] == "cli.broken-step"] == ["START", "FAIL"]
    assert [e["eventType"] for e in events if e["job"]["name"] == "cli.run"] == ["START", "FAIL"]


def test_export_of_a_target_covers_its_lineage_only(at, tmp_path):
    at("export", "top.txt", "--format", "prov-json", "-o", tmp_path / "top.json", check_rc=0)
    check_prov(tmp_path / "top.json", 2)  # sort and head; not the failed step that read top.txt


def _tampered(crate: Path, tmp: Path, name: str) -> Path:
    copy = tmp / name
    shutil.copytree(crate, copy)
    return copy


def test_altered_crates_fail_verification_naming_what(at, cli, workdir):
    cli("keygen", "lab.key", "--name", "lab", check_rc=0)
    at("export", "--run", "r1", "--format", "ro-crate", "-o", workdir / "crate", "--key", workdir / "lab.key",
       check_rc=0)
    crate = workdir / "crate"
    good = cli("--crate", crate, "--pubkey", "lab.key.pub", program="verify-lineage", check_rc=0)
    assert "signature checked" in good.stdout

    # a data file's bytes
    copy = _tampered(crate, workdir, "bytes")
    (copy / "data" / "sorted.txt").write_text("apple\nfig\nPEAR\n")
    bad = cli("--crate", copy, program="verify-lineage", check_rc=1)
    assert "data/sorted.txt: MODIFIED" in bad.stdout

    # the file entry in the metadata, with bytes to match: the proved record disagrees
    copy = _tampered(crate, workdir, "entry")
    (copy / "data" / "sorted.txt").write_text("apple\nfig\nPEAR\n")
    new_digest = json.loads(cli("hash", "--json", copy / "data" / "sorted.txt", check_rc=0).stdout)["blake3"]
    metadata = json.loads((copy / "ro-crate-metadata.json").read_text())
    for entity in metadata["@graph"]:
        if entity["@id"] == "data/sorted.txt":
            entity["blake3"] = new_digest
    (copy / "ro-crate-metadata.json").write_text(json.dumps(metadata))
    bad = cli("--crate", copy, program="verify-lineage", check_rc=1)
    assert "sorted.txt is described as" in bad.stdout and "the proved record" in bad.stdout

    # a record's bytes
    copy = _tampered(crate, workdir, "record")
    record = next((copy / "lineage-ledger" / "records").glob("*.json"))
    record.write_bytes(record.read_bytes().replace(b'"attempt":1', b'"attempt":2'))
    bad = cli("--crate", copy, "--json", program="verify-lineage", check_rc=1)
    report = json.loads(bad.stdout)
    assert not report["ok"] and any("was altered" in f and record.stem[:16] in f for f in report["failures"])

    # a record and its id rewritten together: its proof no longer reaches the checkpoint's root
    copy = _tampered(crate, workdir, "rewritten")
    proofs = json.loads((copy / "lineage-ledger" / "proofs.json").read_text())
    entry = proofs["records"][0]
    body = (copy / entry["file"]).read_bytes().replace(b'"attempt":1', b'"attempt":2')
    from blake3 import blake3

    entry["id"] = blake3(body).hexdigest()
    (copy / entry["file"]).write_bytes(body)
    (copy / "lineage-ledger" / "proofs.json").write_text(json.dumps(proofs))
    bad = cli("--crate", copy, program="verify-lineage", check_rc=1)
    assert "not in the checkpoint's tree" in bad.stdout

    # the checkpoint swapped for an unsigned one: refused when the lab's key is required
    copy = _tampered(crate, workdir, "checkpoint")
    note = (copy / "lineage-ledger" / "checkpoint.txt").read_text()
    (copy / "lineage-ledger" / "checkpoint.txt").write_text(note.split("\n\n")[0] + "\n")
    bad = cli("--crate", copy, "--pubkey", "lab.key.pub", program="verify-lineage", check_rc=1)
    assert "checkpoint" in bad.stdout

    # an action removed: the proved record it described is reported
    copy = _tampered(crate, workdir, "dropped")
    metadata = json.loads((copy / "ro-crate-metadata.json").read_text())
    metadata["@graph"] = [e for e in metadata["@graph"] if not e["@id"].startswith("#task-")
                          or "sort" not in e["name"]]
    (copy / "ro-crate-metadata.json").write_text(json.dumps(metadata))
    bad = cli("--crate", copy, program="verify-lineage", check_rc=1)
    assert "no action in the metadata describes it" in bad.stdout


def test_crate_without_data_and_bad_input(at, cli, workdir):
    bare = workdir / "bare"
    at("export", "top.txt", "--format", "ro-crate", "-o", bare, "--no-data", check_rc=0)
    assert not (bare / "data").exists()
    cli("--crate", "bare", program="verify-lineage", check_rc=0)
    # refuses to write into a non-empty directory, names nothing to export, unknown run
    assert "not an empty directory" in at("export", "top.txt", "--format", "ro-crate", "-o", bare).stderr
    assert at("export", "--format", "prov-json", "-o", workdir / "x.json").returncode == 2
    assert "no record" in at("export", "--run", "nope", "--format", "prov-json", "-o", workdir / "x.json",
                             check_rc=2).stderr
    assert at("export", "top.txt", "--format", "prov-json").returncode == 2  # no -o
    unwritable = at("export", "top.txt", "--format", "prov-json", "-o", workdir / "no" / "such" / "dir.json")
    assert unwritable.returncode == 2 and "No such file or directory" in unwritable.stderr
    cli("--crate", "missing-dir", program="verify-lineage", check_rc=2)
    (workdir / "junk").mkdir()
    (workdir / "junk" / "ro-crate-metadata.json").write_text("{not json")
    assert "not JSON" in cli("--crate", "junk", program="verify-lineage", check_rc=2).stderr


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[str, dict]] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.path, json.loads(body)))
        self.send_response(201)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_openlineage_emit_posts_every_event_to_a_marquez_style_endpoint(at, workdir):
    _Receiver.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        at("export", "--run", "r1", "--format", "openlineage", "--emit", url, "-o", workdir / "events.jsonl",
           check_rc=0)
    finally:
        server.shutdown()
        server.server_close()
    written = [json.loads(line) for line in (workdir / "events.jsonl").read_text().splitlines()]
    assert [path for path, _ in _Receiver.received] == ["/api/v1/lineage"] * len(written)
    assert [event for _, event in _Receiver.received] == written
    check_openlineage([event for _, event in _Receiver.received])
    # an endpoint that is not there: a clear error, exit 2
    failed = at("export", "--run", "r1", "--format", "openlineage", "--emit", url)
    assert failed.returncode == 2 and "did not take the OpenLineage events" in failed.stderr


def test_import_lineage_ledger_loads_no_export_dependency():
    code = ("import sys, lineage_ledger, lineage_ledger._cli.main; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('prov', 'rocrate', 'openlineage', 'rdflib') "
            "or m.startswith('lineage_ledger.exports')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_missing_extra_is_named_with_its_install_hint(pipeline, tmp_path):
    """Without the exports extra (its modules made unimportable here), a clear error, exit 2."""
    code = (
        "import sys\n"
        "class Absent:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('prov', 'rocrate', 'openlineage'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Absent())\n"
        "from lineage_ledger._cli.main import main\n"
        "main()\n")
    done = subprocess.run([sys.executable, "-c", code, "export", "--run", "r1", "--format", "ro-crate", "-o",
                           str(tmp_path / "crate")], cwd=pipeline, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert "pip install 'lineage-ledger[exports]'" in done.stderr and "'rocrate'" in done.stderr, done.stderr
    assert not (tmp_path / "crate").exists()  # refused before anything was written


def test_zipped_crate_is_verified_and_its_alterations_caught(at, cli, workdir, tmp_path):
    import zipfile

    packed = workdir / "crate.zip"
    at("export", "--run", "r1", "--format", "ro-crate", "-o", packed, check_rc=0)
    assert "crate verified" in cli("--crate", packed, program="verify-lineage", check_rc=0).stdout
    assert "exists" in at("export", "--run", "r1", "--format", "ro-crate", "-o", packed, check_rc=2).stderr
    altered = workdir / "altered.zip"
    with zipfile.ZipFile(packed) as source, zipfile.ZipFile(altered, "w") as target:
        for member in source.infolist():
            data = source.read(member)
            if member.filename == "data/top.txt":
                data = b"pear\n"  # the bytes of another version: not the ones described
            target.writestr(member, data)
    assert "data/top.txt: MODIFIED" in cli("--crate", altered, program="verify-lineage", check_rc=1).stdout
    # a member that would land outside the directory it is unpacked in is refused
    escaping = workdir / "escaping.zip"
    with zipfile.ZipFile(packed) as source, zipfile.ZipFile(escaping, "w") as target:
        for member in source.infolist():
            target.writestr(member, source.read(member))
        target.writestr("../outside.txt", b"x")
    assert "refusing the zip member" in cli("--crate", escaping, program="verify-lineage", check_rc=2).stderr
    assert not (tmp_path.parent / "outside.txt").exists()
