"""The W3C PROV exports as a PROV user reads them: ``prov.read`` of our PROV-JSON, then
``prov``'s own serializers (PROV-JSON, PROV-XML, PROV-O as RDF, PROV-N) and readers, on a
ledger made by a real Snakemake run and a ``lineage-ledger run`` step over files named with
spaces, non-ASCII letters, ``#`` and ``%``, a directory output, a failed and a retried task
(tests/support/odd_names.py). Also: an export of a ledger that fails verification is
refused. (About 15 s.)"""

from __future__ import annotations

import json
import re
import shutil
import urllib.parse
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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

from lineage_ledger.exports._prov_ids import AGENT_KINDS, agent_id, agent_name, file_id, task_id  # noqa: E402


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
    assert provn.count("activity(task:r") == len(tasks)


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


def test_identifiers_are_qualified_names_prov_xml_accepts(odd):
    """PROV-XML types ``prov:id`` and ``prov:ref`` as ``xsd:QName``, whose local part is an
    NCName: no leading digit, no '/'. Our ids were ``task:9a2e...``, ``file:80a7...-...`` and
    ``agent:user/root``, so the PROV-XML that ``prov`` writes of an export failed a validating
    reader. Now every id and every reference in that PROV-XML is a QName and every local name
    one PROV-N reads, and the value a user joins on comes back by docs/exports.md's rule."""
    _, _, out = odd
    document = prov.read(str(out / "run.json"), format="json")
    _check_identifiers(document, (out / "run.provn").read_text(encoding="utf-8"))


def test_a_user_name_that_needs_escaping_round_trips(tmp_path):
    """A user name with '/', '@', ' ', '_', ':', non-ASCII letters and a final '.' (as
    ``getpass`` reads it from LOGNAME) is an agent id PROV-XML and PROV-N accept, and the
    rule gives the name back."""
    name = "Jürgen/ops@lab_1 x:y."
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "XDG_STATE_HOME": str(home / ".local" / "state"), "LOGNAME": name}
    (tmp_path / "in.txt").write_text("pear\n", encoding="utf-8")
    run_cli("run", "-i", "in.txt", "-o", "out.txt", "-n", "step", "--", "sh", "-c", "cat in.txt > out.txt",
            cwd=tmp_path, env=env, check_rc=0)
    for fmt, file in (("prov-json", "out.json"), ("prov-n", "out.provn")):
        run_cli("export", "out.txt", "--format", fmt, "-o", file, cwd=tmp_path, env=env, check_rc=0)
    document = prov.read(str(tmp_path / "out.json"), format="json")
    users = [str(a.identifier) for a in document.get_records(ProvAgent) if PROV["Person"] in a.get_asserted_types()]
    assert users == ["agent:user-J_C3_BCrgen_2Fops_40lab_5F1_20x_3Ay_2E"]
    assert agent_name(users[0]) == ("user", name)
    provn = (tmp_path / "out.provn").read_text(encoding="utf-8")
    assert f"agent({users[0]}, [prov:label={json.dumps(name, ensure_ascii=False)}" in provn
    _check_identifiers(document, provn)


_XML_QNAME = None


def _is_xml_qname(value: str, prefixes: dict[str, str]) -> bool:
    """Whether an XML Schema validator (libxml2's, through lxml) takes ``value`` as an
    ``xs:QName`` with ``prefixes`` in scope."""
    global _XML_QNAME
    lxml_etree = pytest.importorskip("lxml.etree", reason="prov[xml] (the dev extra)")
    if _XML_QNAME is None:
        _XML_QNAME = lxml_etree.XMLSchema(lxml_etree.fromstring(
            b'<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema"><xs:element name="e"><xs:complexType>'
            b'<xs:attribute name="id" type="xs:QName"/></xs:complexType></xs:element></xs:schema>'))
    element = lxml_etree.Element("e", nsmap=prefixes)
    element.set("id", value)
    return bool(_XML_QNAME.validate(element))


# A local name in PROV-N's grammar (PN_LOCAL), as far as ASCII letters, digits, '_', '-' and '.'
# go: anything but a final '.'.
_PROVN_LOCAL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_-])?")


