"""What every command shares: the ``--ledger`` and ``--json`` options, the guard that turns
library errors into a message and an exit status, and read-only opening."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterable
from typing import Any

import click

from .._errors import ArtifactError, ConfigError, LedgerError, VerificationError
from .._ledger.ledger import DEFAULT_URL, Ledger, open_ledger
from .._terminal import printable

# The files SQLite keeps beside a ledger: writing over one loses or corrupts committed records.
_SIDE_FILES = ("", "-wal", "-shm", "-journal")

__all__ = ["COUNT_ARGUMENTS", "Count", "Guarded", "GuardedCommand", "Seconds", "guard", "json_option",
           "ledger_option", "open_read_only", "refuse_not_a_directory", "refuse_output_over"]


ledger_option = click.option(
    "--ledger", "ledger_url", envvar="LINEAGE_LEDGER_URL", default=DEFAULT_URL, show_default=True,
    help="Ledger URL (sqlite:///path, postgresql://..., memory://) or a path to an SQLite file.",
)

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")

# The largest integer SQLite and PostgreSQL hold (a signed 64-bit one).
_LARGEST = 2**63 - 1


class Count(click.ParamType):
    """A whole number of at least ``minimum`` (0 or 1) given on the command line: a tree
    size or a listing's limit. Click reads "-1" as an option ("No such option: -1"); a
    command that takes a Count as an argument passes ``context_settings=COUNT_ARGUMENTS``,
    so that "-1" reaches here and is refused for what it is. ``limit``: a number past what
    a database integer holds lists everything (it is no limit), instead of overflowing in
    the driver."""

    name = "integer"

    def __init__(self, minimum: int, *, limit: bool = False) -> None:
        self.minimum = minimum
        self.limit = limit

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        rule = "a non-negative whole number (0 or more)" if self.minimum <= 0 else \
            f"a positive whole number ({self.minimum} or more)"
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            text = str(value).strip()
            if text.startswith("-") and not text[1:].isdecimal():
                # An unknown option that COUNT_ARGUMENTS let through as an argument.
                raise click.NoSuchOption(text, ctx=ctx)
            try:
                number = int(text, 10)
            except ValueError:
                self.fail(f"must be {rule}, got {printable(text)!r}", param, ctx)
            if not text.lstrip("+-").isdecimal():  # int() takes "1_000" too
                self.fail(f"must be {rule}, got {printable(text)!r}", param, ctx)
        if number < self.minimum:
            self.fail(f"must be {rule}, got {number}", param, ctx)
        return min(number, _LARGEST) if self.limit else number


# For a command whose arguments are Counts: an option click does not know ("-1") is handed
# on as an argument, which Count refuses (or names as an unknown option).
COUNT_ARGUMENTS = {"ignore_unknown_options": True}



class Seconds(click.ParamType):
    """A wait in seconds: 0 or more, ``inf`` for no end. Not a number (``nan``) is refused:
    it compared as no number at all and waited for ever or failed deep inside; a wait past
    what the clock functions take (``1e300``) is the longest they do (about 292 years)."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        import math
        import threading

        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if math.isnan(number) or number < 0:
            self.fail(f"{value!r} is not a number of seconds (0 or more; inf for no end)", param, ctx)
        return min(number, threading.TIMEOUT_MAX)


class Guarded(click.Group):
    """Turn library errors into a one-line message and exit status 2 (or 1 for checks)."""

    def invoke(self, ctx: click.Context) -> Any:
        return guard(lambda: super(Guarded, self).invoke(ctx))


