"""``lineage-ledger baash ...``: run the service (imported only when the command is used)."""

from __future__ import annotations

import contextlib
import grp
import json
import logging
import os
import sys
from typing import Any

import click

from lineage_ledger._errors import ConfigError, MissingExtra

__all__ = ["baash"]


def default_socket() -> str:
    """``$XDG_RUNTIME_DIR/lineage-ledger-baash/baash.sock``, else ``/tmp/lineage-ledger-baash-<uid>/...``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = os.path.join(runtime, "lineage-ledger-baash") if runtime else f"/tmp/lineage-ledger-baash-{os.getuid()}"
    return os.path.join(base, "baash.sock")


def _group(value: str | None) -> int | None:
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    try:
        return grp.getgrnam(value).gr_gid
    except KeyError:
        raise click.BadParameter(f"no group named {value!r}", param_hint="--socket-group") from None


class _Seconds(click.ParamType):
    """A wait in seconds that means something here: a finite number, at least 0, or more than
    0 with ``positive``. NaN compared as no number at all (a round that never waited, a vote
    that never timed out), inf waited for ever, a negative wait passed at once, a vote timeout
    of 0 failed every validator before it could answer."""

    name = "seconds"

    def __init__(self, *, positive: bool) -> None:
        self.positive = positive

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        import math

        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        rule = "a finite number of seconds, more than 0" if self.positive else "a finite number of seconds, 0 or more"
        if not math.isfinite(number) or number < 0 or (self.positive and number == 0):
            self.fail(f"{value!r}: give {rule}", param, ctx)
        return number


def _client(ledger: str | None):
    from lineage_ledger.backends import open_backend

    url = ledger or os.environ.get("LINEAGE_LEDGER_URL")
    if not url:
        raise ConfigError("no service given: --ledger baash:///path/to/baash.sock or LINEAGE_LEDGER_URL")
    backend = open_backend(url)
    if not hasattr(backend, "register"):
        raise ConfigError(f"{url} is not a BAASH service")
    return backend


@click.group(name="baash")
def baash() -> None:
    """The BAASH ledger service: an MPI job of validators behind a fault-monitoring daemon."""


@baash.command()
@click.option("--ranks", type=click.IntRange(2), default=4, show_default=True, help="MPI ranks (gateway + validators).")
@click.option("--storage", required=True, type=click.Path(file_okay=False), help="Shared-storage ledger directory.")
@click.option("--socket", "socket_path", type=click.Path(dir_okay=False),
              help="Unix socket for clients, in a directory the service makes 0700 (0710 with --socket-group). "
                   "Default: $XDG_RUNTIME_DIR/lineage-ledger-baash/baash.sock, else "
                   "/tmp/lineage-ledger-baash-<uid>/baash.sock.")
@click.option("--socket-group", help="Group whose members may reach the socket (the allow-list still decides).")
@click.option("--allow", multiple=True, metavar="USER:ROLE[,ROLE]",
              help="Put USER (name or uid) on the allow-list with roles admin, provider, user; repeatable. "
                   "The service's own user is admin,provider unless named here.")
@click.option("--f", "faults", type=click.IntRange(0), default=1, show_default=True,
              help="Faulty validators a sub-cluster tolerates: sub-clusters of 3f+1.")
@click.option("--c", "extend", type=click.IntRange(0), default=2, show_default=True,
              help="Idle ranks that may join a sub-cluster when more than half of it fails.")
@click.option("--clusters", type=click.IntRange(1), default=1, show_default=True, help="Clusters (coordinators).")
@click.option("--mode", type=click.Choice(["baash", "pbft", "replicate"]), default="baash", show_default=True,
              help="Consensus: BAASH, or the PBFT / plain-replication baselines of the benchmarks.")
@click.option("--batch-blocks", type=click.IntRange(1), default=64, show_default=True, help="Blocks per round at most.")
@click.option("--batch-time", type=_Seconds(positive=False), default=0.002, show_default=True, help="Seconds a round waits to fill.")
@click.option("--vote-timeout", type=_Seconds(positive=True), default=5.0, show_default=True, help="Seconds before a silent validator fails.")
@click.option("--faulty-voter", type=click.IntRange(0), multiple=True, help="Fault injection: this rank votes the opposite.")
@click.option("--silent-voter", type=click.IntRange(0), multiple=True, help="Fault injection: this rank never votes.")
@click.option("--lying-signer", type=click.IntRange(0), multiple=True,
              help="Fault injection: this rank reports the tree head it holds but signs another.")
@click.option("--stalled-round", type=click.IntRange(1), multiple=True,
              help="Fault injection: the gateway takes round N (1: the service's first) and never answers it, "
                   "its heartbeats going on, as if wedged in MPI or on hung storage.")
@click.option("--restart-delay", type=_Seconds(positive=False), default=0.0, help="Fault injection: wait this long before a restart.")
@click.option("--ready-file", type=click.Path(dir_okay=False), help="Write {url, socket, pid} here once serving.")
@click.option("--listen", metavar="[HOST:]PORT",
              help="Also take clients of other nodes over TCP, with mutual TLS only (needs --tls-ca, --tls-cert, "
                   "--tls-key). Without HOST: loopback (127.0.0.1). Port 0 picks a free port.")
@click.option("--tls-ca", type=click.Path(dir_okay=False), help="CA (PEM) whose client certificates are admitted.")
@click.option("--tls-cert", type=click.Path(dir_okay=False), help="The service's certificate (PEM), for --listen.")
@click.option("--tls-key", type=click.Path(dir_okay=False), help="The service's private key (PEM), for --listen.")
@click.option("--max-connections", type=click.IntRange(1), default=1024, show_default=True,
              help="Client connections held at once, in all (fewer if ulimit -n does not fit them).")
@click.option("--max-client-connections", type=click.IntRange(1), default=256, show_default=True,
              help="Client connections one client (a uid, a certificate, a host mid-handshake) may hold at once; "
                   "past that it is answered 'unavailable' and its records wait in its spool.")
@click.option("--idle-timeout", type=_Seconds(positive=True), default=120.0, show_default=True,
              help="Seconds a client connection may go without sending a request (and a request over 64 KiB "
                   "may take to arrive) before it is closed; the client opens another when it next calls.")
@click.option("--send-timeout", type=_Seconds(positive=True), default=120.0, show_default=True,
              help="Seconds a client may take to read an answer before its connection is closed.")
@click.option("--ledgers-timeout", type=_Seconds(positive=True), default=10.0, show_default=True,
              help="Seconds every rank may verify its chain for one 'ledgers' request; past that the request is "
                   "answered 'unavailable' with how far each got, and the next goes on from there.")
@click.option("--start-timeout", type=_Seconds(positive=True), default=90.0, show_default=True,
              help="Seconds the MPI job's ranks may take to start and connect; each then restores the chain "
                   "from storage for as long as that takes, while it beats.")
@click.option("--heartbeat-timeout", type=_Seconds(positive=True), default=20.0, show_default=True,
              help="Seconds a rank may go without a heartbeat (one each 0.5 s) while the daemon runs before it "
                   "is taken for hung and the job restarted without it.")
def serve(ranks, storage, socket_path, socket_group, allow, faults, extend, clusters, mode, batch_blocks, batch_time, vote_timeout,
          faulty_voter, silent_voter, lying_signer, stalled_round, restart_delay, ready_file, listen, tls_ca, tls_cert, tls_key,
          max_connections, max_client_connections, idle_timeout, send_timeout, ledgers_timeout,
          start_timeout, heartbeat_timeout) -> None:
    """Run the daemon and the MPI job until SIGTERM or Ctrl-C."""
    if heartbeat_timeout < 2:  # four beats: less would take a rank for hung between two of them
        raise click.BadParameter(f"{heartbeat_timeout:g} s: give 2 s or more (a rank beats every 0.5 s)",
                                 param_hint="'--heartbeat-timeout'")
    for option, given in (("--faulty-voter", faulty_voter), ("--silent-voter", silent_voter),
                          ("--lying-signer", lying_signer)):
        for rank in given:
            if rank >= ranks:  # a fault injected into no rank: the run would test nothing
                raise click.BadParameter(f"rank {rank} is not one of the --ranks {ranks} (0 to {ranks - 1})",
                                         param_hint=f"'{option}'")
    try:
        import mpi4py  # noqa: F401 - the ranks need it; fail here with the hint, not in mpiexec
    except ModuleNotFoundError as exc:
        raise MissingExtra("the BAASH service needs mpi4py and MPICH: pip install 'lineage-ledger[mpi]'") from exc
    from .daemon import Service

    if clusters > ranks:
        raise ConfigError(f"--clusters {clusters} is more than --ranks {ranks}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from .access import parse_allow

    socket_path = os.path.abspath(socket_path or default_socket())
    allowed = parse_allow(allow)
    rank_args = ["--f", str(faults), "--c", str(extend), "--clusters", str(clusters), "--mode", mode,
                 "--vote-timeout", str(vote_timeout)]
    for rank in faulty_voter:
        rank_args += ["--faulty-voter", str(rank)]
    for rank in silent_voter:
        rank_args += ["--silent-voter", str(rank)]
    for rank in lying_signer:
        rank_args += ["--lying-signer", str(rank)]
    for number in stalled_round:
        rank_args += ["--stalled-round", str(number)]
    service = Service(ranks=ranks, storage=storage, socket_path=socket_path, socket_group=_group(socket_group),
                      allow=allowed, rank_args=rank_args, tls=_tls(listen, tls_ca, tls_cert, tls_key),
                      batch_blocks=batch_blocks, batch_time=batch_time, restart_delay=restart_delay,
                      max_connections=max_connections, max_client_connections=max_client_connections,
                      idle_timeout=idle_timeout, send_timeout=send_timeout, ledgers_timeout=ledgers_timeout,
                      start_timeout=start_timeout, heartbeat_timeout=heartbeat_timeout)

    def ready(svc) -> None:
        line = json.dumps({"url": svc.url, "socket": svc.socket_path, "pid": os.getpid(), "job": svc.monitor.info,
                           "tls": None if svc.tls is None else svc.tls.endpoint})
        if ready_file:
            tmp = f"{ready_file}.{os.getpid()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(line)
            os.replace(tmp, ready_file)
        click.echo(f"BAASH serving {svc.url} with {svc.monitor.info.get('size')} ranks", err=True)
        sys.stderr.flush()

    service.run_until_signalled(ready)
    # Stopped: the job has ended, the sockets are closed, and what the service keeps is in
    # shared storage (fsync'd at each round). Freeing the daemon's objects one by one at
    # exit (its read index and every module) took 70-150 ms of each stop, after all that.
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or broken stream: nothing to keep
            stream.flush()
    os._exit(0)


def _tls(listen: str | None, ca: str | None, cert: str | None, key: str | None):
    """(host, port, server context) for --listen, which never goes without mutual TLS."""
    given = {"--tls-ca": ca, "--tls-cert": cert, "--tls-key": key}
    if listen is None:
        if any(given.values()):
            raise ConfigError("--tls-ca, --tls-cert and --tls-key are for --listen, which was not given")
        return None
    missing = [name for name, value in given.items() if not value]
    if missing or ca is None or cert is None or key is None:
        raise ConfigError(f"--listen takes TCP clients only with mutual TLS: give {', '.join(missing)} too "
                          f"(a CA, and the service's certificate and key; see docs/baash.md)")
    from .tls import parse_listen, server_context

    host, port = parse_listen(listen)
    return host, port, server_context(ca, cert, key)


_LEDGER = click.option("--ledger", help="The service: baash:///path/to/baash.sock (default: $LINEAGE_LEDGER_URL).")


@baash.command()
@_LEDGER
@click.argument("user")
@click.argument("roles", nargs=-1, required=True, type=click.Choice(["admin", "provider", "user"]))
def register(ledger, user, roles) -> None:
    """Give USER (a name or a uid) ROLES on the service's allow-list (needs the admin role)."""
    from .access import resolve_user

    uid = resolve_user(user)
    granted = _client(ledger).register(uid, roles)
    click.echo(f"uid {uid}: {','.join(granted)}")


