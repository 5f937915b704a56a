"""The ``lineage-ledger`` and ``verify-lineage`` commands (a thin layer over the library).

Exit status: 0 success or verified, 1 a verification failed, 2 a usage, configuration,
input or back-end error. ``lineage-ledger run`` exits with its command's status.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import click

from ._canonical import canonical_bytes, utcnow
from ._errors import CheckpointInvalid, ConfigError, LedgerError, VerificationError
from ._hashing import Hasher, StatCache, hash_file, normalize_path, walk_files
from ._ledger import DEFAULT_URL, Ledger, open_ledger
from ._model import Artifact, digest_hex
from ._render import derived_lines, describe_record, lineage_json, lineage_lines, report_json, report_lines
from ._terminal import json_text, printable
from ._verify import verify_against, verify_lineage

__all__ = ["cli", "main", "verify_main"]

ledger_option = click.option(
    "--ledger", "ledger_url", envvar="LINEAGE_LEDGER_URL", default=DEFAULT_URL, show_default=True,
    help="Ledger URL (sqlite:///path, postgresql://..., memory://) or a path to an SQLite file.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")


class _Guarded(click.Group):
    """Turn library errors into a one-line message and exit status 2 (or 1 for checks)."""

    def invoke(self, ctx: click.Context) -> Any:
        return _guard(lambda: super(_Guarded, self).invoke(ctx))


def _guard(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except VerificationError as err:
        click.echo(f"verification failed: {printable(str(err))}", err=True)
        sys.exit(1)
    except LedgerError as err:
        click.echo(f"error: {printable(str(err))}", err=True)
        sys.exit(2)
    except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit, KeyboardInterrupt):
        raise
    except BrokenPipeError:  # the reader went away (`| head`): nothing more to say to it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except RecursionError:
        click.echo("error: the lineage is too deep to walk (over ~900 tasks in one chain)", err=True)
        sys.exit(2)
    except Exception as err:  # noqa: BLE001 - exit 1 would claim a verification failed
        if os.environ.get("LINEAGE_DEBUG"):
            raise
        click.echo(f"error: unexpected {type(err).__name__}: {printable(str(err))} (LINEAGE_DEBUG=1 shows where)",
                   err=True)
        sys.exit(2)


def _open(url: str) -> Ledger:
    """For commands that only read: nothing is created, replayed or written to the ledger."""
    return open_ledger(url, read_only=True)


@click.group(cls=_Guarded, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lineage-ledger")
def cli() -> None:
    """A provenance ledger for scientific workflows: record what ran on which bytes, verify it later."""


# -- run -----------------------------------------------------------------------------------
def _parse_params(pairs: tuple[str, ...]) -> dict[str, str]:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--param")
        params[key] = value
    return params


def _code_digest(command: tuple[str, ...], declared: set[str]) -> str:
    """Commit to the command line and to any script file it names (not its data files)."""
    scripts = {}
    for arg in command:
        if os.path.isfile(arg) and normalize_path(arg) not in declared:
            scripts[normalize_path(arg)] = hash_file(arg).blake3
    return digest_hex(canonical_bytes({"argv": list(command), "files": scripts}))


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("-i", "--input", "inputs", multiple=True, help="A file the command reads (repeatable).")
@click.option("-o", "--output", "outputs", multiple=True, help="A file the command writes (repeatable).")
@click.option("-n", "--name", help="Task name (default: the program's name).")
@click.option("--run-id", envvar="LINEAGE_RUN_ID", help="Group tasks of one workflow run.")
@click.option("-p", "--param", "params", multiple=True, help="A parameter KEY=VALUE to record.")
@click.option("--ship-wait", "wait", type=click.FloatRange(min=0), default=2.0, show_default=True,
              envvar="LINEAGE_SHIP_WAIT",
              help="Seconds to wait for the ledger to take the record; after that it waits in the spool.")
@ledger_option
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(inputs, outputs, name, run_id, params, wait, ledger_url, command) -> None:
    """Hash the inputs, run COMMAND, hash the outputs, record it all.

    The record is made durable in the local spool first; a locked or unreachable ledger
    leaves it there (see `lineage-ledger spool`). SIGINT, SIGTERM and SIGHUP are passed on
    to COMMAND. Exit status: COMMAND's, 128+N if a signal N ended or interrupted it, 2 if
    nothing ran (bad configuration or input, a spool that cannot be written).

    \b
    Example:
      lineage-ledger run -i data/raw.csv -o data/clean.csv -- python clean.py data/raw.csv
    """
    from ._run import run_and_record

    parameters = _parse_params(params)
    try:
        canonical_bytes(parameters)  # refuse unrecordable parameters before anything runs
    except ValueError as err:
        raise ConfigError(f"--param: {err}") from err
    sys.exit(run_and_record(command, inputs=inputs, outputs=outputs, name=name, run_id=run_id,
                            parameters=parameters, ledger_url=ledger_url, wait=wait, code_digest=_code_digest))


# -- the spool -----------------------------------------------------------------------------
spool_option = click.option(
    "--spool", "spool_root", envvar="LINEAGE_SPOOL", default=".lineage/spool", show_default=True,
    help="The spool directory (records journaled here and not yet in a ledger).",
)


@cli.group()
def spool() -> None:
    """Records journaled in the local spool and not yet in the ledger."""


@spool.command(name="status")
@spool_option
@json_option
def spool_status(spool_root, as_json) -> None:
    """Show what waits in the spool, per ledger: how many records, and the oldest one's age."""
    from ._deferred import backlog

    now = utcnow()
    found = [entry for entry in backlog(spool_root) if entry.records or entry.quarantined]
    if as_json:
        click.echo(json_text([entry.to_json(now) for entry in found], indent=2))
        return
    if not found:
        click.echo("nothing waits in the spool")
    for entry in found:
        line = f"{entry.records} record(s) wait for {printable(entry.url)}"
        if entry.oldest is not None:
            line += f", the oldest ended {_age(now, entry.oldest)} ago"
        if entry.live:
            line += f" ({entry.live} held by running processes, which ship them)"
        if entry.quarantined:
            line += f"; {entry.quarantined} quarantined file(s) of damaged lines in {printable(entry.directory)}/quarantine"
        click.echo(line)


