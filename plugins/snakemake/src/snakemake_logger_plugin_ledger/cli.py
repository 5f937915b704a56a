"""``snakemake-ledger``: ``snakemake`` with ``--ledger URL`` and ``--ledger-policy``.

Snakemake lets a plugin add flags only under its own prefix, so the two short flags live in
this wrapper. It takes every ``snakemake`` argument and runs ``snakemake`` in its place
(``exec``, through :mod:`._run`) with the ledger added to the user's loggers:

    --ledger URL             -> --logger-ledger-url URL (a relative path: this directory);
                                a URL with a password goes in $LINEAGE_LEDGER_URL instead,
                                kept off the command line Snakemake prints and logs
    --ledger-policy POLICY   -> --logger-ledger-policy POLICY  (warn, strict, rerun, off)

The check itself runs inside that ``snakemake`` process, on the DAG Snakemake has just built
and before any job is scheduled (see ``_preflight``): ``warn`` prints the changed files and
runs; ``strict`` refuses, exit status 1, naming every changed file; ``rerun`` forces the jobs
that produce them (for a changed source, the jobs that read it) to run again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from urllib.parse import urlsplit

from ._boot import module_command

#: --ledger-policy's choices (the plugin's ``policy`` setting's)
POLICIES = ("off", "warn", "strict", "rerun")


def split_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Our two flags out of the command line; everything else is Snakemake's."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--ledger", default=None)
    parser.add_argument("--ledger-policy", default=None, choices=POLICIES)
    ours, rest = parser.parse_known_args(list(argv))
    return ours, rest


def absolute_url(url: str | None) -> str | None:
    """A relative ledger path means the invocation directory, not Snakemake's ``--directory``."""
    if url is None:
        return None
    if "://" not in url:
        return os.path.abspath(url)
    if url.startswith("sqlite:///") and not url[len("sqlite:///"):].startswith("/"):
        return "sqlite:///" + os.path.abspath(url[len("sqlite:///"):])
    return url


def has_password(url: str | None) -> bool:
    """Whether ``url`` holds a password (``scheme://user:PASSWORD@host/...``)."""
    if url is None or "://" not in url:
        return False
    try:
        return urlsplit(url).password is not None
    except ValueError:  # a port that is no number: the plugin says what is wrong with it
        return "@" in url.partition("://")[2].partition("/")[0]


def main(argv: Sequence[str] | None = None) -> None:
    ours, snakemake_args = split_args(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in snakemake_args):
        print("usage: snakemake-ledger [--ledger URL] [--ledger-policy {warn,strict,rerun,off}] "
              "[snakemake arguments...]\n\n" + (__doc__ or ""))
        sys.exit(0)
    url = absolute_url(ours.ledger)
    options: dict[str, object] = {"url": url, "policy": ours.ledger_policy}
    if has_password(url):
        # Snakemake prints its command line ("Command: ..." on a dry run) and keeps it in its
        # log: a password put there as --logger-ledger-url is shown to whoever reads either.
        # The plugin reads $LINEAGE_LEDGER_URL where it is given no URL setting, so the URL
        # goes there; a URL setting of the user's own (a flag, a profile) would win over it,
        # and is refused (by _run, once Snakemake has parsed the arguments and profiles).
        os.environ["LINEAGE_LEDGER_URL"] = url  # type: ignore[assignment]
        options = {**options, "url": None, "url_in_environment": True}
    # Exec'd at once: a password on this process's command line is readable (ps) while it
    # lives. Not ``-m snakemake``: it put the workflow's directory first on sys.path, and a
    # json.py planted in a shared project folder ran at start-up (plain `snakemake` imports
    # nothing from there; lineage_ledger._launch, tests/test_attack_s48.py). Snakemake's CLI is
    # imported there only (_run), not here too: it costs about 1.5 s of CPU.
    command = module_command("snakemake_logger_plugin_ledger._run", json.dumps(options), *snakemake_args)
    os.execv(command[0], command)
