"""What every command shares: the ``--ledger`` and ``--json`` options, the guard that turns
library errors into a message and an exit status, and read-only opening."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import click

from .._errors import LedgerError, VerificationError
from .._ledger.ledger import DEFAULT_URL, Ledger, open_ledger
from .._terminal import printable

__all__ = ["Guarded", "guard", "json_option", "ledger_option", "open_read_only"]


ledger_option = click.option(
    "--ledger", "ledger_url", envvar="LINEAGE_LEDGER_URL", default=DEFAULT_URL, show_default=True,
    help="Ledger URL (sqlite:///path, postgresql://..., memory://) or a path to an SQLite file.",
)

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")



class Guarded(click.Group):
    """Turn library errors into a one-line message and exit status 2 (or 1 for checks)."""

    def invoke(self, ctx: click.Context) -> Any:
        return guard(lambda: super(Guarded, self).invoke(ctx))



def guard(call: Callable[[], Any]) -> Any:
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



def open_read_only(url: str) -> Ledger:
    """For commands that only read: nothing is created, replayed or written to the ledger."""
    return open_ledger(url, read_only=True)

