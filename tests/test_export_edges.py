"""Exports at their edges, each reproduced through the CLI first (session 41's leftovers):

1. a user or task name holding text XML cannot carry (a control character; a lone surrogate
   where a record could hold one) and ``prov``'s PROV-XML writer of the exported document;
2. a record's ``extra`` map in every format (PROV, RO-Crate, OpenLineage), checked by the
   standards' own consumers;
3. crate copies whose names differ only in case (or in Unicode normalization) and a
   case-insensitive file system;
4. a file inside a recorded directory swapped for a FIFO or a device after the crate's checks;
5. a crate whose checkpoint does not parse, next to ``verify-lineage --against`` of one.
(About 20 s.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import run_cli
from tests.test_export import ROOT, validate_crate

pytest.importorskip("prov", reason="the exports extra")

RUN_FACET_SCHEMA = ROOT / "core" / "exports" / "schemas" / "run-facet.json"


def _home(tmp_path: Path, **extra: str) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {"HOME": str(home), "XDG_STATE_HOME": str(home / ".local" / "state"), **extra}


def _crate_records(crate: Path) -> dict[str, dict]:
    """The records a crate carries, by id: each file's bytes are the record's canonical encoding."""
    return {path.stem: json.loads(path.read_bytes()) for path in (crate / "lineage-ledger" / "records").glob("*.json")}


# -- 1. text PROV-XML cannot carry ------------------------------------------------------------
def test_a_control_character_in_a_user_or_task_name_leaves_the_prov_export_xml_writable(tmp_path):
    """LOGNAME and ``run -n`` take any text; a control character in either was written into
    ``prov:label`` (and ``ll:task_name``) as it is, so ``prov``'s PROV-XML writer of the
    exported document failed ('All strings must be XML compatible'), a traceback in the
    user's conversion. Now such a character is written ``\\xNN`` (docs/exports.md); the
    agent's id still gives the exact name back."""
    lxml_etree = pytest.importorskip("lxml.etree", reason="prov[xml] (the dev extra)")
    import prov
    from prov.model import PROV, ProvActivity, ProvAgent, ProvDocument

    from lineage_ledger.exports._prov_ids import agent_name

    user, task = "bob\x01ops", "st\x0bep\x1f"
    env = _home(tmp_path, LOGNAME=user)
    (tmp_path / "in.txt").write_text("pear\n", encoding="utf-8")
    run_cli("run", "-i", "in.txt", "-o", "out.txt", "-n", task, "--", "sh", "-c", "cat in.txt > out.txt",
            cwd=tmp_path, env=env, check_rc=0)
    for fmt, name in (("prov-json", "out.json"), ("prov-n", "out.provn")):
        run_cli("export", "out.txt", "--format", fmt, "-o", name, cwd=tmp_path, env=env, check_rc=0)
    document = prov.read(str(tmp_path / "out.json"), format="json")
    xml = document.serialize(format="xml")  # raised ValueError before
    lxml_etree.fromstring(xml.encode())
    assert ProvDocument.deserialize(content=xml, format="xml") == document
    labels = {str(key): value for activity in document.get_records(ProvActivity) for key, value in activity.attributes}
    assert labels["prov:label"] == "cli:st\\x0bep\\x1f" and labels["ll:task_name"] == "st\\x0bep\\x1f"
    (person,) = [a for a in document.get_records(ProvAgent) if PROV["Person"] in a.get_asserted_types()]
    assert dict((str(k), v) for k, v in person.attributes)["prov:label"] == "bob\\x01ops"
    assert agent_name(str(person.identifier)) == ("user", user)  # the exact name, from the id
    provn = (tmp_path / "out.provn").read_text(encoding="utf-8")
    assert "\x01" not in provn and "\x0b" not in provn and "bob\\\\x01ops" in provn