def _age(now, then) -> str:
    seconds = max(0.0, (now - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


@spool.command(name="ship")
@ledger_option
@spool_option
@click.option("--timeout", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="Seconds to wait for the ledger to take the records.")
def spool_ship(ledger_url, spool_root, timeout) -> None:
    """Ship the records waiting in the spool for the ledger. Exit 0 when all are in it, 2 if
    the ledger did not take them (they keep waiting)."""
    from ._deferred import WaitingInSpool, ship

    try:
        shipped, left = ship(ledger_url, spool=spool_root, timeout=timeout)
    except WaitingInSpool as err:
        click.echo(f"error: {printable(str(err))}; {err.left.records} record(s) wait in the spool "
                   f"{printable(err.left.directory)}", err=True)
        sys.exit(2)
    click.echo(f"shipped {shipped} record(s)", err=True)
    if left.live:
        click.echo(f"{left.live} record(s) are held by running processes, which ship them", err=True)
    waiting = left.records - left.live
    if waiting:
        click.echo(f"error: {waiting} record(s) still wait in the spool {printable(left.directory)}", err=True)
        sys.exit(2)


# -- reading -------------------------------------------------------------------------------
@cli.command(name="log")
@click.option("-n", "--limit", default=20, show_default=True, help="How many records, newest last; 0 for all.")
@click.option("--run", "run_id", help="Only the records of this run.")
@ledger_option
@json_option
def log_command(limit, run_id, ledger_url, as_json) -> None:
    """List recorded tasks (the last 20 unless -n says otherwise)."""
    from ._manifest import is_manifest_record

    with _open(ledger_url) as ledger:
        if run_id:
            entries = ledger.run(run_id)
            total, truncated = len(entries), bool(limit) and len(entries) > limit
        else:
            # Directory manifests are records too, but no task: they are not listed.
            total, want = ledger.tree_head().size, limit
            while True:
                fetched = ledger.recent(want)
                entries = [e for e in fetched if not is_manifest_record(e.record)]
                if not limit or len(entries) >= limit or len(fetched) < want:
                    break
                want *= 2
            truncated = bool(limit) and total > len(fetched)
        entries = entries[-limit:] if limit else entries
        if truncated:  # say so: a listing that stops at 20 reads like the whole ledger
            click.echo(f"showing the last {len(entries)} of {total} records; -n 0 shows all", err=True)
        for entry in entries:
            if as_json:
                click.echo(json_text({"id": entry.id, "height": entry.height, **entry.record.to_dict()}))
            else:
                outs = ", ".join(printable(os.path.relpath(p)) for p, e in entry.record.outputs.items()
                                 if "alias_of" not in e) or "-"
                click.echo(f"{describe_record(entry)}  -> {outs}")


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--note", help="Why the change is accepted (kept in the record).")
@ledger_option
def adopt(paths, note, ledger_url) -> None:
    """Accept the current content of PATHS (files or directories) as a new recorded version.

    Records who adopted what, when and why, so that `strict` pre-run checks accept the
    files from then on, a later edit is still caught, and `why PATH` shows the adoption.
    """
    from ._adopt import adopt as adopt_paths

    with open_ledger(ledger_url) as ledger:
        entry, previous = adopt_paths(ledger, paths, note)
    for path, digest in previous.items():
        now = entry.record.outputs[path]["blake3"]
        before = "no record named it" if digest is None else (
            "unchanged" if digest == now else f"was {digest[:12]}")
        click.echo(f"adopted {printable(os.path.relpath(path))} {now[:12]} ({before})")
    click.echo(f"recorded {entry.id[:12]} (adopt by {printable(entry.record.extra['adopted_by'])})", err=True)


@cli.command()
@click.argument("record_id")
@ledger_option
def show(record_id, ledger_url) -> None:
    """Show one record (an id or a unique prefix), its place and its inclusion proof."""
    with _open(ledger_url) as ledger:
        entry = ledger.get(record_id)
        head, index, proof = ledger.inclusion_proof(entry)
        body = {
            "id": entry.id,
            "block": {"height": entry.height, "position": entry.position},
            "tree": {"origin": head.origin, "size": head.size, "root": head.root, "leaf_index": index,
                     "inclusion_proof": proof},
            "record": entry.record.to_dict(),
        }
        click.echo(json_text(body, indent=2, sort_keys=True))


@cli.command()
@click.argument("path")
@ledger_option
@json_option
def why(path, ledger_url, as_json) -> None:
    """Show the lineage of PATH: the tasks and files it derives from, back to the sources."""
    with _open(ledger_url) as ledger:
        tree = ledger.lineage(path)
        if tree.kind == "source" and not ledger.consumers(tree.path):
            # A file no record names may lie in a recorded directory: its lineage is the directory's.
            inside = ledger.container_of(tree.path)
            if inside is None:
                raise LedgerError(f"{path}: no record in the ledger read or wrote it")
            directory, _, _, entry = inside
            tree = ledger.lineage(directory, entry["blake3"])
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
    from ._lineage import is_adoption

    producer = tree.producer
    if producer is not None and is_adoption(producer.record):
        extra = producer.record.extra
        note = f": {printable(str(extra['note']))}" if extra.get("note") else ""
        click.echo(f"adopted by {printable(str(extra.get('adopted_by', '?')))} at "
                   f"{producer.record.ended:%Y-%m-%d %H:%M:%SZ}{note}")


@cli.command()
@click.argument("path")
@click.option("-n", "--limit", default=50, show_default=True,
              help="At most this many consumers of each file (the oldest); 0 lists them all.")
@click.option("--all", "show_all", is_flag=True, help="List every consumer (same as --limit 0).")
@ledger_option
def depends(path, limit, show_all, ledger_url) -> None:
    """Show what was derived from PATH: its consumers, their outputs, and so on."""
    with _open(ledger_url) as ledger:
        normal = ledger.query_path(path)
        if not ledger.count_consumers(normal):
            inside = ledger.container_of(normal)
            if inside is not None:  # what was derived from the recorded directory it lies in
                click.echo(f"{printable(path)} lies in the recorded directory {printable(os.path.relpath(inside[0]))}:")
                normal = path = inside[0]
        if show_all or limit <= 0:
            _depends_streamed(ledger, normal, path)
            return
        tree = ledger.derived(normal, limit=limit)
        if not tree:
            click.echo(f"{printable(path)}: nothing in the ledger was derived from it")
            return
        click.echo("\n".join(derived_lines(normal, tree)))


def _depends_streamed(ledger: Ledger, normal: str, shown: str, page: int = 500) -> None:
    """Every consumer, a page at a time, printed as it is proved: memory stays bounded for a
    file a million tasks read."""
    seen: set[str] = set()
    offset, printed = 0, False
    while True:
        consumers = ledger.consumers(normal, offset=offset, limit=page)
        for consumer in consumers:
            if consumer.id in seen:
                continue
            children = [(out, ledger.derived(out, entry["blake3"], seen)) for out, entry in
                        sorted(consumer.record.outputs.items())]
            seen.add(consumer.id)
            lines = derived_lines(normal, [(consumer, children)])
            click.echo("\n".join(lines if not printed else lines[1:]))
            printed = True
        if len(consumers) < page:
            break
        offset += page
    if not printed:
        click.echo(f"{printable(shown)}: nothing in the ledger was derived from it")


@cli.command(name="hash")
@click.argument("paths", nargs=-1, required=True)
@click.option("--rehash", is_flag=True, help="Ignore the stat cache and read every file again.")
@click.option("--cache", "cache_path", default=".lineage/statcache.db", show_default=True,
              help="Stat cache file (digests keyed by size, mtime, ctime and inode).")
@click.option("--dir", "as_dirs", is_flag=True,
              help="Print one digest per directory, of its manifest, as records name it (docs/directories.md).")
@json_option
def hash_command(paths, rehash, cache_path, as_dirs, as_json) -> None:
    """Print the BLAKE3 digest and size of files (directories are walked; an entry that
    cannot be read, such as a symbolic link loop, is reported and skipped)."""
    files: list[str] = []

    def skipped(entry: str, reason: str) -> None:
        click.echo(f"skipped {printable(os.path.relpath(entry))}: {reason}", err=True)

    for path in paths:
        normal = normalize_path(path)
        files.extend(walk_files(normal, on_skip=skipped) if os.path.isdir(normal) and not as_dirs else [normal])
    hasher = Hasher(StatCache(cache_path), rehash=rehash)
    artifacts = [hasher.hash(f) for f in files] if as_dirs else _hash_with_progress(hasher, files)
    if as_dirs:
        hasher.cache.save()  # type: ignore[union-attr]  # a cache is always given here
    for artifact in artifacts:
        if as_json:
            kind = {"type": "dir"} if artifact.is_dir else {}
            click.echo(json_text({"path": artifact.path, "blake3": artifact.blake3, "size": artifact.size, **kind}))
        else:
            shown = printable(os.path.relpath(artifact.path)) + ("/" if artifact.is_dir else "")
            click.echo(f"{artifact.blake3}  {artifact.size:>12}  {shown}")


def _hash_with_progress(hasher: Hasher, files: list[str]):
    if not sys.stderr.isatty() or len(files) < 2:
        return hasher.hash_many(files)
    total = sum(os.path.getsize(f) for f in files if os.path.isfile(f))
    if total < (256 << 20) and len(files) < 2000:
        return hasher.hash_many(files)
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeElapsedColumn

    # Progress advances per file (a large file is one mmap call), so no speed column:
    # threads finishing together would show absurd rates.
    with Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TimeElapsedColumn(),
        transient=True,
    ) as progress:
        done = [0]
        task = progress.add_task(f"hashing 0/{len(files)} files", total=total)

        def advance(artifact: Artifact) -> None:
            done[0] += 1
            progress.update(task, advance=artifact.size, description=f"hashing {done[0]}/{len(files)} files")

        return hasher.hash_many(files, on_done=advance)


# -- verify --------------------------------------------------------------------------------
@click.command(name="verify")
@click.argument("targets", nargs=-1)
@click.option("--against", "checkpoint_file", type=click.Path(dir_okay=False),
              help="A checkpoint: exit 0 only if the ledger is an append-only extension of it.")
@click.option("--pubkey", "pubkeys", multiple=True, type=click.Path(dir_okay=False),
              help="A public key the checkpoint must be signed by (repeatable; needs --against).")
@click.option("--quorum", type=click.IntRange(min=1), default=None,
              help="How many distinct keys of those given must have signed the checkpoint (default 1; "
                   "a BAASH checkpoint: more than two thirds of its ranks.pub).")
@click.option("--crate", "crate_path", type=click.Path(),
              help="Verify an RO-Crate written by `lineage-ledger export --format ro-crate`, offline, "
                   "without the ledger (with --pubkey: its checkpoint's signature too).")
@ledger_option
@json_option
def verify(targets, checkpoint_file, pubkeys, quorum, crate_path, ledger_url, as_json) -> None:
    """Verify the ledger, TARGETS against it, and their lineage back to the sources.

    With no TARGET, audit the whole ledger (every block, record and index row, and every
    recorded output still on disk). With TARGETS, bring the tree head verified before up to
    date and prove every record used. Exit 0 verified, 1 a check failed, 2 an error.
    """
    if crate_path is not None:
        if targets or checkpoint_file:
            raise click.UsageError("--crate takes no TARGET and no --against")
        from .exports._crate_verify import verify_crate_command

        sys.exit(verify_crate_command(crate_path, pubkeys, as_json))
    if quorum is not None and not pubkeys:
        raise click.UsageError("--quorum needs --pubkey (the keys whose signatures count)")
    checkpoint = _read_checkpoint(checkpoint_file, pubkeys, quorum) if checkpoint_file else None
    if checkpoint is not None and not pubkeys:
        click.echo("note: no --pubkey given: the checkpoint's signature is not checked, so it vouches only "
                   "as far as the file itself can be trusted", err=True)
    if pubkeys and not checkpoint_file:
        raise click.UsageError("--pubkey needs --against CHECKPOINT")
    with _open(ledger_url) as ledger:
        report = verify_lineage(ledger, targets)
        if checkpoint is not None and report.ok:
            try:
                report.against = verify_against(ledger, checkpoint)
            except VerificationError as failure:
                report.fail(failure)
    for entry, reason in report.skipped:  # entries of the trees given that could not be read
        click.echo(f"skipped {printable(os.path.relpath(entry))}: {reason}", err=True)
    if as_json:
        data = report_json(report)
        if report.skipped:
            data["skipped"] = [{"path": p, "reason": r} for p, r in report.skipped]
        click.echo(json_text(data, indent=2))
    else:
        click.echo("\n".join(report_lines(report)))
    sys.exit(0 if report.ok else 1)


def _read_checkpoint(path: str, pubkeys: tuple[str, ...], quorum: int | None = None):
    from ._checkpoint import load_verifiers, parse, signed_by

    try:
        with open(path, "rb") as handle:
            text = handle.read((1 << 16) + 1)  # one byte over the limit: parse refuses it
    except OSError as err:
        raise ConfigError(f"cannot read checkpoint {path}: {err.strerror}") from err
    verifiers = [v for key in pubkeys for v in load_verifiers(key)]
    checkpoint = parse(text, verifiers)
    if quorum is not None:
        distinct = len({(v.name, v.key_id) for v in verifiers})
        if quorum > distinct:
            raise ConfigError(f"--quorum {quorum}: only {distinct} distinct public keys were given")
        signed = signed_by(text, verifiers)
        if len(signed) < quorum:
            names = ", ".join(sorted(v.name for v in signed)) or "none"
            raise CheckpointInvalid(f"{path} is signed by {len(signed)} of the {distinct} keys given ({names}); "
                                    f"--quorum asks for {quorum}")
    return checkpoint


cli.add_command(verify)


# -- tree heads ------------------------------------------------------------------------------
@cli.command()
@click.argument("keyfile", type=click.Path(dir_okay=False))
@click.option("--name", help="The key's name in signatures (default: lineage-ledger/USER@HOST).")
def keygen(keyfile, name) -> None:
    """Write an ed25519 key pair for signing checkpoints: KEYFILE (private, 0600) and KEYFILE.pub."""
    import getpass
    import socket

    from ._checkpoint import write_keypair

    write_keypair(keyfile, name or f"lineage-ledger/{getpass.getuser()}@{socket.gethostname()}")
    click.echo(f"wrote {keyfile} (private; keep it so) and {keyfile}.pub (give this to verifiers)", err=True)


@cli.command()
@click.option("--key", "keyfile", type=click.Path(dir_okay=False), help="Sign with this private key.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write here instead of standard output.")
@ledger_option
def checkpoint(keyfile, output, ledger_url) -> None:
    """Write a checkpoint of the verified tree head: origin, size, root and time, signed with --key.

    Publish it anywhere (a git repository, a paper's supplement); later,
    `verify-lineage --against FILE` proves the ledger only grew since.
    """
    from ._checkpoint import Checkpoint, load_signer, sign

    signer = load_signer(keyfile) if keyfile else None
    with _open(ledger_url) as ledger:
        head = ledger.tree_head()
    note = Checkpoint(head.origin, head.size, bytes.fromhex(head.root), utcnow())
    text = sign(note, signer) if signer else note.body()
    if output:
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(text)
        click.echo(f"checkpoint of {head.size} records, root {head.root}, written to {output}", err=True)
    else:
        click.echo(text, nl=False)


@cli.command(name="reset-trust")
@ledger_option
def reset_trust(ledger_url) -> None:
    """Forget the tree head remembered for this ledger (after restoring it from a backup on
    purpose); the next command audits it again."""
    import shutil

    from lineage_ledger.backends import open_backend

    from ._trust import TreeHead, TrustStore

    with open_backend(ledger_url, create=False) as backend:
        directory = TrustStore.directory_for(backend.identity)
    try:
        with open(os.path.join(directory, "head.json"), "rb") as handle:
            old: TreeHead | None = TreeHead.from_json(handle.read())
    except (OSError, ValueError, KeyError, TypeError):
        old = None
    shutil.rmtree(directory, ignore_errors=True)
    if old is None:
        click.echo("nothing was remembered for this ledger", err=True)
    else:
        click.echo(f"forgot the tree head of {old.size} records (root {old.root}) verified on {old.verified}",
                   err=True)


@cli.command()
@ledger_option
def migrate(ledger_url) -> None:
    """Bring a ledger written by an older lineage-ledger to the current layout (once)."""
    from lineage_ledger.backends import open_backend

    with open_backend(ledger_url) as backend:
        changed = backend.migrate() if hasattr(backend, "migrate") else False
    click.echo("migrated" if changed else "already current", err=True)


class _LazyGroup(click.Group):
    """A command group defined in a module imported only when the group is used."""

    def __init__(self, name: str, target: str, help: str) -> None:
        super().__init__(name=name, help=help)
        self._target = target

    def _load(self) -> click.Group:
        import importlib

        module, _, attr = self._target.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as exc:
            raise click.ClickException(f"{self.name} needs {exc.name!r}: pip install 'lineage-ledger[mpi]'") from exc

    def list_commands(self, ctx: click.Context) -> list[str]:
        return self._load().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._load().get_command(ctx, cmd_name)


# Lazy, so that the core never imports mpi4py (or the service) unless the command runs.
cli.add_command(_LazyGroup("baash", "lineage_ledger.backends.baash.cli:baash",
                           "The BAASH MPI ledger service (needs lineage-ledger[mpi])."))
cli.add_command(_LazyGroup("fabric", "lineage_ledger.backends.fabric.cli:fabric",
                           "The Hyperledger Fabric back-end: its endorsed tree head (needs lineage-ledger[fabric])."))


def main() -> None:
    cli(prog_name="lineage-ledger")


def verify_main() -> None:
    _guard(lambda: verify.main(prog_name="verify-lineage", standalone_mode=True))


# Standard exports and the lineage picture (issue 19): their formats load only when they run.
from ._cli_export import export, graph  # noqa: E402

cli.add_command(export)
cli.add_command(graph)
