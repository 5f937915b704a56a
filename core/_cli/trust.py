"""Commands about trust: ``verify`` (the ``verify-lineage`` command), ``keygen``,
``checkpoint``, ``reset-trust`` and ``migrate``."""

from __future__ import annotations

import contextlib
import os
import sys

import click

from .._canonical import utcnow
from .._errors import CheckpointInvalid, ConfigError, HistoryRewritten, LedgerError, VerificationError
from .._terminal import json_text, printable
from .._verification.verify import verify_against, verify_lineage
from .common import (
    Count,
    GuardedCommand,
    json_option,
    ledger_option,
    open_read_only,
    refuse_not_a_directory,
    refuse_output_over,
)
from .render import report_json, report_lines, unchecked_directories

__all__ = ['checkpoint', 'keygen', 'migrate', 'reset_trust', 'verify']


@click.command(name="verify", cls=GuardedCommand)
@click.argument("targets", nargs=-1)
@click.option("--against", "checkpoint_file", type=click.Path(dir_okay=False),
              help="A checkpoint: exit 0 only if the ledger is an append-only extension of it.")
@click.option("--pubkey", "pubkeys", multiple=True, type=click.Path(dir_okay=False),
              help="A public key the checkpoint must be signed by (repeatable; needs --against).")
@click.option("--quorum", type=Count(1), default=None,
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
        from ..exports._crate_verify import verify_crate_command

        sys.exit(verify_crate_command(crate_path, pubkeys, as_json))
    if quorum is not None and not pubkeys:
        raise click.UsageError("--quorum needs --pubkey (the keys whose signatures count)")
    checkpoint = _read_checkpoint(checkpoint_file, pubkeys, quorum) if checkpoint_file else None
    if checkpoint is not None and not pubkeys:
        click.echo("note: no --pubkey given: the checkpoint's signature is not checked, so it vouches only "
                   "as far as the file itself can be trusted", err=True)
    if pubkeys and not checkpoint_file:
        raise click.UsageError("--pubkey needs --against CHECKPOINT")
    refuse_not_a_directory(targets)
    with open_read_only(ledger_url) as ledger:
        report = verify_lineage(ledger, targets)
        # Whenever the ledger itself verified (report.chain), whatever its targets gave: a
        # rewritten history is said beside a file that fails, not hidden behind it.
        if checkpoint is not None and report.chain is not None:
            try:
                report.against = verify_against(ledger, checkpoint)
            except VerificationError as failure:
                report.fail(failure)
        # An empty directory: not "verified". With the ledger: past the targets a report
        # keeps, a recorded directory is checked whole whether or not it holds a file.
        unchecked = unchecked_directories(report, targets, ledger)
    for entry, reason in report.skipped:  # entries of the trees given that could not be read
        click.echo(f"skipped {printable(os.path.relpath(entry))}: {reason}", err=True)
    if as_json:
        data = report_json(report, unchecked)
        if report.skipped:
            data["skipped"] = [{"path": p, "reason": r} for p, r in report.skipped]
        click.echo(json_text(data, indent=2))
    else:
        click.echo("\n".join(report_lines(report, unchecked)))
    sys.exit(0 if report.ok and not unchecked else 1)



def _read_checkpoint(path: str, pubkeys: tuple[str, ...], quorum: int | None = None):
    from .._log.checkpoint import load_verifiers, parse, signed_by

    try:
        with open(path, "rb") as handle:
            text = handle.read((1 << 16) + 1)  # one byte over the limit: parse refuses it
    except OSError as err:
        raise ConfigError(f"cannot read checkpoint {path}: {err.strerror}") from err
    verifiers = [v for key in pubkeys for v in load_verifiers(key)]
    # Read first as it is laid out, signatures unchecked: a file that is no checkpoint at all
    # (random text, an empty file, a signature line laid out wrong) is bad input, exit 2. Only
    # one that parses can fail a check (a signature that does not verify): exit 1.
    try:
        parse(text)
    except CheckpointInvalid as err:
        raise ConfigError(f"{printable(path)} is not a checkpoint: {err}") from None
    checkpoint = parse(text, verifiers)
    if quorum is not None:
        distinct = len({v.public_key for v in verifiers})  # one key under two names is one key
        if quorum > distinct:
            raise ConfigError(f"--quorum {quorum}: only {distinct} distinct public keys were given")
        signed = signed_by(text, verifiers)
        if len(signed) < quorum:
            names = ", ".join(sorted(v.name for v in signed)) or "none"
            raise CheckpointInvalid(f"{path} is signed by {len(signed)} of the {distinct} keys given ({names}); "
                                    f"--quorum asks for {quorum}")
    return checkpoint



@click.command()
@click.argument("keyfile", type=click.Path(dir_okay=False))
@click.option("--name", help="The key's name in signatures, no spaces or '+' (default: lineage-ledger/USER@HOST).")
def keygen(keyfile, name) -> None:
    """Write an ed25519 key pair for signing checkpoints: KEYFILE (private, 0600) and KEYFILE.pub."""
    import getpass
    import socket

    from .._environment import escaped_text, not_utf8
    from .._log._note_keys import _valid_name
    from .._log.checkpoint import write_keypair

    if keyfile == "-":
        raise click.BadParameter("a key pair is two files, KEYFILE and KEYFILE.pub, which standard output (-) "
                                 "cannot be: give a file name", param_hint="KEYFILE")
    if name == "":  # "--name $NAME" with NAME unset: not the default name, which no --name gives
        raise click.BadParameter("an empty name names no key: give a name (no spaces, no '+'), or no --name for "
                                 "lineage-ledger/USER@HOST", param_hint="--name")
    if name is not None and not_utf8(name):  # a name the user chooses is refused, as run -n's
        raise ConfigError(f"--name: {printable(name)} is not valid UTF-8 text; give a name that is")
    if name is not None and not _valid_name(name):
        # The name as typed: the command line's error handler escapes a line break or an escape
        # sequence in it, once ('lab\x0akey'). The key module's own message quotes it with
        # repr, whose backslashes that escaping doubled ('lab\\nkey').
        raise ConfigError(f"invalid key name '{name}': it must be non-empty, without spaces or '+'")
    if name is None:
        # A user or host name that is not UTF-8 is written in the escape records keep it in
        # (docs/guide.md), as run and adopt do: the key is made, and its name says whose it is.
        user, host = (escaped_text(text) if not_utf8(text) else text
                      for text in (getpass.getuser(), socket.gethostname()))
        name = f"lineage-ledger/{user}@{host}"
        if not _valid_name(name):
            raise ConfigError(f"the default key name '{name}' (from your user and host names) is not a valid "
                              "key name (no spaces or '+'): give one with --name")
    write_keypair(keyfile, name)
    click.echo(f"wrote {keyfile} (private; keep it so) and {keyfile}.pub (give this to verifiers)", err=True)



@click.command()
@click.option("--key", "keyfile", type=click.Path(dir_okay=False), help="Sign with this private key.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write here instead of standard output.")
@ledger_option
def checkpoint(keyfile, output, ledger_url) -> None:
    """Write a checkpoint of the verified tree head: origin, size, root and time, signed with --key.

    Publish it anywhere (a git repository, a paper's supplement); later,
    `verify-lineage --against FILE` proves the ledger only grew since.
    """
    from .._log.checkpoint import checkpoint_text, load_signer

    if output == "":  # "-o $OUT" with OUT unset: not standard output, as no -o would be
        raise ConfigError("-o: an empty path names no file: give a path, or no -o for standard output")
    if keyfile == "":  # "--key $KEY" with KEY unset: not an unsigned checkpoint, as no --key would be
        raise ConfigError("--key: an empty path names no key file: give the private key's path, or no --key "
                          "for an unsigned checkpoint")
    if output:  # never over the ledger it reads, nor over the key pair it signs with
        refuse_output_over(output, ledger_url, *([keyfile, keyfile + ".pub"] if keyfile else []))
    signer = load_signer(keyfile) if keyfile else None
    with open_read_only(ledger_url) as ledger:
        head = ledger.tree_head()
        if output:
            _keep_a_checkpoint_not_extended(output, ledger)
    # Read back as every reader will, before anything is written (checkpoint_text).
    text = checkpoint_text(head.origin, head.size, bytes.fromhex(head.root), utcnow(), signer)
    if output:
        from ..exports._output import open_output

        # A new private file renamed onto OUTPUT: a link planted there is replaced, not
        # followed (tests/test_outside_review_s38.py).
        try:
            with open_output(output) as handle:
                handle.write(text)
        except BrokenPipeError:  # the reader of -o - went away (`| head`): the CLI's guard exits 141
            raise
        except OSError as err:  # a directory that is not there, one this user may not write, a full disk
            raise ConfigError(f"{printable(output)}: {err.strerror}") from err
        shown = "standard output" if output == "-" else printable(output)
        click.echo(f"checkpoint of {head.size} records, root {head.root}, written to {shown}", err=True)
    else:
        click.echo(text, nl=False)



def _keep_a_checkpoint_not_extended(output: str, ledger) -> None:
    """Refuse to replace ``output`` where it holds a checkpoint of another ledger (exit 2) or
    one that ``ledger`` does not extend (``HistoryRewritten``, exit 1): that file is the proof
    of the history it covers, and a checkpoint of a rewritten history was written over it, exit
    0, by an account that had not verified the ledger before, or after ``reset-trust``
    (tests/test_trust_attacks_checkpoint_output.py). One it extends is replaced, as a
    checkpoint kept up to date in one file is; a file that is no checkpoint, as before."""
    import stat

    from .._log.checkpoint import MAX_NOTE_BYTES, parse

    try:
        if output == "-" or not stat.S_ISREG(os.lstat(output).st_mode):
            return  # standard output, a stream; a link is replaced, not followed: its target stays
        with open(output, "rb") as handle:
            old = parse(handle.read(MAX_NOTE_BYTES + 1))
    except (OSError, CheckpointInvalid):
        return  # nothing there, or no checkpoint: what open_output makes of it, as before
    if old.origin != ledger.tree_head().origin:
        raise ConfigError(f"{printable(output)} holds a checkpoint of another ledger ({printable(old.origin)}, "
                          f"{old.size} records): it was kept; write this one elsewhere")
    try:
        verify_against(ledger, old)
    except HistoryRewritten as err:
        raise HistoryRewritten(f"{printable(output)} holds a checkpoint of {old.size} records that this ledger "
                               f"does not extend, and it was kept: {err}. Write this one elsewhere (and remove that "
                               "file by hand only if the ledger was restored on purpose)") from None


@click.command(name="reset-trust")
@ledger_option
def reset_trust(ledger_url) -> None:
    """Forget the tree head remembered for this ledger (after restoring it from a backup on
    purpose); the next command audits it again."""
    from .._environment import others_control, state_root
    from .._ledger.identity import trust_identity_of
    from .._log.trust import TrustStore

    base = state_root()
    # Named without opening the ledger: one deleted on purpose is forgotten too.
    directory = TrustStore.directory_for(trust_identity_of(ledger_url), base)
    try:
        unsafe = others_control(base)
    except FileNotFoundError:
        unsafe = None  # no state root: nothing to delete below
    if unsafe is not None:
        # What is there may be theirs, or (through their link) the account's state kept
        # elsewhere; and nothing kept there is trusted anyway (TrustStore refuses the root).
        raise ConfigError(f"refusing to delete anything in {base}: {unsafe}, so what it holds may be another "
                          "user's, or reached through their link (set LINEAGE_STATE_DIR to a private directory)")
    # The state, and what an audit killed between its two renames left aside (TrustStore puts
    # <directory>.old back when the state has no head: forgetting only the state would have
    # the next command restore the head just forgotten). Under the state's lock, so that an
    # audit swapping a new state in meanwhile neither restores nor adopts over what is removed.
    with _state_lock(directory + ".lock", exists=os.path.isdir(base)):
        forgotten = [head for path in (directory, directory + ".old") for head in _remove_state(path) if head]
    _forget_hint(ledger_url)
    if not forgotten:
        click.echo("nothing was remembered for this ledger", err=True)
    else:
        old = forgotten[0]
        click.echo(f"forgot the tree head of {old.size} records (root {old.root}) verified on {old.verified}",
                   err=True)


def _forget_hint(ledger_url: str) -> None:
    """Remove the hint this account's processes left in the ledger's spool directory (the
    default spool: ``LINEAGE_SPOOL`` or ``.lineage/spool``): the latest time and count they
    saw, of the history before the restore. Left, its time still moved the next tasks' records
    past records that are gone (a record from a fast clock among them; its count was already
    ignored without a remembered head). Best effort: a hint left is read as before."""
    from .._ledger.backlog import _default_spool
    from .._ledger.deferred import _default_url
    from .._ledger.identity import ledger_identity
    from .._ledger.seen import HINT
    from .._ledger.spool import _keyed

    try:
        hint = os.path.join(_keyed(_default_spool(None), ledger_identity(_default_url(ledger_url))[0]), HINT)
        if os.lstat(hint).st_uid == os.getuid():
            os.unlink(hint)
    except (OSError, LedgerError):
        pass


@contextlib.contextmanager
def _state_lock(path: str, exists: bool):
    """The lock beside a state directory (TrustStore.locked's), held; a link or another
    kind of file in its place (in the account's own private root, so the account's own doing
    or a damaged root's) is removed first, the link and not what it names."""
    import fcntl
    import stat

    if not exists:  # no state root: nothing to lock or remove
        yield
        return
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if stat.S_ISLNK(st.st_mode):
            os.unlink(path)
        elif not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            raise ConfigError(f"refusing to reset the trust: the lock {path} is not a file of this user's own; "
                              "nothing was removed (look at it, and remove it by hand if it is yours)")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as err:
        raise ConfigError(f"cannot take the lock {path} to reset the trust: {err.strerror}") from err
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            click.echo(f"waiting for the audit or refresh that holds {path} to finish", err=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _remove_state(directory: str) -> list:
    """Remove ``directory``, a state of this user's own; ``[]`` if there is none, else
    ``[its head or None]``."""
    import shutil
    import stat

    from .._log.trust import TreeHead

    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        return []
    # Only the account's own directory is removed: what else is there was planted while the
    # root was open (or made by hand), and removing it would delete another user's files, or
    # fail on a link (rmtree refuses those) while the head read through it was reported forgotten.
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        found = f"a link to {os.readlink(directory)}" if stat.S_ISLNK(st.st_mode) else "not a directory"
        raise ConfigError(f"refusing to reset the trust: {directory} is {found}, not a directory of this user's "
                          "own; nothing was removed (look at it, and remove it by hand if it is yours)")
    if st.st_uid != os.getuid():
        raise ConfigError(f"refusing to reset the trust: {directory} belongs to uid {st.st_uid}, not to this "
                          "user; nothing was removed (another user may have planted it)")
    try:
        with open(os.path.join(directory, "head.json"), "rb") as handle:
            old: TreeHead | None = TreeHead.from_json(handle.read())
    except (OSError, ValueError, KeyError, TypeError):
        old = None
    # Renamed aside first, then removed: commands read the state without a lock, and one that
    # started while the files went one by one read a head whose nodes were gone ("starts.bin
    # is cut short", exit 2; tests/test_attack_s48.py). Named as an audit's leftover of this
    # state, which the next audit removes should this be killed before the end.
    import tempfile

    parent, name = os.path.split(directory.rstrip(os.sep))
    aside = tempfile.mkdtemp(dir=parent, prefix=f".audit-{name.removesuffix('.old')}-reset-")
    try:
        os.rename(directory, os.path.join(aside, "state"))
        shutil.rmtree(aside)
    except OSError as err:
        raise ConfigError(f"could not remove {directory} to reset the trust: {err}") from err
    return [old]



@click.command()
@ledger_option
def migrate(ledger_url) -> None:
    """Bring a ledger written by an older lineage-ledger to the current layout (once)."""
    from lineage_ledger.backends import open_backend

    from .._errors import NeedsMigration

    # A mistyped path: "no ledger at PATH", nothing created. A ledger of an older schema is
    # what this command is for: the writer below migrates it.
    with contextlib.suppress(NeedsMigration), open_backend(ledger_url, create=False):
        pass
    with open_backend(ledger_url) as backend:
        changed = backend.migrate() if hasattr(backend, "migrate") else False
    click.echo("migrated" if changed else "already current", err=True)



@click.command(name="repair-index")
@ledger_option
def repair_index(ledger_url) -> None:
    """Rebuild the index from the verified records, after verify-lineage reported index rows
    deleted or edited (SQLite and PostgreSQL ledgers); then audit the whole ledger."""
    from lineage_ledger.backends import open_backend

    from .._log.reindex import verified_index

    with open_backend(ledger_url, create=False):  # a mistyped path: "no ledger at PATH", nothing created
        pass
    with open_backend(ledger_url) as backend:
        if not hasattr(backend, "rebuild_index"):
            raise ConfigError(f"{backend.display_url}: repair-index rebuilds the index of SQLite and PostgreSQL "
                              "ledgers only; this back-end keeps its index itself")
        with open_read_only(ledger_url) as ledger:
            remembered = ledger.verifier.store.head  # the head this account verified (None: never)
        checked = _RememberedChain(backend, remembered)
        try:
            done = backend.rebuild_index(lambda stop: verified_index(checked, stop))
        except HistoryRewritten:
            raise  # says itself what happened and what to do; nothing was written
        except VerificationError as err:
            raise type(err)(f"{err} -- the records themselves do not verify, so the index was left as it was: "
                            "restore the ledger from a backup", height=err.height, path=err.path) from err
    click.echo(f"rebuilt the index of {done.records} records ({done.artifacts} artifact rows) from the verified "
               f"records: {done.records_corrected} record rows corrected, {done.artifacts_deleted} artifact rows "
               f"deleted and {done.artifacts_written} written where they differed", err=True)
    # Rows no verified block places are gone for good: say how many, so that a row someone
    # planted (or an append cut short by hand) does not vanish unnoticed.
    click.echo(f"removed {done.records_removed} record rows that no verified block places "
               f"(and {done.artifacts_removed} artifact rows past the chain, {done.blocks_removed} block rows below "
               "height 0)", err=True)
    with open_read_only(ledger_url) as ledger:
        result = ledger.audit()
    click.echo(f"verified: {result.head.size} records, root {result.head.root}", err=True)


class _RememberedChain:
    """The back-end as ``verified_index`` reads it, each block it yields held to the tree head
    this account verified before: the block that head ended on must still be stored with the
    same id (``verified_index`` then checks that its header hashes to it, and the links below
    it, so every record the head covers is the one verified), and no fewer blocks. Checked in
    the rebuild's own write transaction, as it streams: a ledger rewritten or cut short since
    it was verified raises ``HistoryRewritten`` and nothing is written. Before, the index was
    rebuilt from the records stored now, committed, and only the audit after it failed
    (tests/test_trust_attack_index.py): the rows that still told of the old history were
    gone."""

    def __init__(self, backend, head) -> None:
        self._backend = backend
        self._head = head

    def __getattr__(self, name: str):
        return getattr(self._backend, name)

    def block_columns(self, start: int, stop: int):
        head, seen = self._head, start
        for block in self._backend.block_columns(start, stop):
            if head is not None and block.height == head.blocks - 1 and block.id != head.block_id:
                raise HistoryRewritten(
                    f"{self._backend.identity}: block {block.height}, where the tree verified on {head.verified} "
                    f"ended ({head.size} records, root {head.root}), is no longer stored as it was: history was "
                    "rewritten, and repair-index changed nothing. If the ledger was restored on purpose, run "
                    "`lineage-ledger reset-trust`, then repair-index again", height=block.height)
            seen = block.height + 1
            yield block
        if head is not None and seen < head.blocks:
            raise HistoryRewritten(
                f"{self._backend.identity}: the ledger shrank: {head.blocks} blocks ({head.size} records) were "
                f"verified on {head.verified}, {seen} are stored now, and repair-index changed nothing. If it "
                "was restored from a backup on purpose, run `lineage-ledger reset-trust`, then repair-index again",
                height=seen)
