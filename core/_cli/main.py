"""The ``lineage-ledger`` and ``verify-lineage`` commands (a thin layer over the library).

Exit status: 0 success or verified, 1 a verification failed, 2 a usage, configuration,
input or back-end error, 130 interrupted (Ctrl-C). ``lineage-ledger run`` exits with its
command's status, or 1 where the command succeeded but the ledger's history was rewritten
since this account verified it (the record waits in the spool).
"""

from __future__ import annotations

import click

from .._closed_output import hold_closed_standard_streams
from . import reading, recording, trust
from .common import Guarded, guard
from .export import export, graph

__all__ = ["cli", "main", "verify_main"]


@click.group(cls=Guarded, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lineage-ledger")
def cli() -> None:
    """A provenance ledger for scientific workflows: record what ran on which bytes, verify it later."""


for command in (recording.run, recording.adopt, recording.hash_command, recording.spool,
                reading.log_command, reading.show, reading.consistency, reading.why, reading.depends,
                trust.verify, trust.keygen, trust.checkpoint, trust.reset_trust, trust.migrate, trust.repair_index,
                export, graph):  # standard exports and the lineage picture load their formats when run
    cli.add_command(command)


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
    guard(lambda: trust.verify.main(prog_name="verify-lineage", standalone_mode=True))