@settings(max_examples=200, deadline=None)
@given(text=st.text(st.characters(exclude_categories=()), max_size=30))
def test_every_text_is_made_one_xml_carries(text):
    """Any text, lone surrogates and U+FFFE included, is one lxml (and so ``prov``'s PROV-XML
    writer) takes; text XML can carry already is kept as it is."""
    lxml_etree = pytest.importorskip("lxml.etree", reason="prov[xml] (the dev extra)")
    from lineage_ledger.exports._names import xml_text

    element = lxml_etree.Element("e")
    element.text = xml_text(text)
    assert (lxml_etree.fromstring(lxml_etree.tostring(element)).text or "") == xml_text(text)
    try:
        element.text = text
        lxml_etree.tostring(element)
    except (ValueError, UnicodeError):
        return
    assert xml_text(text) == text


# -- 2. extra in every export -----------------------------------------------------------------
def test_a_records_extra_is_in_every_export(tmp_path):
    """``lineage-ledger run`` records the command line, its exit status and working directory
    in ``extra`` (plugins record more: scripts, errors, files not verified); no export carried
    any of it. Now PROV has it as ``ll:extra`` (JSON text, as ``ll:parameters``), the crate's
    task action as ``ledgerExtra`` (a term of the crate's context; checked against the proved
    record) and OpenLineage's ``lineageLedger_run`` facet as ``extra`` (in the facet's schema;
    JSON text there too, since openlineage-python drops the nulls inside a facet). Each read
    back by its consumer."""
    import jsonschema
    import prov
    from prov.model import ProvActivity

    env = _home(tmp_path)
    (tmp_path / "in.txt").write_text("pear\n", encoding="utf-8")
    run_cli("run", "-i", "in.txt", "-o", "out.txt", "-n", "step", "--", "sh", "-c", "cat in.txt > out.txt; exit 0",
            cwd=tmp_path, env=env, check_rc=0)
    for fmt, name in (("prov-json", "out.json"), ("openlineage", "out.jsonl"), ("ro-crate", "crate")):
        run_cli("export", "out.txt", "--format", fmt, "-o", name, cwd=tmp_path, env=env, check_rc=0)
    crate = tmp_path / "crate"
    ((record_id, record),) = _crate_records(crate).items()
    extra = record["extra"]
    assert extra["argv"][:2] == ["sh", "-c"] and extra["returncode"] == 0

    document = prov.read(str(tmp_path / "out.json"), format="json")
    (activity,) = document.get_records(ProvActivity)
    attributes = {str(key): value for key, value in activity.attributes}
    assert json.loads(attributes["ll:extra"]) == extra
    assert prov.model.ProvDocument.deserialize(content=document.serialize(format="json"), format="json") == document

    metadata = json.loads((crate / "ro-crate-metadata.json").read_text(encoding="utf-8"))
    (action,) = [e for e in metadata["@graph"] if e.get("identifier") == record_id]
    assert json.loads(action["ledgerExtra"]) == extra
    assert "ledgerExtra" in metadata["@context"][1]
    validate_crate(crate, tmp_path)
    run_cli("--crate", crate, cwd=tmp_path, env=env, program="verify-lineage", check_rc=0)
    # A crate whose description of extra says what the record does not fails, naming it.
    action["ledgerExtra"] = json.dumps({**extra, "returncode": 1})
    (crate / "ro-crate-metadata.json").write_text(json.dumps(metadata), encoding="utf-8")
    altered = run_cli("--crate", crate, cwd=tmp_path, env=env, program="verify-lineage", check_rc=1)
    assert "extra differs from the proved record" in altered.stdout, altered.stdout

    schema = json.loads(RUN_FACET_SCHEMA.read_text())
    facet_schema = {**schema["$defs"]["LineageLedgerRunFacet"]["allOf"][1], "$defs": schema["$defs"]}
    events = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    facets = [e["run"]["facets"]["lineageLedger_run"] for e in events]
    tasks = [f for f in facets if "record" in f]
    assert len(tasks) == 2 and all(json.loads(f["extra"]) == extra for f in tasks)
    for facet in facets:
        jsonschema.validate(facet, facet_schema)
    assert not any("extra" in f for f in facets if "run_id" in f)


