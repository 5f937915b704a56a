"""The fault monitor: runs the MPI job under ``mpiexec``, notices when it dies, restarts it.

Failures are seen four ways: a rank's heartbeat connection closes (the kernel closes it
the instant the process dies, so the first one to close names the failed rank, in the
order the kernel saw the hang-ups; see :mod:`.liveness`), a rank's beats stop (hung or stopped), ``mpiexec`` exits (MPICH's
process manager tears the whole job down when one rank dies), or a round is overdue. The
monitor then kills what is left of the job, every rank included, excludes the failed
rank's slot, and starts a job one rank smaller; ranks restore their chains from shared
storage. On one machine there are no spare nodes, so once fewer than ``min_ranks``, or
fewer than a quorum of the ranks' keys, would remain, the excluded slots are taken back
(in a Slurm allocation they would be the replacement nodes): a job of 2 of 4 ranks signed
every new tree head with 2 of the 4 keys, which no client takes as endorsed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import deque
from typing import Any

from lineage_ledger._launch import module_command

from ._launch import YIELD_SETTINGS, keep_output, mpiexec_command, wait_exited
from ._wire import TO_DAEMON, TruncatedFrame, WireError, block_to_wire, receive, send
from .access import bind_unix, peer_uid
from .deadlines import AwakeDeadline, RoundBudget, round_bytes
from .endorse import quorum_of, read_endorsed, save_endorsed, short_of_quorum
from .liveness import Hearing, RankWatch, is_rank_process, process_gone, resident_memory
from .manager import JobDown

__all__ = ["JobMonitor"]

log = logging.getLogger("lineage_ledger.baash")
class JobMonitor:
    def __init__(self, ranks: int, storage: str, rank_args: list[str], *, min_ranks: int = 2,
                 round_timeout: float | None = None, heartbeat_timeout: float = 20.0, restart_delay: float = 0.0,
                 start_timeout: float = 90.0) -> None:
        self.ranks, self.storage, self.rank_args = ranks, storage, rank_args
        self.min_ranks, self.heartbeat_timeout = min_ranks, heartbeat_timeout
        # A round's bound grows with its blocks and bytes (deadlines.py); ``round_timeout``
        # replaces only its fixed part (the protocol's waits), to shorten a test.
        self.round_budget = RoundBudget.for_ranks(rank_args, fixed=round_timeout)
        self.restart_delay = restart_delay  # benchmarks hold the job down to measure storage validation
        # For the ranks to start and connect; then each restores the chain from storage for as
        # long as that takes, while it beats (a fixed limit on both kept a long chain's job down).
        self.launch_timeout = start_timeout
        self.restoring = False
        self.excluded = 0
        self.up = False
        # Set while no rank can write to shared storage: cleared when a job comes up (its
        # gateway persists the rounds it decides), set again once every rank of it is gone.
        # The manager validates from storage only then, or a dying gateway's last write
        # would land after the manager read storage and two blocks would claim one height.
        self.storage_free = threading.Event()
        self.storage_free.set()
        self.info: dict[str, Any] = {}
        self.endorsed: str | None = read_endorsed(storage)  # the last tree head the ranks signed
        self.failures: list[dict[str, Any]] = []
        self.output: deque[str] = deque(maxlen=400)
        self.generation = 0
        self._lock = threading.Lock()          # one request to the gateway at a time
        self._proc: subprocess.Popen[str] | None = None
        self._pump_thread: threading.Thread | None = None
        self.watch = RankWatch()
        self._hung: int | None = None
        self._sock: socket.socket | None = None
        self._stopping = False
        self._stopped = threading.Event()
        self._down_since: float | None = None
        self._last_seen = time.monotonic()
        self._in_round = False
        self._round_lost = False  # a round given up on as unanswered: its failure was in a round
        self._replies: deque[Any] = deque()
        # The control channel: a Unix socket in a fresh 0700 directory, which no other user
        # can enter; a peer of another uid (root aside, who is trusted anyway) is dropped too.
        self._control_dir = tempfile.mkdtemp(prefix="baash-control-")
        self.control = os.path.join(self._control_dir, "control.sock")
        self._listener = bind_unix(self.control)
        self._wake = threading.Event()
        # Rung by stop(): wakes the supervisor waiting for ranks to connect (it looked once a second).
        self._stop_bell, self._stop_ringer = socket.socketpair()
        self._thread = threading.Thread(target=self._supervise, name="baash-monitor", daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, wait: float = 120.0, until: threading.Event | None = None) -> None:
        """Start the job and wait until it is up; return early, the job still starting, once
        ``until`` is set (a SIGTERM while the ranks restore a long chain: stop() ends it)."""
        self._thread.start()
        deadline = time.monotonic() + wait
        interrupted = until or threading.Event()
        while not self.up and (time.monotonic() < deadline or self.restoring):
            if interrupted.wait(0.05):
                return
        if not self.up:
            raise RuntimeError("the MPI job did not start: " + " | ".join(list(self.output)[-8:]))

    def stop(self) -> None:
        """A job that is up is told to stop (no round is in flight: the manager stopped first)
        and mpiexec's exit waited for (10 s, then it is killed); one still starting is killed.
        Every wait here wakes on the event it waits for, none on a tick."""
        self._stopping = True
        self._stopped.set()
        self._wake.set()
        with contextlib.suppress(OSError):
            self._stop_ringer.send(b"\0")
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=15)  # it leaves its loop at once: each of its waits wakes on the stop
        proc = self._proc
        if proc is not None:
            told = False
            with self._lock:
                if self._sock is not None:
                    with contextlib.suppress(OSError):
                        send(self._sock, "stop")
                        told = True
            asked = time.monotonic()
            if told and wait_exited(proc, 10.0):
                log.info("baash: the MPI job stopped (mpiexec exited with status %s %.2f s after it was told to)",
                         proc.returncode, time.monotonic() - asked)
                self._proc = None
                self.storage_free.set()  # every rank is gone: mpiexec waits for its ranks
            else:
                self._kill_job()
        self.up = False
        if self._pump_thread is not None:
            self._pump_thread.join(timeout=2.0)  # the job's last lines, into its log file
        self.watch.close()
        for sock in (self._listener, self._stop_bell, self._stop_ringer):
            sock.close()
        shutil.rmtree(self._control_dir, ignore_errors=True)

    def _launch(self) -> None:
        size = self.ranks - self.excluded
        if size < max(self.min_ranks, quorum_of(self.ranks)):  # fewer could endorse no head
            self.excluded, size = 0, self.ranks
        # Not ``-m``: it put the directory mpiexec starts in first on sys.path (lineage_ledger._launch).
        command = [*mpiexec_command(), "-n", str(size),
                   *module_command("lineage_ledger.backends.baash.rank", "--storage", self.storage,
                                   "--control", self.control, *self.rank_args)]
        self.generation += 1
        env = dict(os.environ)
        for name, value in YIELD_SETTINGS.items():
            env.setdefault(name, value)
        self._proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      start_new_session=True, env=env)
        path = os.path.join(self.storage, "logs", f"mpiexec-{self.generation}.log")
        self._pump_thread = threading.Thread(target=keep_output, args=(self._proc, path, self.output), daemon=True)
        self._pump_thread.start()
        self._listener.settimeout(1.0)  # a guard: the select below says when it is readable
        self.watch.close()  # the last job's connections (and its epoll set), if a launch failed
        self.watch = RankWatch(changed=self._wake)
        deadline = time.monotonic() + self.launch_timeout
        hearing = Hearing()
        while True:  # every rank's heartbeat connection, then the gateway's control connection
            try:
                if self._listener not in select.select([self._listener, self._stop_bell], [], [], 1.0)[0]:
                    raise TimeoutError  # nothing to accept: a second went by, or stop() rang
                sock, _ = self._listener.accept()
            except TimeoutError:
                if self._stopping:
                    raise RuntimeError("the service is stopping") from None
                if self._proc.poll() is not None:
                    raise RuntimeError("mpiexec exited before the gateway rank connected") from None
                # a rank that died: at once
                why = self.watch.start_problem(self.heartbeat_timeout, hearing.tick())
                self.restoring = why is None and len(self.watch.last_beat) >= size
                if why is None and not self.restoring and time.monotonic() > deadline:
                    why = (f"the MPI job did not start within {self.launch_timeout:g} s (--start-timeout): "
                           f"{len(self.watch.last_beat)} of {size} ranks connected")
                if why is not None:
                    raise RuntimeError(why) from None
                continue
            if peer_uid(sock) != os.getuid():
                log.warning("baash: dropped a control connection from uid %d", peer_uid(sock))
                sock.close()
                continue
            sock.settimeout(self.launch_timeout)  # a first message that never comes must not hang us
            try:
                first = receive(sock, TO_DAEMON, limit=1 << 20)
            except WireError as err:
                log.warning("baash: dropped a control connection that sent a malformed first message: %s", err)
                sock.close()
                continue
            sock.settimeout(None)
            if first["kind"] == "rank":
                self.watch.adopt(sock, first)
                continue
            if first["kind"] != "hello":
                log.warning("baash: dropped a control connection that opened with %r", first["kind"])
                sock.close()
                continue
            hello = first
            break
        self.restoring = False
        self._sock = sock
        self.info = {**{k: v for k, v in hello.items() if k != "kind"}, "generation": self.generation, "size": size}
        self._last_seen = time.monotonic()
        threading.Thread(target=self._read, args=(sock,), daemon=True).start()

    def _supervise(self) -> None:
        while not self._stopping:
            started = time.monotonic()
            try:
                self._launch()
                self.storage_free.clear()
                self.up = True
            except (RuntimeError, OSError, EOFError, ConnectionError) as err:
                self.restoring = False
                if not self._stopping:
                    log.error("baash: starting the MPI job failed: %s", err)
                self._kill_job()
                self._stopped.wait(1.0)
                continue
            if self.failures and self.failures[-1].get("restart_seconds") is None:
                down = self._down_since if self._down_since is not None else started
                self.failures[-1]["restart_seconds"] = time.monotonic() - down
                self.failures[-1]["ranks_after"] = self.info["size"]
            self._wait_for_failure()
            if self._stopping:
                break
            self._note_failure()
            if self.restart_delay:
                self._stopped.wait(self.restart_delay)

    def _wait_for_failure(self) -> None:
        proc = self._proc
        assert proc is not None
        self._hung = None
        hearing = Hearing()  # what the daemon could not hear, being off the CPU, is no one's silence
        while not self._stopping:
            if self.watch.ended or proc.poll() is not None or self._sock is None:
                break
            heard_since = hearing.tick()
            self._hung = self.watch.overdue(self.heartbeat_timeout, heard_since)
            if self._hung is not None:
                self.output.append(f"baash monitor: rank {self._hung} stopped beating")
                break
            gateway_silent = time.monotonic() - max(self._last_seen, heard_since)
            if not self._in_round and gateway_silent > self.heartbeat_timeout:
                self.output.append("baash monitor: gateway heartbeat overdue")
                break
            self._wake.wait(0.05)
            self._wake.clear()

    def _note_failure(self) -> None:
        self.up = False
        self._down_since = time.monotonic()
        in_round, self._round_lost = self._in_round or self._round_lost, False
        proc, pump = self._proc, self._pump_thread
        if proc is not None:  # let MPICH's process manager finish its own teardown first
            wait_exited(proc, 2.0)
        # Which rank died is read before the daemon kills the rest: those hang-ups are ours, and
        # a failure no rank caused (a round past its timeout) then names none.
        rank = self.watch.first_dead() if self._hung is None else self._hung
        self._kill_job()
        if pump is not None:
            pump.join(timeout=2.0)
        pids = self.info.get("pids", [])
        tail = list(self.output)[-60:]
        pid = pids[rank] if rank is not None and rank < len(pids) else None
        self.watch.close()
        self.failures.append({"generation": self.generation, "rank": rank, "pid": pid,
                              "in_round": in_round, "at": time.time(), "restart_seconds": None,
                              "output": [line for line in tail if line.strip(" =")][-6:]})
        self.excluded += 1
        log.warning("baash: MPI job generation %d died (rank %s); restarting without it", self.generation, rank)

    def _kill_job(self) -> None:
        """Kill mpiexec and every rank, and wait until none is left: only then may the
        daemon write to shared storage (a surviving gateway would be a second writer)."""
        proc, self._proc = self._proc, None
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # mpiexec (hydra starts ranks in their own sessions)
            except ProcessLookupError:
                pass
            proc.wait()
        ranks = [pid for pid in self.info.get("pids", []) if is_rank_process(pid)]
        for pid in ranks:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while any(not process_gone(pid) for pid in ranks) and time.monotonic() < deadline:
            time.sleep(0.01)
        left = [pid for pid in ranks if not process_gone(pid)]
        if left:  # SIGKILL was delivered; a rank stuck in the kernel can only finish the write it is in
            log.warning("baash: ranks %s were still present 10 s after SIGKILL", left)
        self.storage_free.set()

    def wait_storage_free(self, timeout: float) -> bool:
        """Wait until no rank of the last job can write to shared storage; False on timeout."""
        return self.storage_free.wait(timeout)

    # -- the control connection ------------------------------------------------------------
    def _read(self, sock: socket.socket) -> None:
        try:
            while True:
                message = receive(sock, TO_DAEMON)
                self._last_seen = time.monotonic()
                if message["kind"] in ("result", "ledgers"):
                    self._replies.append(message)
                    self._wake.set()
        except (OSError, ConnectionError, WireError) as err:
            if isinstance(err, WireError) and not isinstance(err, TruncatedFrame):
                log.error("baash: the gateway sent a malformed message (%s); restarting the job", err)
            if self._sock is sock:
                self._sock = None
            self._wake.set()

    def _ask(self, kind: str, timeout: float, **fields: Any) -> dict[str, Any]:
        with self._lock:
            sock = self._sock
            if not self.up or sock is None:
                raise JobDown("the MPI job is not running")
            self._replies = deque()
            self._in_round = True
            try:
                send(sock, kind, **fields)
                # Only the daemon's own time counts: stopped or starved past the bound, it came
                # back to an answer its reader thread had not read yet (or to ranks stopped with
                # it) and restarted a live job. An answer that arrived unread is waited for.
                deadline = AwakeDeadline(timeout)
                while not self._replies:
                    if self._sock is not sock or not self.up:
                        raise JobDown("the MPI job died during the request")
                    if deadline.passed() and not _unread(sock):
                        self.output.append(f"baash monitor: no answer to {kind!r} within its {timeout:.1f} s "
                                           f"({deadline.away:.1f} s off the CPU not counted)")
                        self._round_lost = True  # read by _note_failure once this round has ended
                        self._sock = None  # a hung job: the supervisor restarts it
                        self._wake.set()
                        raise JobDown(f"the MPI job did not answer {kind!r} within {timeout:.1f} s")
                    time.sleep(0.0005)
                return self._replies.popleft()
            except OSError as err:
                raise JobDown(str(err)) from err
            finally:
                self._in_round = False

    def run_round(self, round_id: int, blocks: list[Any], groups: list[tuple[int, int]]) -> tuple[Any, Any]:
        bound = self.round_bound(blocks)
        reply = self._ask("round", bound, round_id=round_id, blocks=[block_to_wire(b) for b in blocks],
                          groups=[list(g) for g in groups])
        if reply["kind"] != "result" or reply["round_id"] != round_id or len(reply["outcomes"]) != len(groups):
            self._sock = None  # out of step with the job: restart it
            self._wake.set()
            raise JobDown("the MPI job answered a round with something else")
        # Only a quorum's note replaces the last (one a rank died before signing made restored ranks endorse nothing).
        short = short_of_quorum(self.storage, reply["checkpoint"]) if reply["checkpoint"] else "no note"
        if short is None:
            self.endorsed = reply["checkpoint"]
            try:
                save_endorsed(self.storage, self.endorsed)
            except OSError as err:
                # The round is committed (storage and every rank hold it): failing it here left the
                # daemon's index behind storage for good. Served from memory; the file keeps an older note.
                log.warning("baash: could not keep the endorsed tree head in %s/checkpoint: %s",
                            self.storage, err)
        elif reply["checkpoint"]:
            log.warning("baash: round %d's tree head is not endorsed (%s); the last endorsed one stays", round_id, short)
        return reply["outcomes"], reply["info"]

    def round_bound(self, blocks: list[Any]) -> float:
        """Seconds the job may take to answer a round of these blocks (deadlines.RoundBudget)."""
        return self.round_budget.seconds(len(blocks), round_bytes(blocks), self.info.get("size", self.ranks))

    def ledgers(self, seconds: float) -> list[dict[str, Any]]:
        """Every rank's report, each verified for ``seconds`` at most: past twice that and a minute, a hung job."""
        reply = self._ask("ledgers", 2 * seconds + 60.0)
        if reply["kind"] != "ledgers":
            raise JobDown("the MPI job answered a ledger request with something else")
        return reply["ledgers"]

    def rank_memory(self) -> list[int | None]:
        """Resident memory of each rank in bytes (None where it cannot be read)."""
        return resident_memory(self.info.get("pids", []))


def _unread(sock: socket.socket) -> bool:
    """Whether the job's connection holds bytes the reader thread has not taken yet."""
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):  # closed meanwhile: the loop sees that next
        return False
