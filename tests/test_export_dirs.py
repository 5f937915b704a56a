"""Exports and the graph of ledgers with directory artifacts and paths through symbolic links
(issue #17's records, docs/directories.md): a directory is one artifact of its own kind in
every format, manifest records are no tasks, an alias entry is another name of its real
path's version, and ``verify-lineage --crate`` checks a directory by its manifest digest.

The ledgers are made with ``lineage-ledger run``; every export passes the validators of
tests/test_export.py (``prov.read``, roc-validator offline, openlineage-python, the facet's
JSON schema) through ``export_everything``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.test_export import export_everything, validate_crate


def _metadata(crate: Path) -> dict[str, dict]:
    graph = json.loads((crate / "ro-crate-metadata.json").read_text())["@graph"]
    return {e["@id"]: e for e in graph}


def _types(entity: dict) -> set[str]:
    value = entity.get("@type", [])
    return set(value if isinstance(value, list) else [value])


@pytest.fixture
def dir_ledger(cli, workdir):
    """One task reading the directory ``in`` and writing the directory ``out``."""
    (workdir / "in" / "sub").mkdir(parents=True)
    (workdir / "in" / "a.txt").write_text("alpha\n")
    (workdir / "in" / "sub" / "b.txt").write_text("beta\n")
    (workdir / "in" / "empty").mkdir()  # part of the digest; a zipped crate must keep it
    cli("run", "-i", "in", "-o", "out", "-n", "copy-dir", "--run-id", "d1", "--",
        "sh", "-c", "mkdir -p out && cp -R in/. out/ && echo gamma > out/c.txt", check_rc=0)
    digests = {name: json.loads(cli("hash", "--dir", "--json", name, check_rc=0).stdout) for name in ("in", "out")}
    return {name: (d[0] if isinstance(d, list) else d)["blake3"] for name, d in digests.items()}


def test_directory_artifacts_export_as_directories_and_verify(cli, workdir, dir_ledger):
    out_real = os.path.realpath(workdir / "out")
    exported = workdir / "exp"
    exported.mkdir()
    # One task: the manifest records of in/ and out/ are no tasks ("records proved: 1").
    crate = export_everything(cli, exported, "--run", "d1", tasks=1)

    prov = json.loads((exported / "out.prov.json").read_text())
    dirs = [e for e in prov["entity"].values() if "prov:Collection" in str(e.get("prov:type"))]
    assert sorted(e["ll:blake3"] for e in dirs) == sorted(dir_ledger.values())
    assert len(prov["activity"]) == 1

    entities = _metadata(crate)
    datasets = {e["ledgerPath"]: e for e in entities.values() if "ledgerPath" in e and "Dataset" in _types(e)}
    assert datasets[out_real]["blake3"] == dir_ledger["out"]
    assert not [e for e in entities.values() if "File" in _types(e) and "ledgerPath" in e]
    carried = datasets[out_real]["@id"]
    assert carried.endswith("/") and (crate / carried / "c.txt").read_text() == "gamma\n"

    events = [json.loads(line) for line in (exported / "out.jsonl").read_text().splitlines()]
    outputs = [d for e in events if e["eventType"] == "COMPLETE" for d in e["outputs"]]
    assert [(d["name"], d["facets"]["datasetType"]["datasetType"]) for d in outputs] == [(out_real, "DIRECTORY")]
    assert outputs[0]["facets"]["lineageLedger_blake3"]["blake3"] == dir_ledger["out"]

    # Without data the directory is a Dataset described by its digest, and still valid and verified.
    cli("export", "--run", "d1", "--format", "ro-crate", "--no-data", "-o", exported / "bare", check_rc=0)
    validate_crate(exported / "bare", exported)
    bare = [e for e in _metadata(exported / "bare").values() if e.get("ledgerPath") == out_real]
    assert bare[0]["@id"].startswith("#dir-") and bare[0]["blake3"] == dir_ledger["out"]
    cli("--crate", exported / "bare", program="verify-lineage", check_rc=0)

    # A manifest record's run is no workflow run: nothing to export, exit 2.
    refused = cli("export", "--run", f"manifest:{dir_ledger['out']}", "--format", "prov-json",
                  "-o", exported / "m.json", check_rc=2)
    assert "no task record" in refused.stderr and not (exported / "m.json").exists()

    # A target that names the recorded directory exports it (not the files below it).
    cli("export", "out", "--format", "prov-json", "-o", exported / "target.json", check_rc=0)
    assert dir_ledger["out"] in (exported / "target.json").read_text()

    cli("graph", "--run", "d1", "--format", "dot", "-o", exported / "g.dot", check_rc=0)
    dot = (exported / "g.dot").read_text()
    assert dot.count("shape=folder") == 2 and "manifest" not in dot

    cli("export", "--run", "d1", "--format", "ro-crate", "-o", exported / "crate.zip", check_rc=0)
    zipped = cli("--crate", exported / "crate.zip", program="verify-lineage", check_rc=0)
    assert "crate verified" in zipped.stdout

    # A task reading one file from inside out/ is linked to the directory that holds it.
    cli("run", "-i", "out/c.txt", "-o", "final.txt", "-n", "upper", "--run-id", "d2", "--",
        "sh", "-c", "tr a-z A-Z < out/c.txt > final.txt", check_rc=0)
    cli("export", "final.txt", "--format", "prov-json", "-o", exported / "final.json", check_rc=0)
    document = json.loads((exported / "final.json").read_text())
    members = [(document["entity"][m["prov:collection"]]["ll:path"], document["entity"][m["prov:entity"]]["ll:path"])
               for m in document.get("hadMember", {}).values()]
    assert members == [(out_real, os.path.join(out_real, "c.txt"))]
    cli("graph", "final.txt", "--format", "dot", "-o", exported / "final.dot", check_rc=0)
    final_dot = (exported / "final.dot").read_text()
    assert final_dot.count(" -> ") == 5, final_dot  # in -> copy -> out -> out/c.txt -> upper -> final

    # An edit inside the carried directory fails the crate's check, naming the directory.
    (crate / carried / "sub" / "b.txt").write_text("tampered\n")
    failed = cli("--crate", crate, program="verify-lineage", check_rc=1)
    assert f"directory {carried}: MODIFIED" in failed.stdout, failed.stdout


def test_symlinked_input_is_one_artifact_with_its_alias(cli, workdir):
    (workdir / "store").mkdir()
    (workdir / "store" / "raw.txt").write_text("pear\napple\n")
    os.symlink("store", workdir / "data")
    cli("run", "-i", "data/raw.txt", "-o", "sorted.txt", "-n", "sort", "--run-id", "s1", "--",
        "sh", "-c", "sort data/raw.txt > sorted.txt", check_rc=0)
    real = os.path.realpath(workdir / "store" / "raw.txt")
    given = str(workdir / "data" / "raw.txt")
    record = json.loads(cli("log", "--json", check_rc=0).stdout)
    assert given in json.dumps(record)  # the ledger holds the alias entry this test is about
    exported = workdir / "exp"
    exported.mkdir()
    crate = export_everything(cli, exported, "--run", "s1", tasks=1)

    prov = json.loads((exported / "out.prov.json").read_text())
    raw = [e for e in prov["entity"].values() if "raw.txt" in str(e.get("ll:path"))]
    assert [(e["ll:path"], e["ll:alias"]) for e in raw] == [(real, given)]

    entities = _metadata(crate)
    files = [e for e in entities.values() if "ledgerPath" in e and "raw.txt" in e["ledgerPath"]]
    assert [(e["ledgerPath"], e["alternateName"]) for e in files] == [(real, os.path.join("data", "raw.txt"))]

    events = [json.loads(line) for line in (exported / "out.jsonl").read_text().splitlines()]
    inputs = [d for e in events if e["eventType"] == "START" and e["inputs"] for d in e["inputs"]]
    assert [d["name"] for d in inputs] == [real]
    assert inputs[0]["facets"]["symlinks"]["identifiers"] == [{"name": given, "namespace": "file", "type": "SYMLINK"}]

    cli("graph", "--run", "s1", "--format", "dot", "-o", exported / "g.dot", check_rc=0)
    assert (exported / "g.dot").read_text().count("raw.txt") == 1