# -- 3. names that differ only in case --------------------------------------------------------
def _fold(name: str) -> str:
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", name).casefold())


def test_crate_copies_are_unique_on_a_case_insensitive_file_system(tmp_path):
    """``Data.txt`` and ``data.txt`` (and ``résumé`` composed and decomposed) are two files
    here, and were copied to ``data/Data.txt`` and ``data/data.txt``: one file on macOS or a
    Windows share, where the crate (or its zip unpacked) then failed verification. Now no two
    names under ``data/`` fold to one (case folded, canonical decomposition), the second going
    beside the first with its path's tag, and the crate verifies."""
    env = _home(tmp_path)
    names = ["Data.txt", "data.txt", "DATA.TXT", unicodedata.normalize("NFC", "résumé.txt"),
             unicodedata.normalize("NFD", "résumé.txt")]
    script = "; ".join(f"echo {index} > '{name}'" for index, name in enumerate(names))
    outputs = [arg for name in names for arg in ("-o", name)]
    run_cli("run", *outputs, "-n", "many", "--run-id", "r1", "--", "sh", "-c", script, cwd=tmp_path, env=env,
            check_rc=0)
    assert len({name for name in os.listdir(tmp_path) if name in names}) == 5  # five files on this file system
    done = run_cli("export", "--run", "r1", "--format", "ro-crate", "-o", "crate", cwd=tmp_path, env=env, check_rc=0)
    assert "5 file(s) copied" in done.stderr, done.stderr
    crate = tmp_path / "crate"
    copied = [str(path.relative_to(crate)) for path in (crate / "data").rglob("*")]
    assert len(copied) == 5
    assert len({_fold(name) for name in copied}) == len(copied), copied
    metadata = json.loads((crate / "ro-crate-metadata.json").read_text(encoding="utf-8"))
    data_ids = [e["@id"] for e in metadata["@graph"] if e["@id"].startswith("data/")]
    assert len({_fold(ident) for ident in data_ids}) == len(data_ids) == 5
    run_cli("--crate", crate, cwd=tmp_path, env=env, program="verify-lineage", check_rc=0)


def test_a_directory_holding_names_that_fold_together_is_described_not_copied(tmp_path):
    """A recorded directory with ``A.txt`` and ``a.txt`` cannot be copied whole so that a
    case-insensitive file system keeps both (renaming one would change its manifest): it is
    described by its digest, as one holding a symbolic link is."""
    env = _home(tmp_path)
    run_cli("run", "-o", "out", "-n", "dir", "--", "sh", "-c", "mkdir out && echo 1 > out/A.txt && echo 2 > out/a.txt",
            cwd=tmp_path, env=env, check_rc=0)
    run_cli("export", "out", "--format", "ro-crate", "-o", "crate", cwd=tmp_path, env=env, check_rc=0)
    crate = tmp_path / "crate"
    assert not (crate / "data").exists()
    metadata = json.loads((crate / "ro-crate-metadata.json").read_text(encoding="utf-8"))
    assert [e["@id"][:5] for e in metadata["@graph"] if e.get("@type") == "Dataset" and "blake3" in e] == ["#dir-"]
    run_cli("--crate", crate, cwd=tmp_path, env=env, program="verify-lineage", check_rc=0)