class GuardedCommand(click.Command):
    """A command run on its own (``verify-lineage``) guarded as the group's commands are:
    inside click's ``main``, which would otherwise take Ctrl-C for "Aborted!", exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        return guard(lambda: super(GuardedCommand, self).invoke(ctx))



def guard(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except VerificationError as err:
        click.echo(f"verification failed: {printable(str(err))}", err=True)
        sys.exit(1)
    except LedgerError as err:
        click.echo(f"error: {printable(str(err))}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        # Not click's "Aborted!", exit 1: that is "a verification failed" here, and a
        # `verify-lineage || alert` would read Ctrl-C as tampering. 128+SIGINT, as run and shells.
        click.echo("\ninterrupted", err=True)
        sys.exit(128 + signal.SIGINT)
    except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
        raise
    except BrokenPipeError:  # the reader went away (`| head`): nothing more to say to it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(128 + signal.SIGPIPE)  # as a shell reports a writer the pipe ended; 1 is a failed check
    except RecursionError:
        click.echo("error: the lineage is too deep to walk (over ~900 tasks in one chain)", err=True)
        sys.exit(2)
    except Exception as err:  # noqa: BLE001 - exit 1 would claim a verification failed
        if os.environ.get("LINEAGE_DEBUG"):
            raise
        click.echo(f"error: unexpected {type(err).__name__}: {printable(str(err))} (LINEAGE_DEBUG=1 shows where)",
                   err=True)
        sys.exit(2)



def open_read_only(url: str) -> Ledger:
    """For commands that only read: nothing is created, replayed or written to the ledger."""
    if url and url.partition(":")[0].lower() == "memory":
        # Always empty in a process of its own: "verified" would vouch for nothing.
        raise ConfigError(f"{url} keeps records only inside the process that wrote them; a command run on its "
                          "own would find it empty: give the ledger's file or server URL")
    return open_ledger(url, read_only=True)


def refuse_output_over(output: str, ledger_url: str | None, *others: str) -> None:
    """Raise :class:`click.UsageError` (exit 2) when ``output`` is the SQLite ledger that
    ``ledger_url`` names (the default one for None), one of its -wal, -shm or -journal files,
    or one of ``others`` (a key file, a file to export): a read command's ``-o`` (a slip of
    tab completion) must never write over what it reads. Called before anything is written."""
    from urllib.parse import unquote

    from lineage_ledger.backends._sqlite_files import sqlite_file

    guarded: dict[str, str] = {}  # a resolved path -> what it is, for the message
    given = sqlite_file(ledger_url or DEFAULT_URL)  # None: not an SQLite ledger, no file to guard
    if given is not None:
        # As given and percent-decoded (SQLAlchemy reads a URL's path so), followed through
        # links or not (SQLite names its -wal file after the path it was given).
        for path in {given, unquote(given)}:
            for base in {os.path.abspath(path), os.path.realpath(path)}:
                for suffix in _SIDE_FILES:
                    guarded.setdefault(os.path.realpath(base + suffix), f"the ledger's {suffix} file" if suffix else "the ledger")
    for other in others:
        guarded.setdefault(os.path.realpath(other), printable(other))
    target = os.path.realpath(output)
    what = guarded.get(target)
    if what is None:
        what = next((name for path, name in guarded.items() if _same_file(path, target)), None)
    if what is not None:
        raise click.UsageError(f"-o {printable(output)} would write over {what} ({printable(target)}), "
                               "which this command reads: give another path")


def _same_file(one: str, two: str) -> bool:
    """Whether two existing paths are one file (a hard link); False when either is missing."""
    try:
        return os.path.samefile(one, two)
    except OSError:
        return False


def refuse_not_a_directory(paths: Iterable[str]) -> None:
    """Raise :class:`ArtifactError` (exit 2) for a path the OS refuses as ENOTDIR although
    its normal form names something that exists: ``out.txt/``, ``out.txt/.``, ``out.txt/..``.
    Paths are normalised as records name them (``os.path.abspath``), which drops the slash
    and the dots without looking: the answer would be about another file than the one
    named. An empty path is refused too: ``os.path.abspath('')`` is the working directory,
    which a command would record, adopt or check whole. Where the normal form is refused
    too (``out.txt/x``, or a link whose target runs through a file) the command answers as
    for any path that names nothing (it may ask about one a record named when ``out.txt``
    was a directory)."""
    for path in paths:
        if not path:  # "$OUT" with OUT unset: read as the working directory, it was recorded whole
            raise ConfigError("an empty path names no file (a shell variable that is not set?): give a path, "
                              "or '.' for the working directory")
        if _not_a_directory(path):
            normal = os.path.abspath(path)
            if os.path.lexists(normal) and not _not_a_directory(normal):
                raise ArtifactError(path, "not a directory (a '/' follows the name of a file; "
                                          "give the path without it)")


def _not_a_directory(path: str) -> bool:
    try:
        os.stat(path)
    except NotADirectoryError:
        return True
    except (OSError, ValueError):  # missing, unreadable, a NUL in the name: the command says so
        return False
    return False