@baash.command()
@_LEDGER
@click.argument("user")
def revoke(ledger, user) -> None:
    """Take every role from USER (needs the admin role)."""
    from .access import resolve_user

    uid = resolve_user(user)
    _client(ledger).revoke(uid)
    click.echo(f"uid {uid}: no roles")


@baash.command()
@_LEDGER
def whoami(ledger) -> None:
    """The uid the service sees for you, and your roles there."""
    identity = _client(ledger).whoami()
    from lineage_ledger._terminal import printable  # a certificate's subject is someone else's text

    who = f"certificate {printable(identity['subject'])}" if identity["subject"] is not None else f"uid {identity['uid']}"
    click.echo(f"{who}: {','.join(identity['roles']) or 'no roles'}")


@baash.command()
@_LEDGER
@click.option("--keys", "keys_file", required=True, type=click.Path(dir_okay=False),
              help="The ranks' public keys, one a line (the service writes them to DIR/keys/ranks.pub).")
@click.option("--quorum", type=click.IntRange(1), help="Signatures needed (default: more than two thirds of the keys).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the checkpoint here, not to standard output.")
def checkpoint(ledger, keys_file, quorum, output) -> None:
    """The last tree head the service's ranks endorsed, checked against KEYS: exit 0 and the
    signed note if a quorum of them signed it, exit 1 if not.

    The note works with `verify-lineage --against FILE --pubkey RANK.pub`.
    """
    from lineage_ledger._errors import CheckpointInvalid
    from lineage_ledger._log.checkpoint import load_verifiers

    from .endorse import quorum_of, verify_endorsed

    # The core's reader: it refuses a list another user (the service's account) could have
    # written (tests/test_trust_attacks_pubkey.py); BAASH's own reads the service's storage.
    verifiers = load_verifiers(keys_file)
    if quorum is not None and quorum > len(verifiers):
        raise ConfigError(f"--quorum {quorum} is more than the {len(verifiers)} keys in {keys_file}")
    note = _client(ledger).checkpoint()["note"]
    if note is None:
        raise CheckpointInvalid("the service has no endorsed tree head yet: its ranks sign after a commit")
    endorsed = verify_endorsed(note, verifiers, quorum)
    if output:
        from lineage_ledger.exports._output import open_output  # never through a link planted at -o

        with open_output(output) as handle:
            handle.write(note)
        click.echo(f"tree head of {endorsed.size} records, root {endorsed.root.hex()}, endorsed by a quorum of "
                   f"{quorum or quorum_of(len(verifiers))} of {len(verifiers)} ranks; "
                   f"written to {output}", err=True)
    else:
        click.echo(note, nl=False)
