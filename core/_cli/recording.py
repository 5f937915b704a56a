"""Commands that record: ``run``, ``adopt``, ``hash`` (what a record would say of files),
and the ``spool`` group (records journaled locally and not yet in the ledger)."""

from __future__ import annotations

import os
import sqlite3
import sys

import click
from click.core import ParameterSource

from .._canonical import canonical_bytes, utcnow
from .._environment import escape_fields, not_utf8
from .._errors import ConfigError, NoLedger, SpoolError, VerificationError
from .._files.hashing import Hasher, StatCache, hash_file, normalize_path, walk_files
from .._ledger.ledger import open_ledger
from .._model import Artifact, digest_hex
from .._terminal import json_text, printable
from .common import Seconds, json_option, ledger_option, refuse_not_a_directory

__all__ = ['adopt', 'hash_command', 'run', 'spool']


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
    # The command line as the record keeps it (escaped where it is not UTF-8: see run.py).
    line = {"argv": list(command)}
    escape_fields(line, ("argv",))
    return digest_hex(canonical_bytes({"argv": line["argv"], "files": scripts}))



@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("-i", "--input", "inputs", multiple=True, help="A file the command reads (repeatable).")
@click.option("-o", "--output", "outputs", multiple=True, help="A file the command writes (repeatable).")
@click.option("-n", "--name", help="Task name (default: the program's name).")
@click.option("--run-id", envvar="LINEAGE_RUN_ID", help="Group tasks of one workflow run.")
@click.option("-p", "--param", "params", multiple=True, help="A parameter KEY=VALUE to record.")
@click.option("--ship-wait", "wait", type=Seconds(), default=2.0, show_default=True,
              envvar="LINEAGE_SHIP_WAIT",
              help="Seconds to wait for the ledger to take the record; after that it waits in the spool.")
@ledger_option
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(inputs, outputs, name, run_id, params, wait, ledger_url, command) -> None:
    """Hash the inputs, run COMMAND, hash the outputs, record it all.

    The record is made durable in the local spool first; a locked or unreachable ledger
    leaves it there (see `lineage-ledger spool`). SIGINT, SIGTERM and SIGHUP are passed on
    to COMMAND. Exit status: COMMAND's, 128+N if a signal N ended or interrupted it, 2 if
    nothing ran (bad configuration or input, a spool that cannot be written), 1 if COMMAND
    succeeded but the ledger refused the record for good (permission denied, read-only, a
    schema this version does not write) or its history was rewritten since it was verified
    here (see `lineage-ledger reset-trust`); the record stays in the spool either way, for
    `lineage-ledger spool ship`. A record the spool cannot take when COMMAND ends (its disk
    filled meanwhile) is appended to the ledger itself; 1 too if the ledger does not take it.

    \b
    Example:
      lineage-ledger run -i data/raw.csv -o data/clean.csv -- python clean.py data/raw.csv
    """
    from .run import run_and_record

    refuse_not_a_directory([*inputs, *outputs])  # before anything runs
    # A name the user gives the task or run is what queries name it by: one that is not
    # UTF-8 is refused before the command runs (retyped, it is), never changed.
    for option, given in (("--name", name), ("--run-id (or LINEAGE_RUN_ID)", run_id)):
        if given == "":  # "--run-id $RUN" with RUN unset: never a run of its own (an empty variable is unset)
            raise ConfigError(f"{option.split()[0]}: an empty name names nothing: give one, or leave the option "
                              "out (the program's name, a run of its own)")
        if given is not None and not_utf8(given):
            raise ConfigError(f"{option}: {printable(given)} is not valid UTF-8 text; give a name that is")
    parameters = _parse_params(params)
    try:
        canonical_bytes(parameters)  # refuse unrecordable parameters before anything runs
    except ValueError as err:
        raise ConfigError(f"--param: {err}") from err
    sys.exit(run_and_record(command, inputs=inputs, outputs=outputs, name=name, run_id=run_id,
                            parameters=parameters, ledger_url=ledger_url, wait=wait, code_digest=_code_digest))