# -- 4. a directory's file swapped for a FIFO or a device -------------------------------------
_COPY_DIR_SWAPPED = """
import os, resource, sys
from lineage_ledger import hash_file
from lineage_ledger.exports import _crate_copy
from lineage_ledger.exports._select import FileVersion

source, crate, swap_to = sys.argv[1], sys.argv[2], sys.argv[3]
resource.setrlimit(resource.RLIMIT_FSIZE, (8 << 20, 8 << 20))  # never fills the disk, whatever it does
version = FileVersion(source, hash_file(source).blake3, sum(
    os.path.getsize(os.path.join(source, name)) for name in os.listdir(source)), True)
victim = os.path.join(source, "b.vcf")
swapped = []

def swap(event, args):  # another user acts after the checks by name, as the copy opens the file
    if event == "open" and args and str(args[0]) in (victim, "b.vcf") and not swapped:
        swapped.append(True)
        os.unlink(victim)
        os.mkfifo(victim) if swap_to == "fifo" else os.symlink(swap_to, victim)

sys.addaudithook(swap)
try:
    print("copied" if _crate_copy.copy_version(version, crate, "data/calls") else "left out")
except OSError as err:
    print("error", err)
assert swapped, "the file was never opened"
"""


@pytest.mark.parametrize("swap_to", ["fifo", "/dev/zero"])
def test_a_crate_leaves_out_a_directory_whose_file_is_swapped_after_its_checks(tmp_path, swap_to):
    """A recorded directory is copied whole when it holds regular files only, checked by name
    first; ``shutil.copytree`` then opened each file by name again, so a FIFO put there after
    the checks (another user who may write the directory) hung the export, and a link to
    /dev/zero was copied until the disk was full. Each file is now judged and read through
    one descriptor, as a single file is: the directory is left out at once, no part copy left."""
    source = tmp_path / "calls"
    source.mkdir()
    (source / "a.vcf").write_bytes(b"##fileformat=VCFv4.2\n" * 50)
    (source / "b.vcf").write_bytes(b"##fileformat=VCFv4.2\n" * 100)
    crate = tmp_path / "crate"
    crate.mkdir()
    try:
        done = subprocess.run([sys.executable, "-c", _COPY_DIR_SWAPPED, str(source), str(crate), swap_to],
                              capture_output=True, text=True, timeout=30, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail("the copy blocked for 30 s")
    assert done.stdout.strip() == "left out", (done.returncode, done.stdout, done.stderr[-500:])
    assert not (crate / "data" / "calls").exists()


# -- 5. a crate's checkpoint that does not parse ----------------------------------------------
def test_a_crate_checkpoint_that_is_no_checkpoint_is_bad_input_as_against_says(tmp_path):
    """``verify-lineage --against FILE`` of a file that is no checkpoint is bad input (exit 2);
    a crate whose checkpoint is no checkpoint said 'FAILED: checkpoint: ...', exit 1, as if a
    check of a readable crate had failed. Now it is exit 2 too, as a crate whose metadata or
    proofs are not JSON is; a checkpoint that parses but lacks the signature of --pubkey stays
    a failed check (exit 1)."""
    env = _home(tmp_path)
    (tmp_path / "in.txt").write_text("pear\n", encoding="utf-8")
    run_cli("run", "-i", "in.txt", "-o", "out.txt", "-n", "step", "--", "sh", "-c", "cat in.txt > out.txt",
            cwd=tmp_path, env=env, check_rc=0)
    run_cli("export", "out.txt", "--format", "ro-crate", "-o", "crate", cwd=tmp_path, env=env, check_rc=0)
    checkpoint = tmp_path / "crate" / "lineage-ledger" / "checkpoint.txt"
    checkpoint.write_text("this is no checkpoint\n", encoding="utf-8")
    against = run_cli("--against", checkpoint, cwd=tmp_path, env=env, program="verify-lineage")
    assert against.returncode == 2 and "is not a checkpoint" in against.stderr, (against.returncode, against.stderr)
    for extra in ([], ["--json"]):
        crate = run_cli("--crate", "crate", *extra, cwd=tmp_path, env=env, program="verify-lineage")
        assert crate.returncode == 2, (crate.returncode, crate.stdout, crate.stderr)
        assert "checkpoint" in crate.stderr and "is not a checkpoint" in crate.stderr, crate.stderr
