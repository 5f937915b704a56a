"""How long the daemon waits for the MPI job to answer a round, and a clock that does not
count the daemon's own time off the CPU.

A round's time is not a constant (it was 60 s whatever the round). It is the protocol's own
waits, each bounded by the vote timeout (the gateway's catch-up sync, the votes, an
extension per missing voter, the other clusters' decisions, the acknowledgements), plus
work that grows with the round: every rank of a cluster is sent the whole round and
decodes it (bytes), and the validators check every block (blocks; their votes are waited
for 5 ms a block more than the vote timeout, ``consensus.VOTE_SECONDS_PER_BLOCK``, inside
the work counted here). On one node the ranks
share the cores, so the work is counted once per rank. Measured on 2 loaded cores (load
4-6, 2 ranks): 1.6 ms a one-record block end to end, 0.2 s a MiB a rank; the constants
below are ten times that, for a machine far busier (a round of 10,000 blocks with its ranks
given a fifth of the time at load 22 took 149 s, 7.4 ms a block and rank). A request may carry
65,536 blocks (64 MiB): a fixed 60 s killed a live job on one large request under load and
started it over, while a dead round of one small block went unnoticed for a minute.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from lineage_ledger._model import StoredBlock

from .liveness import OFF_CPU_GAP

__all__ = ["AwakeDeadline", "RoundBudget", "round_bytes"]

#: Slack on top of the protocol's waits: a round of one block whose every wait ran out.
GRACE_S = 5.0
#: Work per block and per rank: about 0.8 ms measured at load 4-6 on 2 cores, 7.4 ms with the
#: ranks given a fifth of the time at load 22 (a round of 10,000 blocks took 149 s).
SECONDS_PER_BLOCK_PER_RANK = 0.01
#: Work per MiB of the round's blocks and per rank (about 0.2 s measured at load 4-6).
SECONDS_PER_MIB_PER_RANK = 2.0
#: No round is given longer than the longest wait a client may ask for (the wire's 3,600 s).
LONGEST_ROUND_S = 3600.0


def round_bytes(blocks: list[StoredBlock]) -> int:
    """The size of a round's blocks: headers and record bodies (what the ranks decode and hash)."""
    return sum(len(b.header) + sum(len(r.body) + len(r.id) for r in b.records) for b in blocks)


def _option(args: list[str], name: str, default: float) -> float:
    """The value of ``name`` in the ranks' argument list (the last one given), else ``default``."""
    value = default
    for i, arg in enumerate(args[:-1]):
        if arg == name:
            value = float(args[i + 1])
    return value


@dataclass(frozen=True)
class RoundBudget:
    """The seconds a round may take before the job is taken for hung."""

    vote_timeout: float = 5.0
    extend: int = 2        # --c: voters added one at a time to a sub-cluster short of a quorum
    clusters: int = 1
    #: The part that does not grow with the round (the waits and the grace); None: derived
    #: from the vote timeout. Tests and benchmarks set it to shorten a run.
    fixed: float | None = None

    @classmethod
    def for_ranks(cls, rank_args: list[str], fixed: float | None = None) -> RoundBudget:
        """The budget of a job started with these rank arguments (``--vote-timeout``, ``--c``, ``--clusters``)."""
        return cls(vote_timeout=_option(rank_args, "--vote-timeout", 5.0), extend=int(_option(rank_args, "--c", 2)),
                   clusters=int(_option(rank_args, "--clusters", 1)), fixed=fixed)

    def waits(self) -> float:
        """The gateway's waits in one round, each up to a multiple of the vote timeout (gateway.py,
        consensus.py): catch-up sync 2, votes 1, extension 1 per added voter, acknowledgements 1,
        and with more than one cluster the other coordinators' decisions, 4."""
        phases = 2 + 1 + self.extend + 1 + (4 if self.clusters > 1 else 0)
        return phases * self.vote_timeout

    def seconds(self, blocks: int, size: int, ranks: int) -> float:
        """For a round of ``blocks`` blocks of ``size`` bytes on ``ranks`` ranks."""
        fixed = GRACE_S + self.waits() if self.fixed is None else self.fixed
        work = max(1, ranks) * (blocks * SECONDS_PER_BLOCK_PER_RANK + size / (1 << 20) * SECONDS_PER_MIB_PER_RANK)
        return min(LONGEST_ROUND_S, fixed + work)


class AwakeDeadline:
    """A wait of ``seconds``, counted only while this process ran.

    The daemon looks at its wait every few milliseconds; a look that comes more than
    ``OFF_CPU_GAP`` after the last means the daemon itself was stopped (SIGSTOP, Ctrl-Z, a
    paused VM) or starved, and that gap is not the job's silence: the job's answer may be
    waiting unread, or its ranks were stopped with the daemon. The gaps are kept in ``away``.
    """

    def __init__(self, seconds: float) -> None:
        self.left = seconds
        self.away = 0.0
        self._last = time.monotonic()

    def passed(self) -> bool:
        now = time.monotonic()
        gap, self._last = now - self._last, now
        if gap > OFF_CPU_GAP:
            self.away += gap
        else:
            self.left -= gap
        return self.left <= 0
