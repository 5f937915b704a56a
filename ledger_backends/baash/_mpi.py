"""Message tags and a polling receive that yields the CPU.

MPICH's blocking calls busy-poll. With more ranks than cores (4 ranks on 2 cores in CI)
a spinning rank steals the core from the rank it waits for, so every wait here polls
with ``iprobe`` and sleeps between polls, backing off from 50 µs to 2 ms while idle.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from mpi4py import MPI

__all__ = ["Inbox", "Tag"]


class Tag:
    ROUND = 1        # gateway -> other cluster coordinators: a round of blocks to decide
    DECISION = 2     # coordinator -> gateway: decisions for its share of the round
    PREPARE = 3      # coordinator -> validators of its cluster: the round, who validates what
    VOTE = 4         # validator -> coordinator: a vote per assigned block
    EXTRA = 5        # coordinator -> an idle rank joining a sub-cluster: validate one block
    COMMIT = 6       # gateway -> every rank: how many of the round's blocks are committed
    ACK = 7          # every rank -> gateway: its head after the commit
    LEDGER = 8       # gateway -> every rank: report your in-memory ledger
    SUMMARY = 9      # every rank -> gateway: the report
    STOP = 10
    SYNC = 14        # gateway -> every rank: shared storage is ahead of you, reload from it
    PBFT_PREPREPARE = 11
    PBFT_PREPARE = 12
    PBFT_COMMIT = 13


class Inbox:
    """Receive the next message from any of ``comms`` without spinning."""

    def __init__(self, comms: Sequence[Any], tag: int = MPI.ANY_TAG) -> None:
        self.comms = list(comms)
        self.tag = tag  # a coordinator waiting for votes leaves other messages queued
        self.status = MPI.Status()

    def poll(self) -> tuple[Any, int, int, Any] | None:
        for comm in self.comms:
            if comm.iprobe(source=MPI.ANY_SOURCE, tag=self.tag, status=self.status):
                source, tag = self.status.Get_source(), self.status.Get_tag()
                return comm, source, tag, comm.recv(source=source, tag=tag)
        return None

    def next(self, deadline: float | None = None) -> tuple[Any, int, int, Any] | None:
        """The next message, or ``None`` once ``deadline`` (a monotonic time) has passed."""
        pause = 0.00005
        while True:
            found = self.poll()
            if found is not None:
                return found
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(pause)
            pause = min(pause * 2, 0.002)