@click.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--note", help="Why the change is accepted (kept in the record).")
@ledger_option
def adopt(paths, note, ledger_url) -> None:
    """Accept the current content of PATHS (files or directories) as a new recorded version.

    Records who adopted what, when and why, so that `strict` pre-run checks accept the
    files from then on, a later edit is still caught, and `why PATH` shows the adoption.
    """
    from lineage_ledger.backends import open_backend

    from .adopt import adopt as adopt_paths

    refuse_not_a_directory(paths)
    if note is not None and not_utf8(note):
        raise ConfigError(f"--note: {printable(note)} is not valid UTF-8 text; give a note that is")
    try:
        with open_backend(ledger_url, create=False):
            pass
    except NoLedger:
        # None there yet (a mistyped path, often): the paths are hashed before it is created,
        # so that one that cannot be leaves nothing behind. Adopting into a new ledger is a
        # write like any other.
        for path in paths:
            hash_file(path)
    with open_ledger(ledger_url, replay=False) as ledger:
        # The consistency check with the tree head verified here comes before anything is
        # written: what waits in the spool is not shipped into a rewritten history (exit 1).
        ledger.tree_head()
        ledger.replay_spool()
        entry, previous = adopt_paths(ledger, paths, note)
    for path, digest in previous.items():
        now = entry.record.outputs[path]["blake3"]
        before = "no record named it" if digest is None else (
            "unchanged" if digest == now else f"was {digest[:12]}")
        click.echo(f"adopted {printable(os.path.relpath(path))} {now[:12]} ({before})")
    click.echo(f"recorded {entry.id[:12]} (adopt by {printable(entry.record.extra['adopted_by'])})", err=True)



@click.command(name="hash")
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
    refuse_not_a_directory(paths)
    if cache_path == "":  # "--cache $CACHE" with CACHE unset: a path, not the cache left out
        raise ConfigError("--cache: an empty path names no file: give the cache's path, or no --cache for "
                          "the default one (--rehash to read every file again)")
    if click.get_current_context().get_parameter_source("cache_path") is not ParameterSource.DEFAULT:
        # A slip (``--cache data.csv``, ``--cache .lineage/ledger.db``) would have the file
        # moved aside as a damaged cache, or a table added to the database: refused, untouched.
        from .._files.statcache import not_a_cache

        reason = not_a_cache(cache_path)
        if reason is not None:
            raise click.BadParameter(f"{printable(cache_path)} {reason}: give a new file, or the cache's own",
                                     param_hint="--cache")
    files: list[str] = []

    def skipped(entry: str, reason: str) -> None:
        click.echo(f"skipped {printable(os.path.relpath(entry))}: {reason}", err=True)

    for path in paths:
        normal = normalize_path(path)
        files.extend(walk_files(normal, on_skip=skipped) if os.path.isdir(normal) and not as_dirs else [normal])
    hasher = Hasher(_stat_cache(cache_path), rehash=rehash)
    artifacts = [hasher.hash(f) for f in files] if as_dirs else _hash_with_progress(hasher, files)
    if as_dirs:
        if hasher.cache is not None:
            hasher.cache.save()
    for artifact in artifacts:
        if as_json:
            kind = {"type": "dir"} if artifact.is_dir else {}
            click.echo(json_text({"path": artifact.path, "blake3": artifact.blake3, "size": artifact.size, **kind}))
        else:
            shown = printable(os.path.relpath(artifact.path)) + ("/" if artifact.is_dir else "")
            click.echo(f"{artifact.blake3}  {artifact.size:>12}  {shown}")



class _SparedCache(StatCache):
    """The stat cache, whose save never fails a command: it is disposable."""

    def save(self) -> None:
        try:
            super().save()
        except (OSError, sqlite3.Error) as err:
            _not_using(self.path, err)


def _stat_cache(path: str) -> StatCache | None:
    """The stat cache at ``path``, or None (with a warning) where it cannot be opened: a project
    copied read-only (an archive, a colleague's folder), a full disk. Its files are hashed
    without it; ``hash`` exited 2, "unexpected OSError: Read-only file system", and printed no
    digest."""
    try:
        return _SparedCache(path)
    except (OSError, sqlite3.Error) as err:
        _not_using(path, err)
        return None


def _not_using(path: str, err: BaseException) -> None:
    reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    click.echo(f"warning: not using the stat cache {printable(path)}: {printable(reason)}; files are hashed "
               "without it", err=True)


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