def _check_identifiers(document, provn: str) -> None:
    """Every ``prov:id`` and ``prov:ref`` of the PROV-XML that ``prov`` writes of ``document``
    is an xs:QName and its local part a PROV-N local name; the PROV-N ``provn`` names the
    same things; each task, file version and agent id gives back what users join on."""
    lxml_etree = pytest.importorskip("lxml.etree", reason="prov[xml] (the dev extra)")
    xml = lxml_etree.fromstring(document.serialize(format="xml").encode())
    prefixes = {ns.prefix: ns.uri for ns in document.get_registered_namespaces()}
    named = {value for element in xml.iter() for key, value in element.attrib.items()
             if key in (f"{{{PROV.uri}}}id", f"{{{PROV.uri}}}ref") and not value.startswith("_:")}
    assert named, "no ids in the PROV-XML"
    bad = [value for value in sorted(named) if not _is_xml_qname(value, prefixes)
           or not _PROVN_LOCAL.fullmatch(value.split(":", 1)[1])]
    assert not bad, f"{len(bad)} ids are not QNames every PROV reader takes, e.g. {bad[:3]}"
    again = ProvDocument.deserialize(content=document.serialize(format="xml"), format="xml")
    assert again == document
    for record in document.get_records():
        if record.identifier is None or str(record.identifier).startswith("_:"):
            continue
        ident, attributes = str(record.identifier), _attributes(record)
        assert f"({ident}," in provn, ident
        if isinstance(record, ProvActivity):
            assert ident == "task:r" + attributes["ll:record"][0]
        elif isinstance(record, ProvAgent):
            kind, name = agent_name(ident)
            assert attributes["prov:label"] == [name] and ident == agent_id(kind, name)
        elif ident != "tree:head":
            assert ident.startswith("file:v" + attributes["ll:blake3"][0] + "-"), ident


_NAMES = st.text(st.one_of(st.characters(exclude_categories=()), st.sampled_from("/@ _:.-")), max_size=40)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(AGENT_KINDS), name=_NAMES)
def test_every_agent_name_is_a_qname_and_comes_back(kind, name):
    """Any user, host or engine name (any Unicode, lone surrogates, '/', '@', ' ', '_', ':',
    a final '.', the empty engine name) is an ASCII id whose local part is an NCName and a
    PROV-N local name, and the rule decodes it to the name."""
    ident = agent_id(kind, name)
    assert ident.isascii() and ident.startswith(f"agent:{kind}-")
    assert _is_xml_qname(ident, {"agent": "urn:lineage-ledger:agent:"}), ident
    assert _PROVN_LOCAL.fullmatch(ident.split(":", 1)[1]), ident
    assert agent_name(ident) == (kind, name)
    documented = urllib.parse.unquote(ident[len(f"agent:{kind}-"):].replace("_", "%"), errors="surrogatepass")
    assert documented == name  # docs/exports.md's one line of Python says the same


@settings(max_examples=300, deadline=None)
@given(text=st.text(st.sampled_from("_-.0123456789ABCDEFaz/:"), max_size=12), kind=st.sampled_from(AGENT_KINDS))
def test_an_agent_id_decodes_only_as_it_was_written(text, kind):
    """One name, one id: a local part that ``agent_id`` would not write (``_41`` for "A", a
    lower-case escape, a lone '_') is refused, so two ids never name one agent."""
    ident = f"agent:{kind}-{text}"
    try:
        decoded = agent_name(ident)
    except ValueError:
        return
    assert agent_id(*decoded) == ident


@settings(max_examples=100, deadline=None)
@given(digest=st.text("0123456789abcdef", min_size=64, max_size=64), path=st.text(max_size=30))
def test_task_and_file_ids_are_qnames(digest, path):
    for ident in (task_id(digest), file_id(path, digest)):
        assert _is_xml_qname(ident, {"task": "urn:x:", "file": "urn:y:"}), ident
        assert _PROVN_LOCAL.fullmatch(ident.split(":", 1)[1]), ident
    assert task_id(digest)[len("task:r"):] == digest and file_id(path, digest).startswith(f"file:v{digest}-")
