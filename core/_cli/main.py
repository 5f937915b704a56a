"""The ``lineage-ledger`` and ``verify-lineage`` commands (a thin layer over the library).

Exit status: 0 success or verified, 1 a verification failed, 2 a usage, configuration,
input or back-end error, 130 interrupted (Ctrl-C). ``lineage-ledger run`` exits with its
command's status, or 1 where the command succeeded but the ledger's history was rewritten
since this account verified it (the record waits in the spool).
"""

from __future__ import annotations

import click

from .._closed_output import hold_closed_standard_streams
from .common import Guarded, guard

__all__ = ["cli", "main", "verify_main"]

# Each command's module is imported when the command runs (or --help lists them): a
# process started for one command loads that command's code alone, not the recording,
# reading, trust and export modules together (a CLI start is most of a targeted verify's
# time, and the tests start the CLI thousands of times). Exports and the lineage picture
# load their formats only when run.
_COMMANDS = {
    "run": "recording:run", "adopt": "recording:adopt", "hash": "recording:hash_command",
    "spool": "recording:spool", "log": "reading:log_command", "show": "reading:show",
    "consistency": "reading:consistency", "why": "reading:why", "depends": "reading:depends",
    "verify": "trust:verify", "keygen": "trust:keygen", "checkpoint": "trust:checkpoint",
    "reset-trust": "trust:reset_trust", "migrate": "trust:migrate", "repair-index": "trust:repair_index",
    "export": "export:export", "graph": "export:graph",
}


def _command(target: str) -> click.Command:
    import importlib

    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(f".{module}", __package__), attr)


class _Commands(Guarded):
    """The top group: its own commands imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(_COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in _COMMANDS:
            self.add_command(_command(_COMMANDS[cmd_name]), cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lineage-ledger")
def cli() -> None:
    """A provenance ledger for scientific workflows: record what ran on which bytes, verify it later."""


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
    hold_closed_standard_streams()
    # Guarded here too, not only where a command runs: --help and --version write to a
    # standard output that may be closed before any command is invoked.
    guard(lambda: cli(prog_name="lineage-ledger"))



def verify_main() -> None:
    hold_closed_standard_streams()
    guard(lambda: _command(_COMMANDS["verify"]).main(prog_name="verify-lineage", standalone_mode=True))

