"""Per-rank heartbeats: each rank holds a socket to the daemon and beats on it.

The kernel closes a process's sockets the moment it dies, ``kill -9`` included, so the
first rank whose connection reaches end-of-file is the one that failed: MPICH's process
manager only tears the other ranks down after it has noticed that death itself. A rank
whose beats stop while its connection stays open is hung; the monitor treats it as failed.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ._wire import TO_DAEMON, WireError, receive, send

__all__ = ["RankWatch", "beat_forever"]

BEAT_EVERY = 0.5


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


@dataclass
class RankWatch:
    """The daemon's view of one job's ranks: last beat and time of death per rank."""

    last_beat: dict[int, float] = field(default_factory=dict)
    ended: dict[int, int] = field(default_factory=dict)  # rank -> monotonic_ns of EOF
    sockets: list[socket.socket] = field(default_factory=list)
    changed: threading.Event = field(default_factory=threading.Event)

    def adopt(self, sock: socket.socket, first: dict[str, Any]) -> None:
        """Take over a rank's connection, whose first message was ``first`` (kind "rank")."""
        rank = first["rank"]
        self.last_beat[rank] = time.monotonic()
        self.sockets.append(sock)
        threading.Thread(target=self._read, args=(sock, rank), daemon=True).start()

    def _read(self, sock: socket.socket, rank: int) -> None:
        try:
            while receive(sock, TO_DAEMON, limit=4096)["kind"] == "beat":
                self.last_beat[rank] = time.monotonic()
        except (OSError, ConnectionError, WireError):
            pass
        self.ended.setdefault(rank, time.monotonic_ns())
        self.changed.set()

    def first_dead(self) -> int | None:
        return min(self.ended, key=self.ended.__getitem__) if self.ended else None

    def overdue(self, limit: float) -> int | None:
        now = time.monotonic()
        late = [r for r, t in self.last_beat.items() if r not in self.ended and now - t > limit]
        return late[0] if late else None

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
