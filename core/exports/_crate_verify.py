"""``verify-lineage --crate PATH``: check an exported RO-Crate offline, without the ledger.

What is checked (the algorithms are docs/verification.md's; nothing here trusts the
crate's own claims about itself):

1. ``lineage-ledger/checkpoint.txt`` parses as a checkpoint (one that does not is a crate
   that cannot be read, as for ``verify-lineage --against``), signed by a ``--pubkey`` key
   when one is given;
2. each record file hashes (BLAKE3) to the id ``proofs.json`` gives it, is a canonical
   record, and its inclusion proof leads from its leaf to the checkpoint's root;
3. each task ``CreateAction`` names a proved record and says what the record says: the
   files it used and made (path, BLAKE3 digest, size), its times and status, and its
   ``ledgerExtra`` where it has one (the record's ``extra`` map as JSON text);
4. each ``File`` whose bytes are in the crate hashes to the digest it is described with
   (which step 3 tied to a proved record), and each ``Dataset`` (a directory artifact) in
   the crate to its manifest digest, as the core hashes a directory (docs/directories.md);
5. every proved record is described by an action, and every record the metadata points
   to is proved.

Exit status: 0 every check passed, 1 one failed (each failure is named), 2 the crate
cannot be read at all (no metadata; metadata or proofs that are no JSON; a checkpoint that
is no checkpoint).
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote

import click

from .._errors import CheckpointInvalid, ConfigError, LedgerError, ProofFailed
from .._files.hashing import hash_file
from .._log.tree import BLAKE3, verify_inclusion
from .._model import Record, is_alias
from .._terminal import json_text, printable
from ._crate_store import CrateStore, read_members

__all__ = ["CrateReport", "verify_crate", "verify_crate_command"]

_CHECKPOINT = "lineage-ledger/checkpoint.txt"
_PROOFS = "lineage-ledger/proofs.json"


@dataclass
class CrateReport:
    path: str
    checkpoint: Any = None
    records: int = 0
    files_checked: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        head = self.checkpoint
        return {"crate": self.path, "ok": self.ok, "records_proved": self.records,
                "files_checked": self.files_checked, "failures": self.failures,
                "checkpoint": None if head is None else {"origin": head.origin, "size": head.size,
                                                         "root": head.root.hex()}}


def _inside(crate: str, relative: str) -> str:
    """The path of a crate member; refuses ids that leave the crate (``../``, absolute)."""
    full = os.path.realpath(os.path.join(crate, relative))
    if os.path.isabs(relative) or not full.startswith(os.path.realpath(crate) + os.sep):
        raise ConfigError(f"{relative!r} is not a path inside the crate")
    return full


def _ids(value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value] if value is not None else []
    return [item["@id"] for item in items if isinstance(item, dict) and isinstance(item.get("@id"), str)]


def _types(entity: dict) -> set[str]:
    value = entity.get("@type", [])
    return set(value if isinstance(value, list) else [value])


def _same_time(text: Any, moment: datetime) -> bool:
    """The crate writes times to the millisecond (the profiles' form); the record has them
    to the microsecond."""
    try:
        parsed = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return False
    if parsed.tzinfo is None:
        return False
    exact = moment.astimezone(timezone.utc)
    return parsed.astimezone(timezone.utc) == exact.replace(microsecond=exact.microsecond // 1000 * 1000)


def verify_crate(crate: str, pubkeys: tuple[str, ...] = ()) -> CrateReport:
    """Check the crate directory (or zip file) ``crate``; see the module's docstring."""
    if os.path.isfile(crate) and zipfile.is_zipfile(crate):
        with tempfile.TemporaryDirectory() as scratch:
            _extract(crate, scratch)
            report = _verify_directory(scratch, pubkeys)
            report.path = crate
            return report
    if not os.path.isdir(crate):
        raise ConfigError(f"{crate}: not a crate directory or zip file")
    return _verify_directory(crate, pubkeys)


def _extract(archive_path: str, target: str) -> None:
    """Unpack a zipped crate, refusing members that would land outside ``target`` and links
    (a crate from someone else is input, not trusted)."""
    try:
        with zipfile.ZipFile(archive_path) as archive:
            for member in archive.infolist():
                name = member.filename
                if name.startswith("/") or ".." in name.replace("\\", "/").split("/") or \
                        stat.S_ISLNK(member.external_attr >> 16):
                    raise ConfigError(f"{archive_path}: refusing the zip member {name!r}")
            archive.extractall(target)
    except (zipfile.BadZipFile, OSError) as err:
        raise ConfigError(f"{archive_path}: not a readable zip file ({err})") from err


def _verify_directory(crate: str, pubkeys: tuple[str, ...]) -> CrateReport:
    from .._log.checkpoint import load_verifiers, parse

    report = CrateReport(crate)
    store = CrateStore()  # the metadata and the records proved, on disk (a crate may be huge)
    try:
        store.load_metadata(_inside(crate, "ro-crate-metadata.json"))
        proofs = _inside(crate, _PROOFS)
        try:
            with open(_inside(crate, _CHECKPOINT), "rb") as handle:
                note = handle.read((1 << 16) + 1)
            # As ``verify-lineage --against`` reads one: a note that is no checkpoint at all is a
            # crate that cannot be read (exit 2, as metadata or proofs that are no JSON are);
            # only one that parses can fail a check (no valid signature of a --pubkey): exit 1.
            parse(note)
        except OSError as err:
            raise ConfigError(f"cannot read the crate's checkpoint: {err.strerror}") from err
        except CheckpointInvalid as err:
            raise ConfigError(f"the crate's {_CHECKPOINT} is not a checkpoint: {err}") from None
        try:
            # A list of keys (a BAASH service's ranks.pub: one a line) as for --against.
            report.checkpoint = head = parse(note, [v for key in pubkeys for v in load_verifiers(key)])
        except CheckpointInvalid as err:
            for _ in read_members(proofs, "proofs.json", frozenset()):
                pass  # a proofs.json that is no JSON is said first, as before
            report.failures.append(f"checkpoint: {err}")
            return report  # nothing can be proved against a checkpoint that does not hold
        _check_records(crate, proofs, head, report, store)
        _check_actions(store, store, report)
        for record_id in store.undescribed():
            report.failures.append(f"record {record_id[:16]}: proved, but no action in the metadata describes it")
        _check_payloads(crate, store, report)
    finally:
        store.close()
    return report


def _check_records(crate: str, proofs_path: str, head: Any, report: CrateReport, store: CrateStore) -> None:
    """Each record proofs.json lists, read one at a time: hashed, decoded, its inclusion
    proof checked; those that hold are kept in ``store``."""
    scalars: dict[str, Any] = {}
    listed = False
    failures: list[str] = []
    for key, kind, item in read_members(proofs_path, "proofs.json", frozenset({"records"})):
        if key == "records":
            listed = kind != "value"
            if kind == "item":
                _check_record(crate, item, head, failures, store)
        else:
            scalars[key] = item
    if not listed:
        raise ConfigError("proofs.json lists no records")
    if scalars.get("tree_size") != head.size or scalars.get("origin") != head.origin:
        report.failures.append(f"proofs.json is for tree {scalars.get('origin')!r} of size "
                               f"{scalars.get('tree_size')}, the checkpoint for {head.origin!r} of size {head.size}")
    report.failures.extend(failures)
    report.records = store.proved_count()


def _check_record(crate: str, item: Any, head: Any, failures: list[str], store: CrateStore) -> None:
    try:
        record_id, index = str(item["id"]), item["leaf_index"]
        path = _inside(crate, str(item["file"]))
        proof = [bytes.fromhex(node) for node in item["inclusion_proof"]]
    except (KeyError, TypeError, ValueError) as err:
        failures.append(f"proofs.json: an entry is malformed ({type(err).__name__}: {err})")
        return
    try:
        with open(path, "rb") as handle:
            body = handle.read()
    except OSError as err:
        failures.append(f"record {record_id[:16]}: its file {item['file']} cannot be read ({err.strerror})")
        return
    actual = _blake3(body)
    if actual != record_id:
        failures.append(f"record {record_id[:16]}: {item['file']} was altered (its bytes hash to "
                        f"{actual[:16]}, not to the record id)")
        return
    try:
        Record.decode(body)
    except (ValueError, KeyError, TypeError) as err:
        failures.append(f"record {record_id[:16]}: not a canonical record ({err})")
        return
    try:
        verify_inclusion(BLAKE3, index, head.size, BLAKE3.leaf(bytes.fromhex(record_id)), proof, head.root)
    except ProofFailed as err:
        failures.append(f"record {record_id[:16]}: not in the checkpoint's tree: {err}")
        return
    store.prove(record_id, body)


def _blake3(data: bytes) -> str:
    from blake3 import blake3

    return blake3(data).hexdigest()


def _files_of(entities: CrateStore, refs: Any, what: str, failures: list[str]) -> dict[str, tuple[str, int]]:
    """{recorded path: (digest, size)} of the File and Dataset (directory) entities ``refs``
    points to."""
    found: dict[str, tuple[str, int]] = {}
    for ident in _ids(refs):
        entity = entities.get(ident)
        if entity is None:
            failures.append(f"{what}: refers to {ident!r}, which the metadata does not describe")
            continue
        if not _types(entity) & {"File", "Dataset"}:
            continue  # parameters (PropertyValue) sit beside the files
        try:
            found[str(entity["ledgerPath"])] = (str(entity["blake3"]), int(entity["contentSize"]))
        except (KeyError, TypeError, ValueError):
            failures.append(f"{what}: file entity {ident!r} lacks its ledgerPath, blake3 or contentSize")
    return found


def _check_actions(entities: CrateStore, proved: CrateStore, report: CrateReport) -> None:
    for ident, entity in entities.items():
        if "CreateAction" not in _types(entity) or "identifier" not in entity:
            continue  # the workflow run's actions summarise; the tasks' carry the records
        record_id = str(entity["identifier"])
        record = proved.proved(record_id)
        if record is None:
            report.failures.append(f"action {ident}: describes record {record_id[:16]}, which is not proved")
            continue
        proved.describe(record_id)
        what = f"action {ident[:24]}"
        # An alias entry repeats its real path's; the crate describes it as an alternateName.
        expected_in = {p: (a["blake3"], a["size"]) for p, a in record.inputs.items() if not is_alias(a)}
        expected_out = {p: (a["blake3"], a["size"]) for p, a in record.outputs.items() if not is_alias(a)}
        used = _files_of(entities, entity.get("object"), what, report.failures)
        made = _files_of(entities, entity.get("result"), what, report.failures)
        for side, claimed, expected in (("input", used, expected_in), ("output", made, expected_out)):
            if record.status == "failed" and side == "output" and not claimed:
                continue
            for path in sorted(set(claimed) | set(expected)):
                if claimed.get(path) != expected.get(path):
                    report.failures.append(
                        f"{what}: {side} {printable(path)} is described as {_show(claimed.get(path))}, "
                        f"the proved record {record_id[:16]} says {_show(expected.get(path))}")
        if not _same_time(entity.get("startTime"), record.started) or not _same_time(entity.get("endTime"),
                                                                                      record.ended):
            report.failures.append(f"{what}: its times differ from the proved record {record_id[:16]}")
        status = str(entity.get("actionStatus", ""))
        if status.endswith("FailedActionStatus") != (record.status == "failed"):
            report.failures.append(f"{what}: its status differs from the proved record ({record.status})")
        if "ledgerExtra" in entity and not _same_extra(entity["ledgerExtra"], record.extra):
            report.failures.append(f"{what}: its extra differs from the proved record {record_id[:16]}")


def _same_extra(text: Any, extra: Any) -> bool:
    """Whether an action's ``ledgerExtra`` is the JSON text of the record's ``extra`` map (a
    crate exported before it was carried has none, which claims nothing)."""
    try:
        claimed = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return False
    return isinstance(claimed, dict) and json.dumps(claimed, sort_keys=True) == json.dumps(extra, sort_keys=True)


def _show(entry: tuple[str, int] | None) -> str:
    return "absent" if entry is None else f"{entry[0][:16]} ({entry[1]} bytes)"


def _check_payloads(crate: str, entities: CrateStore, report: CrateReport) -> None:
    for ident, entity in entities.items():
        is_dir = "Dataset" in _types(entity)
        if not (is_dir or "File" in _types(entity)) or "blake3" not in entity or ident.startswith("#") \
                or ident in ("./", ""):
            continue
        if "://" in ident:
            continue  # described by digest only, not carried
        try:
            path = _inside(crate, unquote(ident))  # an id is a URI: 'data/r%C3%A9sum%C3%A9.txt'
        except ConfigError as err:
            report.failures.append(f"file {ident}: {err}")
            continue
        if not (os.path.isdir(path) if is_dir else os.path.isfile(path)):
            report.failures.append(f"{'directory' if is_dir else 'file'} {ident}: described as in the crate, "
                                   "but missing")
            continue
        try:
            actual = hash_file(path).blake3  # a directory: the digest of its manifest, now
        except LedgerError as err:
            report.failures.append(f"{'directory' if is_dir else 'file'} {ident}: cannot be hashed ({err})")
            continue
        report.files_checked += 1
        if actual != entity["blake3"]:
            what = "directory" if is_dir else "file"
            report.failures.append(f"{what} {ident}: MODIFIED (described as {str(entity['blake3'])[:16]}, "
                                   f"its {'manifest' if is_dir else 'bytes'} hash{'es' if is_dir else ''} to "
                                   f"{actual[:16]})")


def verify_crate_command(crate: str, pubkeys: tuple[str, ...], as_json: bool) -> int:
    """The CLI's side: print the report, return the exit status."""
    try:
        report = verify_crate(crate, pubkeys)
    except LedgerError as err:
        click.echo(f"error: {printable(str(err))}", err=True)
        return 2
    if as_json:
        click.echo(json_text(report.to_json(), indent=2))
    else:
        head = report.checkpoint
        if head is not None:
            signed = "signature checked" if pubkeys else "signature not checked (no --pubkey)"
            click.echo(f"checkpoint: {printable(head.origin)}, {head.size} records, root {head.root.hex()[:16]} "
                       f"({signed})")
        click.echo(f"records proved: {report.records}; files in the crate checked: {report.files_checked}")
        for failure in report.failures:
            click.echo(f"FAILED: {printable(failure)}")
        click.echo("crate verified" if report.ok else f"crate verification failed ({len(report.failures)} problem(s))")
    return 0 if report.ok else 1
