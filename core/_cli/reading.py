"""Commands that answer from the ledger: ``log``, ``show``, ``why`` and ``depends``.

Each opens the ledger read-only and answers only from rows it has proved against the
verified tree head (docs/verification.md)."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable
from itertools import chain

import click

from .._errors import LedgerError
from .._files.hashing import normalize_path
from .._ledger.derived import RecordBits
from .._ledger.ledger import Ledger, LedgerRecord
from .._terminal import json_text, printable
from .common import COUNT_ARGUMENTS, Count, json_option, ledger_option, open_read_only, refuse_not_a_directory
from .render import derived_lines, describe_record, lineage_json, lineage_lines

__all__ = ['consistency', 'depends', 'log_command', 'show', 'why']


@click.command(name="log")
@click.option("-n", "--limit", type=Count(0, limit=True), default=20, show_default=True,
              help="How many records, newest last; 0 for all.")
@click.option("--run", "run_id", help="Only the records of this run.")
@click.option("--all", "every", is_flag=True,
              help="Directory manifests too: every record, so that the ids are the tree's leaves in order.")
@ledger_option
@json_option
def log_command(limit, run_id, every, ledger_url, as_json) -> None:
    """List recorded tasks (the last 20 unless -n says otherwise). With --json each line
    holds the record's ``leaf_index`` in the tree."""
    from .._files.manifest import is_manifest_record

    with open_read_only(ledger_url) as ledger:
        entries: Iterable[LedgerRecord]
        if run_id is not None and limit:  # an empty run id is a run too (Record accepts it)
            page, total = ledger.run_last(run_id, limit)
            entries = page[-limit:]
            if total > len(entries):  # say so: a listing of 20 reads like the whole run
                click.echo(f"showing the last {len(entries)} of {total} records; -n 0 shows all", err=True)
        elif run_id is not None:
            entries = chain.from_iterable(ledger.run_pages(run_id))  # streamed: a run may hold 100,000 tasks
        else:
            # Directory manifests are records too, but no task: they are not listed. The
            # records stream (Ledger.tail), proved as they are printed.
            total = ledger.tree_head().size

            def is_task(entry) -> bool:
                return every or not is_manifest_record(entry.record)

            shown, before, entries = ledger.tail(limit, is_task)
            if before:  # say so: a listing of 20 reads like the whole ledger
                click.echo(f"showing the last {shown} of {total} records; -n 0 shows all", err=True)
        start_of = ledger.verifier.store.block_start
        listed = False
        for entry in entries:
            listed = True
            if as_json:
                click.echo(json_text({"id": entry.id, "height": entry.height,
                                      "leaf_index": start_of(entry.height) + entry.position,
                                      **entry.record.to_dict()}))
            else:
                outs = ", ".join(printable(os.path.relpath(p)) for p, e in entry.record.outputs.items()
                                 if "alias_of" not in e) or "-"
                click.echo(f"{describe_record(entry)}  -> {outs}")
        if run_id is not None and not listed:
            # As export, graph and show refuse a name nothing describes (a typo, another
            # ledger): an empty listing, exit 0, read as a run that recorded nothing. Said
            # after the listing, whose count against the names kept has run by then: a run
            # whose rows were deleted is a failed check (exit 1), not an unknown one.
            raise LedgerError(f"no record in the ledger describes run {run_id!r}")



@click.command()
@click.argument("record_id")
@click.option("--size", type=Count(1), default=None,
              help="Prove inclusion in the tree of the first SIZE records (a checkpoint's size) instead of "
                   "the whole verified tree.")
@ledger_option
def show(record_id, size, ledger_url) -> None:
    """Show one record (an id or a unique prefix), its place and its inclusion proof.

    ``canonical_base64`` holds the record's exact stored bytes (their BLAKE3 hash is its id),
    for a verifier that checks the record without encoding it again (docs/verification.md)."""
    with open_read_only(ledger_url) as ledger:
        entry = ledger.get(record_id)
        head, index, proof = ledger.inclusion_proof(entry, size=size)
        body = {
            "id": entry.id,
            "block": {"height": entry.height, "position": entry.position},
            "tree": {"origin": head.origin, "size": head.size, "root": head.root, "leaf_index": index,
                     "inclusion_proof": proof},
            "record": entry.record.to_dict(),
            "canonical_base64": base64.b64encode(entry.record.encode()).decode("ascii"),
        }
        click.echo(json_text(body, indent=2, sort_keys=True))


@click.command(context_settings=COUNT_ARGUMENTS)
@click.argument("old_size", type=Count(0))
@click.argument("new_size", type=Count(0), required=False)
@ledger_option
def consistency(old_size, new_size, ledger_url) -> None:
    """Print the RFC 9162 consistency proof from the tree of the first OLD_SIZE records (an
    earlier checkpoint's size) to that of NEW_SIZE (default: the verified head), with both
    roots: what shows, without this ledger, that the later tree extends the earlier."""
    with open_read_only(ledger_url) as ledger:
        old, new, proof = ledger.consistency_proof(old_size, new_size)
        click.echo(json_text({
            "origin": new.origin,
            "old": {"size": old.size, "root": old.root},
            "new": {"size": new.size, "root": new.root},
            "consistency_proof": proof,
        }, indent=2, sort_keys=True))