def _a_spool(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    # "--spool $SPOOL" with SPOOL unset: the default spool was shown or shipped instead, silently.
    if value == "":
        raise click.BadParameter("an empty path names no spool (a shell variable that is not set?)")
    return value


spool_option = click.option(
    "--spool", "spool_root", envvar="LINEAGE_SPOOL", default=".lineage/spool", show_default=True,
    callback=_a_spool, help="The spool directory (records journaled here and not yet in a ledger).",
)



@click.group()
def spool() -> None:
    """Records journaled in the local spool and not yet in the ledger."""



@spool.command(name="status")
@spool_option
@json_option
def spool_status(spool_root, as_json) -> None:
    """Show what waits in the spool, per ledger: how many records, and the oldest one's age."""
    from .._ledger.deferred import backlog

    now = utcnow()
    found = [entry for entry in backlog(spool_root) if entry.records or entry.quarantined or entry.refused]
    if as_json:
        click.echo(json_text([entry.to_json(now) for entry in found], indent=2))
        return
    if not found:
        click.echo("nothing waits in the spool")
    for entry in found:
        line = f"{entry.records} record(s) wait for {printable(entry.url)}{_kinds(entry.tasks, entry.manifests)}"
        if entry.oldest is not None:
            line += f", the oldest ended {_age(now, entry.oldest)} ago"
        if entry.live:
            line += (f"; {entry.live} of them{_kinds(entry.live_tasks, entry.live_manifests)} held by running "
                     "processes, which ship them")
        if entry.refused:
            line += (f"; {entry.refused} file(s) that replay leaves alone in {printable(entry.directory)} (another "
                     "user's, a link, or writable by others: `lineage-ledger spool ship` says which and why)")
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
@click.option("--timeout", type=Seconds(), default=60.0, show_default=True,
              help="Seconds to wait for the ledger to take the records.")
def spool_ship(ledger_url, spool_root, timeout) -> None:
    """Ship the records waiting in the spool for the ledger. Exit 0 when all are in it, 2 if
    the ledger did not take them for now (locked, busy, unreachable: try again later), 1 if
    it refused them for good (permission denied, read-only, a schema this version does not
    write) or its history was rewritten since it was verified here (see `lineage-ledger
    reset-trust`). They keep waiting in the spool in every case."""
    from lineage_ledger.backends import open_backend

    from .._ledger.backlog import backlog_of
    from .._ledger.deferred import WaitingInSpool, ledger_identity, ship, waiting_for

    root = os.path.abspath(spool_root)
    if os.path.exists(root) and not os.path.isdir(root):  # as `spool status` says: not "shipped 0"
        raise SpoolError(f"cannot read the spool {printable(root)}: Not a directory")
    if not waiting_for(spool_root, ledger_identity(ledger_url)[0], ())[0]:
        # Nothing to ship: a mistyped or zero-byte ledger path is "no ledger at PATH", as for
        # the read commands, never a new empty ledger. Records waiting do create it: shipping
        # is the write path of a spool-first run.
        with open_backend(ledger_url, create=False):
            pass
    try:
        shipped, left = ship(ledger_url, spool=spool_root, timeout=timeout)
    except WaitingInSpool as err:
        if err.permanent is not None:
            # Refused for good (permission denied, read-only, another schema): another try
            # later fails the same way until someone changes the ledger or this account's rights.
            click.echo(f"error: the ledger refused the records: {printable(str(err))}", err=True)
            click.echo(f"{err.permanent}, and waiting will not change that: {err.left.records} record(s) stay, "
                       f"safe, in the spool {printable(err.left.directory)}{_kinds(err.left.tasks, err.left.manifests)};"
                       " once the ledger may be written, "
                       "`lineage-ledger spool ship` ships them", err=True)
            sys.exit(1)
        click.echo(f"error: {printable(str(err))}; {err.left.records} record(s) wait in the spool "
                   f"{printable(err.left.directory)}{_kinds(err.left.tasks, err.left.manifests)}", err=True)
        sys.exit(2)
    except VerificationError as err:  # its history was rewritten since it was verified here
        click.echo(f"verification failed: {printable(str(err))}", err=True)
        left = backlog_of(spool_root, ledger_identity(ledger_url)[0])
        click.echo(f"nothing was shipped: {left.records} record(s) wait in the spool{_kinds(left.tasks, left.manifests)}",
                   err=True)
        sys.exit(1)
    click.echo(f"shipped {shipped} record(s){_kinds(shipped.tasks, shipped.manifests)}", err=True)
    if left.live:
        click.echo(f"{left.live} record(s){_kinds(left.live_tasks, left.live_manifests)} are held by running "
                   "processes, which ship them", err=True)
    waiting = left.records - left.live
    if waiting:
        click.echo(f"error: {waiting} record(s) still wait in the spool {printable(left.directory)}"
                   f"{_kinds(left.tasks - left.live_tasks, left.manifests - left.live_manifests)}", err=True)
        sys.exit(2)


def _kinds(tasks: int, manifests: int) -> str:
    from .._ledger.backlog import kinds_text

    return kinds_text(tasks, manifests)
