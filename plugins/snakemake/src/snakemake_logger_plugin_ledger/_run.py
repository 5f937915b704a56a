"""The second half of ``snakemake-ledger``: Snakemake's own command, run with the ledger logger.

``snakemake-ledger`` (:mod:`.cli`) takes its two flags off the command line and execs this
module (``python -c BOOT snakemake_logger_plugin_ledger._run OPTIONS ARGS...``), which does
what ``snakemake.cli.main`` does (parse the arguments, profiles included, then run them)
with the ledger added to the loggers the user asked for.

Why here and not in the wrapper: the user's loggers (a flag or a profile) are known only once
Snakemake has parsed its arguments, and importing Snakemake's CLI costs about 1.5 s of CPU.
The wrapper used to import it and parse once to learn them, then exec a ``snakemake`` that
imported and parsed it all again: half the CPU of a small run. Here it is done once.

Why the wrapper still execs: a URL with a password given as ``--ledger`` is on the wrapper's
command line, which other local users can read (``ps``) for as long as the process lives; the
exec replaces it at once, before anything slow happens.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

#: The message of a URL setting of the user's own beside a ``--ledger`` URL with a password.
TWO_URLS = ("snakemake-ledger: give the ledger once: --ledger or --logger-ledger-url (a flag or a "
            "profile), not both")


def ledger_flags(snakemake_args: list[str], extra: list[str]) -> list[str]:
    """``extra`` flags placed where Snakemake parses them as flags: before a ``--``, after which
    every word is a target (appended after it they would be taken for targets)."""
    if "--" in snakemake_args:
        at = snakemake_args.index("--")
        return [*snakemake_args[:at], *extra, *snakemake_args[at:]]
    return [*snakemake_args, *extra]


def with_ledger(loggers: Any) -> list[str]:
    """The user's loggers (flag or profile), in their order, and the ledger."""
    return list(dict.fromkeys([*(str(name) for name in loggers or ()), "ledger"]))


def _user_url(args: Any) -> str | None:
    value = getattr(args, "logger_ledger_url", None)
    return value if isinstance(value, str) and value else None  # unset: a dataclasses.MISSING


def run(options: dict[str, Any], snakemake_args: list[str]) -> None:
    """Parse, add the ledger, run: ``snakemake.cli.main`` with one step between."""
    from snakemake import cli

    shown_as = os.path.join(os.path.dirname(cli.__file__), "__main__.py")  # as `python -m snakemake` shows it
    extra: list[str] = []
    if options.get("url") is not None:
        extra += ["--logger-ledger-url", options["url"]]
    if options.get("policy") is not None:
        extra += ["--logger-ledger-policy", options["policy"]]
    argv = ledger_flags(snakemake_args, extra)
    try:
        parser, args = cli.parse_args(argv)
        if options.get("url_in_environment") and _user_url(args) is not None:
            # The plugin reads $LINEAGE_LEDGER_URL only where it has no URL setting of its own.
            print(TWO_URLS, file=sys.stderr)
            sys.exit(2)
        args.logger = with_ledger(args.logger)
        # What Snakemake prints as its "Command:" and keeps in its log and metadata: the
        # command this run amounts to (the password, if any, is in the environment only).
        sys.argv = [shown_as, *ledger_flags(snakemake_args, ["--logger", *args.logger, *extra])]
        success = cli.args_to_api(args, parser)
    except Exception as err:  # noqa: BLE001 - what snakemake.cli.main does with it
        cli.print_exception(err)
        sys.exit(1)
    sys.exit(0 if success else 1)


def main() -> None:
    run(json.loads(sys.argv[1]), sys.argv[2:])


if __name__ == "__main__":
    main()