@click.command()
@click.argument("path")
@ledger_option
@json_option
def why(path, ledger_url, as_json) -> None:
    """Show the lineage of PATH: the tasks and files it derives from, back to the sources."""
    refuse_not_a_directory([path])
    with open_read_only(ledger_url) as ledger:
        tree = ledger.lineage(path, slim=True)
        if tree.kind == "source" and not ledger.consumers(tree.path):
            # A file no record names may lie in a recorded directory: its lineage is the directory's.
            inside = ledger.container_of(tree.path)
            if inside is None:
                raise LedgerError(f"{path}: no record in the ledger read or wrote it")
            directory, _, _, entry = inside
            tree = ledger.lineage(directory, entry["blake3"], slim=True)
            if as_json:
                click.echo(json_text({"path": normalize_path(path), "within": directory,
                                      "lineage": lineage_json(tree)}, indent=2))
                return
            click.echo(f"{printable(path)} lies in the recorded directory {printable(os.path.relpath(directory))}:")
        if as_json:
            click.echo(json_text(lineage_json(tree), indent=2))
        else:
            click.echo("\n".join(lineage_lines(tree)))
            _say_adopted(tree)



def _say_adopted(tree) -> None:
    """Who accepted this version, and why, where an adoption produced it."""
    from .._ledger.lineage import is_adoption

    producer = tree.producer
    if producer is not None and is_adoption(producer.record):
        extra = producer.record.extra
        note = f": {printable(str(extra['note']))}" if extra.get("note") else ""
        click.echo(f"adopted by {printable(str(extra.get('adopted_by', '?')))} at "
                   f"{producer.record.ended:%Y-%m-%d %H:%M:%SZ}{note}")



@click.command()
@click.argument("path")
@click.option("-n", "--limit", type=Count(0, limit=True), default=50, show_default=True,
              help="At most this many consumers of each file (the oldest); 0 lists them all.")
@click.option("--all", "show_all", is_flag=True, help="List every consumer (same as --limit 0).")
@ledger_option
def depends(path, limit, show_all, ledger_url) -> None:
    """Show what was derived from PATH: its consumers, their outputs, and so on."""
    refuse_not_a_directory([path])
    with open_read_only(ledger_url) as ledger:
        normal = ledger.query_path(path)
        # Behind a symbolic link, the readers under every spelling records name it by.
        keys = ledger.query_paths(path)
        if not any(ledger.has_consumers(key) for key in keys):
            inside = ledger.container_of(normal)
            if inside is not None:  # what was derived from the recorded directory it lies in
                click.echo(f"{printable(path)} lies in the recorded directory {printable(os.path.relpath(inside[0]))}:")
                normal = path = inside[0]
                keys = [normal]
        if show_all or limit == 0:
            seen = ledger.record_bits()
            printed = False
            for key in keys:
                printed = _depends_streamed(ledger, key, path, seen=seen, printed=printed)
            if not printed:
                _say_nothing_derived(ledger, normal, path)
            return
        tree = ledger.derived(normal, limit=limit)
        if not tree:
            _say_nothing_derived(ledger, normal, path)
            return
        click.echo("\n".join(derived_lines(normal, tree)))



def _depends_streamed(ledger: Ledger, normal: str, shown: str, page: int = 500, *, seen: RecordBits | None = None,
                      printed: bool = False) -> bool:
    """Every consumer of key ``normal``, a page at a time, printed as it is proved: memory
    stays bounded for a file a million tasks read. ``seen``: records listed already (under
    another spelling of the path), not listed again. Whether anything was printed, by now."""
    seen = ledger.record_bits() if seen is None else seen
    offset = 0
    counted = ledger.listing("in", normal)  # every reader, counted against the names kept
    while True:
        consumers = ledger.consumers(normal, offset=offset, limit=page, as_key=True)
        if counted is not None:
            counted.add(consumers)
        # The page's outputs and their readers read ahead in a few statements, not one each.
        outputs = [out for consumer in consumers if consumer not in seen
                   for out in consumer.record.outputs]
        with ledger.consumers_ahead(outputs):
            for consumer in consumers:
                if consumer in seen:
                    continue
                children = [(out, ledger.derived(out, entry["blake3"], seen)) for out, entry in
                            sorted(consumer.record.outputs.items())]
                seen.add(consumer)
                lines = derived_lines(normal, [(consumer, children)])
                click.echo("\n".join(lines if not printed else lines[1:]))
                printed = True
        if len(consumers) < page:
            break
        offset += page
    if counted is not None:
        counted.finish()
    return printed


def _say_nothing_derived(ledger: Ledger, normal: str, shown: str) -> None:
    """That nothing was derived from a file a record wrote (exit 0); a file no record read
    or wrote (a typo, another ledger) is refused, exit 2, as ``why`` refuses it. Asked after
    the readers were listed and counted: a file whose reader rows were deleted is a failed
    check (exit 1), not an unknown file. Whether a record wrote it is proved, as every answer
    is: an index row planted to name a file no record names (or a producer row's path
    changed) answered "nothing was derived from it", exit 0, from that row alone
    (tests/test_trust_attack_index.py). The latest writer, one record proved, checked against
    the names kept: a file a million tasks wrote is not read whole."""
    if ledger.last_seen(normal, ("out",)) is None:
        raise LedgerError(f"{shown}: no record in the ledger read or wrote it")
    click.echo(f"{printable(shown)}: nothing in the ledger was derived from it")

