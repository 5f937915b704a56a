"""Per-rank heartbeats: each rank holds a socket to the daemon and beats on it.

The kernel closes a process's sockets the moment it dies, ``kill -9`` included, so the
first rank whose connection hung up is the one that failed: MPICH's process manager only
tears the other ranks down after it has noticed that death itself. A rank whose beats stop
while its connection stays open is hung; the monitor treats it as failed.

*Which* connection hung up first must come from the kernel, not from when a thread of the
daemon got to run: a daemon that is off the CPU for a few milliseconds (a loaded machine)
finds every connection closed at once, and its reader threads then run in any order
(issue 18: the wrong rank named for one kill in ten under load). So every connection is
also registered, for hang-ups only (``EPOLLRDHUP``, not ``EPOLLIN``: beats do not wake it),
in one epoll set. The kernel appends a file to the set's ready list when its event
happens, and ``epoll_wait`` returns the list in that order, however late it is called;
``EPOLLONESHOT`` reports each hang-up once, so the order is kept across calls.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ._wire import TO_DAEMON, WireError, receive, send

__all__ = ["Hearing", "RankWatch", "beat_forever", "is_rank_process", "process_gone", "resident_memory"]

BEAT_EVERY = 0.5
#: The daemon looks at its ranks every 0.05 s (about 1 s while a job starts): a look later
#: than this means the daemon itself was off the CPU (a loaded machine, Ctrl-Z, a paused VM).
OFF_CPU_GAP = 3.0


def beat_forever(control: str, rank: int, pid: int) -> threading.Thread:
    """In a rank: connect to the daemon and beat from a thread that never touches MPI."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(control)
    send(sock, "rank", rank=rank, pid=pid)

    def run() -> None:
        try:
            while True:
                time.sleep(BEAT_EVERY)
                send(sock, "beat")
        except OSError:
            # The daemon is gone: nobody can restart or stop this job, so leave now
            # rather than linger as an orphan that still holds the shared storage.
            os._exit(4)

    thread = threading.Thread(target=run, name="baash-heartbeat", daemon=True)
    thread.start()
    return thread


class Hearing:
    """Since when the daemon has been listening without a break.

    A silence is a rank's only while the daemon could hear it. A daemon off the CPU past the
    heartbeat timeout came back to beats queued unread on every connection (or to ranks that
    were off the CPU too and had not run yet), and took a live job for hung: it killed it,
    restarted it and logged a rank failure that never happened. Silence is counted from the
    later of a rank's last beat and the end of the daemon's last break (``since``)."""

    def __init__(self) -> None:
        self.since = self._last = time.monotonic()

    def tick(self) -> float:
        """Called at each look at the ranks; returns ``since``."""
        now = time.monotonic()
        if now - self._last > OFF_CPU_GAP:
            self.since = now
        self._last = now
        return self.since


@dataclass
class RankWatch:
    """The daemon's view of one job's ranks: last beat and time of death per rank."""

    last_beat: dict[int, float] = field(default_factory=dict)
    ended: dict[int, int] = field(default_factory=dict)  # rank -> monotonic_ns its reader saw EOF
    sockets: list[socket.socket] = field(default_factory=list)
    changed: threading.Event = field(default_factory=threading.Event)
    hangups: list[int] = field(default_factory=list)  # ranks in the kernel's order of hang-up
    _ranks_by_fd: dict[int, int] = field(default_factory=dict)
    _hangup_set: Any = field(default_factory=select.epoll)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def adopt(self, sock: socket.socket, first: dict[str, Any]) -> None:
        """Take over a rank's connection, whose first message was ``first`` (kind "rank")."""
        rank = first["rank"]
        self.last_beat[rank] = time.monotonic()
        self.sockets.append(sock)
        with self._lock:
            self._ranks_by_fd[sock.fileno()] = rank
            self._hangup_set.register(sock.fileno(), select.EPOLLRDHUP | select.EPOLLONESHOT)
        threading.Thread(target=self._read, args=(sock, rank), daemon=True).start()

    def _read(self, sock: socket.socket, rank: int) -> None:
        try:
            while receive(sock, TO_DAEMON, limit=4096)["kind"] == "beat":
                self.last_beat[rank] = time.monotonic()
        except (OSError, ConnectionError, WireError):
            pass
        self.ended.setdefault(rank, time.monotonic_ns())
        self.changed.set()

    def hung_up(self) -> list[int]:
        """Ranks whose connections have hung up, first first (the kernel's order)."""
        with self._lock:
            if not self._hangup_set.closed:
                for fd, _events in self._hangup_set.poll(0, max(1, len(self._ranks_by_fd))):
                    rank = self._ranks_by_fd.get(fd)
                    if rank is not None and rank not in self.hangups:
                        self.hangups.append(rank)
            return list(self.hangups)

    def first_dead(self) -> int | None:
        """The rank that died first: the first hang-up the kernel saw, else the first EOF read."""
        order = self.hung_up()
        if order:
            return order[0]
        return min(self.ended, key=self.ended.__getitem__) if self.ended else None

    def overdue(self, limit: float, heard_since: float = 0.0) -> int | None:
        """A rank silent for over ``limit`` seconds since ``heard_since`` (``Hearing.tick``), or None."""
        now = time.monotonic()
        late = [r for r, t in self.last_beat.items() if r not in self.ended and now - max(t, heard_since) > limit]
        return late[0] if late else None

    def start_problem(self, limit: float, heard_since: float = 0.0) -> str | None:
        """While a job starts: why it cannot (a rank died, or stopped beating), or None."""
        if self.ended:
            return f"rank {self.first_dead()} died while the job started"
        late = self.overdue(limit, heard_since)
        return None if late is None else f"rank {late} stopped beating while the job started"

    def close(self) -> None:
        with self._lock:
            self._hangup_set.close()
        for sock in self.sockets:
            sock.close()


# -- the ranks' processes, from /proc ------------------------------------------------------
def process_gone(pid: int) -> bool:
    """Whether ``pid`` has exited (or is a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def is_rank_process(pid: int) -> bool:
    """Still one of our ranks (not a recycled PID)?"""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return b"lineage_ledger.backends.baash.rank" in cmdline.read()
    except OSError:
        return False


def resident_memory(pids: list[int]) -> list[int | None]:
    """Resident memory of each process in bytes (None where it cannot be read)."""
    sizes: list[int | None] = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as status:
                kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
            sizes.append(kb * 1024)
        except (OSError, StopIteration, ValueError):
            sizes.append(None)
    return sizes
