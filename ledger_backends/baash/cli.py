"""``lineage-ledger baash ...``: run the service (imported only when the command is used)."""

from __future__ import annotations

import json
import logging
import sys

import click

from lineage_ledger._errors import ConfigError, MissingExtra

__all__ = ["baash"]


def _address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise click.BadParameter(f"{value!r} is not HOST:PORT", param_hint="--listen")
    return host or "127.0.0.1", int(port)


@click.group(name="baash")
def baash() -> None:
    """The BAASH ledger service: an MPI job of validators behind a fault-monitoring daemon."""


@baash.command()
@click.option("--ranks", type=click.IntRange(2), default=4, show_default=True, help="MPI ranks (gateway + validators).")
@click.option("--storage", required=True, type=click.Path(file_okay=False), help="Shared-storage ledger directory.")
@click.option("--listen", default="127.0.0.1:7411", show_default=True, help="HOST:PORT for clients (port 0: any).")
@click.option("--f", "faults", type=click.IntRange(0), default=1, show_default=True,
              help="Faulty validators a sub-cluster tolerates: sub-clusters of 3f+1.")
@click.option("--c", "extend", type=click.IntRange(0), default=2, show_default=True,
              help="Idle ranks that may join a sub-cluster when more than half of it fails.")
@click.option("--clusters", type=click.IntRange(1), default=1, show_default=True, help="Clusters (coordinators).")
@click.option("--mode", type=click.Choice(["baash", "pbft", "replicate"]), default="baash", show_default=True,
              help="Consensus: BAASH, or the PBFT / plain-replication baselines of the benchmarks.")
@click.option("--batch-blocks", type=click.IntRange(1), default=64, show_default=True, help="Blocks per round at most.")
@click.option("--batch-time", type=float, default=0.002, show_default=True, help="Seconds a round waits to fill.")
@click.option("--vote-timeout", type=float, default=5.0, show_default=True, help="Seconds before a silent validator fails.")
@click.option("--faulty-voter", type=int, multiple=True, help="Fault injection: this rank votes the opposite.")
@click.option("--silent-voter", type=int, multiple=True, help="Fault injection: this rank never votes.")
@click.option("--restart-delay", type=float, default=0.0, help="Fault injection: wait this long before a restart.")
@click.option("--ready-file", type=click.Path(dir_okay=False), help="Write {host, port, pid} here once serving.")
def serve(ranks, storage, listen, faults, extend, clusters, mode, batch_blocks, batch_time, vote_timeout,
          faulty_voter, silent_voter, restart_delay, ready_file) -> None:
    """Run the daemon and the MPI job until SIGTERM or Ctrl-C."""
    try:
        import mpi4py  # noqa: F401 - the ranks need it; fail here with the hint, not in mpiexec
    except ModuleNotFoundError as exc:
        raise MissingExtra("the BAASH service needs mpi4py and MPICH: pip install 'lineage-ledger[mpi]'") from exc
    from .daemon import Service

    if clusters > ranks:
        raise ConfigError(f"--clusters {clusters} is more than --ranks {ranks}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    host, port = _address(listen)
    rank_args = ["--f", str(faults), "--c", str(extend), "--clusters", str(clusters), "--mode", mode,
                 "--vote-timeout", str(vote_timeout)]
    for rank in faulty_voter:
        rank_args += ["--faulty-voter", str(rank)]
    for rank in silent_voter:
        rank_args += ["--silent-voter", str(rank)]
    service = Service(ranks=ranks, storage=storage, host=host, port=port, rank_args=rank_args,
                      batch_blocks=batch_blocks, batch_time=batch_time, restart_delay=restart_delay)

    def ready(svc) -> None:
        import os

        bound_host, bound_port = svc.address[:2]
        line = json.dumps({"host": bound_host, "port": bound_port, "pid": os.getpid(), "job": svc.monitor.info})
        if ready_file:
            tmp = ready_file + ".tmp"
            with open(tmp, "w") as handle:
                handle.write(line)
            os.replace(tmp, ready_file)
        click.echo(f"BAASH serving baash://{bound_host}:{bound_port} with {svc.monitor.info.get('size')} ranks",
                   err=True)
        sys.stderr.flush()

    service.run_until_signalled(ready)
