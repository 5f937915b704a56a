"""The W3C PROV exports as a PROV user reads them: ``prov.read`` of our PROV-JSON, then
``prov``'s own serializers (PROV-JSON, PROV-XML, PROV-O as RDF, PROV-N) and readers, on a
ledger made by a real Snakemake run and a ``lineage-ledger run`` step over files named with
spaces, non-ASCII letters, ``#`` and ``%``, a directory output, a failed and a retried task
(tests/support/odd_names.py). Also: an export of a ledger that fails verification is
refused. (About 15 s.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.support.odd_names import DIRECTORY, RUN, odd_workflow, recorded, recorded_paths, tamper_one_record

prov = pytest.importorskip("prov", reason="the exports extra")

from prov.model import (  # noqa: E402
    PROV,
    ProvActivity,
    ProvAgent,
    ProvDocument,
    ProvEntity,
    ProvGeneration,
    ProvUsage,
    QualifiedName,
)


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    where = tmp_path_factory.mktemp("odd")
    env = odd_workflow(where)
    out = where / "exports"
    out.mkdir()
    for fmt, name in (("prov-json", "run.json"), ("prov-n", "run.provn")):
        run_cli("export", "--run", RUN, "--format", fmt, "-o", out / name, cwd=where, env=env, check_rc=0)
    return where, env, out


def _attributes(record) -> dict[str, list]:
    found: dict[str, list] = {}
    for key, value in record.attributes:
        found.setdefault(str(key), []).append(value)
    return found


def test_prov_json_reads_back_and_round_trips_through_every_serialization(odd):
    where, env, out = odd
    document = prov.read(str(out / "run.json"), format="json")
    records = recorded(where, env)
    tasks = [r for r in records if r["run_id"] == RUN]
    activities = list(document.get_records(ProvActivity))
    assert len(activities) == len(tasks) == 7  # weird, twins, dir, retry x2, fail, cli step
    # Every recorded path (odd names, the directory, the link's alias) survives as written.
    paths = {value for entity in document.get_records(ProvEntity)
             for key, values in _attributes(entity).items() if key in ("ll:path", "ll:alias") for value in values}
    assert paths == recorded_paths(records)
    by_record = {_attributes(a)["ll:record"][0]: a for a in activities}
    for task in tasks:
        attributes = _attributes(by_record[task["id"]])
        assert attributes["ll:status"] == [task["status"]] and attributes["ll:attempt"] == [task["attempt"]]
        assert by_record[task["id"]].get_startTime() is not None
        assert by_record[task["id"]].get_startTime().utcoffset() is not None  # an instant, not a wall time
    retried = sorted(_attributes(a)["ll:attempt"][0] for a in activities
                     if _attributes(a)["ll:task_name"] == ["retry"])
    assert retried == [1, 2]
    assert any(isinstance(r, ProvUsage) for r in document.get_records())
    assert any(isinstance(r, ProvGeneration) for r in document.get_records())
    formats = [("json", {}), ("rdf", {"rdf_format": "trig"})]
    try:
        import lxml  # noqa: F401 - prov's PROV-XML serializer needs it (prov[xml])

        formats.append(("xml", {}))
    except ImportError:
        pass
    for fmt, options in formats:
        text = document.serialize(format=fmt, **options)
        again = ProvDocument.deserialize(content=text, format=fmt, **options)
        assert again == document, fmt  # every identifier, attribute value and type, and relation
    provn = document.get_provn()
    assert provn.count("activity(task:") == len(tasks)


def test_prov_types_are_qualified_names_not_strings(odd):
    """A PROV reader knows an agent is a person, a directory a collection, by a ``prov:type``
    whose value is a qualified name (``prov:Person``). Ours were the strings "prov:Person",
    "prov:Collection", "ll:FileVersion": ``prov`` read no prov:Person, and its PROV-XML and
    PROV-O wrote them as ``xsd:string`` literals, not types."""
    where, env, out = odd
    document = prov.read(str(out / "run.json"), format="json")
    ll = document.get_registered_namespaces()
    ll_uri = {ns.prefix: ns for ns in ll}["ll"]
    people = [a for a in document.get_records(ProvAgent) if PROV["Person"] in a.get_asserted_types()]
    software = [a for a in document.get_records(ProvAgent) if PROV["SoftwareAgent"] in a.get_asserted_types()]
    assert people and software
    directories = [e for e in document.get_records(ProvEntity) if PROV["Collection"] in e.get_asserted_types()]
    assert [_attributes(e)["ll:path"] for e in directories] == [[str(where / DIRECTORY)]]
    for record in document.get_records():
        for value in record.get_asserted_types():
            assert isinstance(value, QualifiedName), (record.identifier, value)
    assert all(ll_uri["Task"] in a.get_asserted_types() for a in document.get_records(ProvActivity))
    rdf = document.serialize(format="rdf", rdf_format="nt")
    assert "<http://www.w3.org/1999/02/22-rdf-syntax-ns#type> <http://www.w3.org/ns/prov#Person>" in rdf
    assert '"prov:Person"' not in rdf
    provn = (out / "run.provn").read_text(encoding="utf-8")
    assert "prov:type='prov:Person'" in provn and "prov:type='prov:Collection'" in provn
    assert 'prov:type="' not in provn


def test_export_of_a_ledger_that_fails_verification_is_refused(odd, tmp_path):
    """Trust first: a record altered in the ledger file stops every format, exit 1, and writes
    nothing (a lineage of that ledger would present the altered record as proved)."""
    where, env, _ = odd
    copy = tmp_path / "copy"
    shutil.copytree(where / ".lineage", copy / ".lineage", symlinks=True)
    tamper_one_record(copy / ".lineage" / "ledger.db")
    for fmt, name in (("prov-json", "x.json"), ("prov-n", "x.provn"), ("openlineage", "x.jsonl"),
                      ("ro-crate", "crate")):
        result = run_cli("export", "--run", RUN, "--format", fmt, "-o", tmp_path / name, cwd=copy, env=env)
        assert result.returncode == 1, (fmt, result.stdout, result.stderr)
        assert "does not hash to its id" in result.stderr, result.stderr
        assert not Path(tmp_path / name).exists(), fmt


@pytest.mark.xfail(strict=True, reason="task:/file: ids start with a hex digit and agent ids hold '/': not "
                                       "xsd:QNames, so PROV-XML made from the export is schema-invalid")
def test_identifiers_are_qualified_names_prov_xml_accepts(odd):
    """PROV-XML types ``prov:id`` and ``prov:ref`` as ``xsd:QName``, whose local part is an
    NCName: no leading digit, no '/'. ``prov`` writes our ids as they are (``task:9a2e...``,
    ``file:80a7...-...``, ``agent:user/root``), so the PROV-XML of an export fails a
    validating reader. PROV-JSON, PROV-N and PROV-O accept them; left for a decision, since
    changing the ids changes what users join on (docs/exports.md's table)."""
    lxml_etree = pytest.importorskip("lxml.etree", reason="prov[xml]")
    _, _, out = odd
    document = prov.read(str(out / "run.json"), format="json")
    schema = lxml_etree.XMLSchema(lxml_etree.fromstring(
        b'<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema"><xs:element name="e"><xs:complexType>'
        b'<xs:attribute name="id" type="xs:QName"/></xs:complexType></xs:element></xs:schema>'))
    prefixes = "".join(f' xmlns:{ns.prefix}="{ns.uri}"' for ns in document.get_registered_namespaces())
    bad = []
    for record in document.get_records():
        if record.identifier is not None and not str(record.identifier).startswith("_:"):
            element = lxml_etree.fromstring(f'<e{prefixes} id="{record.identifier}"/>'.encode())
            if not schema.validate(element):
                bad.append(str(record.identifier))
    assert not bad, f"{len(bad)} ids are not xsd:QNames, e.g. {bad[:3]}"
