"""Which attempt of its task each try is, from Nextflow's log.

Nextflow logs every try it submits, by the short hash of its work directory, as
``[ab/cdef01] Submitted process > NAME`` (a first try) or ``Re-submitted process > NAME`` (a
retry), and every failed try it retries as ``[ab/cdef01] NOTE: ... -- Execution is retried
(N)``, N being the number of that task's failed tries so far: the failed try was attempt N and
its retry is attempt N + 1. Task names are not unique: a scatter over samples with a constant
``tag`` (or with one that repeats) runs many tasks of one name. Counting retries per name, as
the wrapper did, gave a first try of one sample the attempt number of another sample's retry
(six tasks of one tag, two of them retried: records said attempt 2 of three first tries).

So a first try is attempt 1, whatever its name. A retry is the next attempt of one of its
name's failed tries Nextflow said it retries and whose retry has not been seen yet. Where
several wait, the one that ran the same script (``.command.sh``: the task's inputs
substituted, so the same sample) is the one, even where their N are the same: taking the
first of those instead took another sample's failed try whenever the samples' retries ended
in another order than their failures were noted, and the sample's own failed try, left
waiting, was later matched against its next retry beside a higher N: a number said to be a
guess, or a wrong one (under load, tests/test_nextflow_deployed_retries.py). Where the
script still leaves a choice, the lowest N is taken and, where the N differ, the record says
the number is a guess (``extra.attempt_guessed``).

Scripts that name the attempt (``${task.attempt}``, a memory setting that grows with it)
differ from try to try: no waiting try's script is a retry's, and where several wait the one
taken may be another task's, even where every N is the same and the number right. What is
left waiting is then not known to be the tries still to come: until the name has no try
waiting, a retry that no script matched is said to be a guess, even where one try waits (it
was recorded as that try's next attempt, a wrong number said of nothing:
tests/test_nextflow_attempts_order.py). A try whose submission the log did not show (a log
that began mid-run) is counted per name, as before.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import NamedTuple


class _Waiting(NamedTuple):
    """A failed try Nextflow said it retries, whose retry has not ended yet."""

    failed_tries: int  # N: this try was attempt N
    workdir: str
    script: bytes | None  # the digest of its .command.sh, read when it was said retried (None: unreadable)


@dataclass
class Attempts:
    """Filled from the log's events on the follower's thread (one thread: no lock)."""

    #: short hash -> whether that try was a retry (Re-submitted), from the submission lines.
    _retry: dict[str, bool] = field(default_factory=dict)
    #: task name -> failed tries said retried, whose retry is not seen yet.
    _waiting: dict[str, list[_Waiting]] = field(default_factory=dict)
    #: task name -> the highest N said of it (the old count, for a try whose submission was not seen).
    _by_name: dict[str, int] = field(default_factory=dict)
    #: task names whose waiting tries lost one to a retry nothing told apart from the others:
    #: those left may not be the ones still to come (the module's docstring).
    _unsure: set[str] = field(default_factory=set)

    def submitted(self, short_hash: str, retry: bool) -> None:
        self._retry[short_hash] = retry

    def retried(self, name: str, failed_tries: int, workdir: str) -> None:
        """Nextflow retries the try in ``workdir``, its task's failed try number ``failed_tries``."""
        # Its script is read once, now: a scatter with many retries would otherwise read every
        # waiting try's script again at each retry that ends.
        self._waiting.setdefault(name, []).append(_Waiting(failed_tries, workdir, _script_digest(workdir)))
        self._by_name[name] = max(self._by_name.get(name, 0), failed_tries)

    def of(self, short_hash: str, name: str, workdir: str) -> tuple[int, bool]:
        """(attempt, guessed) of the try in ``workdir`` that just ended."""
        retry = self._retry.pop(short_hash, None)
        if retry is None:
            return self._by_name.get(name, 0) + 1, False
        if not retry:
            return 1, False
        waiting = self._waiting.get(name) or []
        if not waiting:  # a retry of a try said retried before the log was followed
            return self._by_name.get(name, 0) + 1, True
        candidates = list(range(len(waiting)))
        told = False  # whether its script told which waiting try is its own
        if len(waiting) > 1 or name in self._unsure:  # whatever their N: the try taken must be its own
            script = _script_digest(workdir)
            same = [i for i in candidates if script is not None and waiting[i].script == script]
            told = bool(same)
            candidates = same or candidates
        chosen = min(candidates, key=lambda i: waiting[i].failed_tries)
        guessed = len({waiting[i].failed_tries for i in candidates}) > 1 or (not told and name in self._unsure)
        if not told and len(candidates) > 1:
            self._unsure.add(name)
        failed_tries = waiting.pop(chosen).failed_tries
        if not waiting:  # every try said retried has had its retry: those to come are told afresh
            del self._waiting[name]
            self._unsure.discard(name)
        return failed_tries + 1, guessed


def _script_digest(workdir: str) -> bytes | None:
    try:
        with open(os.path.join(workdir, ".command.sh"), "rb") as handle:
            return hashlib.sha256(handle.read()).digest()
    except OSError:
        return None
