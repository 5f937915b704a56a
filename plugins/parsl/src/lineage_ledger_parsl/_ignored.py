"""A cache hit whose ``File`` argument the app leaves out of its memo key changed since.

``@python_app(cache=True, ignore_for_cache=["ref"])`` keeps the keyword ``ref`` out of Parsl's
memo key (``make_hash``), so a content key cannot see an edit of that file: the next run is a
hit, and the cached result, made from the old bytes, is reused. The pre-run check passes
wherever the new bytes are recorded (an upstream app rewrote the file, or it was adopted), and
before, the ``cached`` try was recorded as having read the new bytes: ``verify-lineage`` of the
output then vouched for a derivation that never happened, under every policy
(tests/test_parsl_deployed_ignore_for_cache.py).

Every try the plugin records carries its memo key (``extra["memo_hash"]``) and the digests of
the files it read, so the ledger can tell which bytes of such a file the key's results were
made from: a hit whose ignored input is none of them is treated like a file changed outside the
workflow. ``strict`` refuses the reuse (recorded as refused), ``rerun`` runs the task again,
``warn`` says so and reuses it, its ``cached`` record not listing the file. Where no
recorded try of the key read the file (a checkpoint older than the ledger), nothing is said.

A hit in the same run is compared with the bytes the value's try was handed (``MadeHere``): a
file's digest is taken then for its record anyway (``read_digests``); an ignored directory's
is taken for this check alone (``keep_handed_directories``), since a directory is otherwise
hashed by the recording process when the try ends.

``ignore_for_cache=["outputs"]`` is refused (``refuse_ignored_outputs``): Parsl's own
``make_hash`` fails on it, with or without the ledger.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, MutableMapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from lineage_ledger import ArtifactMismatch, LedgerError, hash_file

from ._tasks import STREAMS, task_files
from ._unrecordable import unnamed

if TYPE_CHECKING:
    from ._memoizer import LedgerMemoizer

__all__ = ["HANDED_DIRECTORIES", "MadeHere", "ignored_inputs", "ignored_inputs_changed", "keep_handed_directories",
           "refuse_ignored_outputs"]

log = logging.getLogger("lineage_ledger.parsl")

# The task record's mark: {path: digest} of the ignored input directories as the try was handed them.
HANDED_DIRECTORIES = "lineage_ledger_ignored_directories"


def ignored_inputs(task: Mapping[str, Any]) -> list[str]:
    """The local input files among the keywords ``task``'s app leaves out of its memo key
    (``outputs`` and a bash app's streams are outputs, checked as such)."""
    ignored = [k for k in task.get("ignore_for_cache") or () if k != "outputs" and k not in STREAMS]
    kwargs = task.get("kwargs") or {}
    return task_files((), {k: kwargs[k] for k in ignored if k in kwargs})[0]


class MadeHere:
    """The bytes of the ignored inputs each memo key's latest result of this run was made
    from, as its try was handed them (the memoizer's check: ``lineage_ledger_read``). A hit
    in the same run reuses a value made minutes ago, whose record may still be on its way to
    the ledger (write-behind): the ledger alone would know nothing of it."""

    def __init__(self) -> None:
        self._by_key: dict[str, dict[str, str | None]] = {}

    def succeeded(self, task: Mapping[str, Any]) -> None:
        """``task`` ended with the value Parsl now keeps under its memo key."""
        memo_hash, paths = task.get("hashsum"), ignored_inputs(task)
        if not isinstance(memo_hash, str) or not paths:
            return
        read, directories = task.get("lineage_ledger_read") or {}, task.get(HANDED_DIRECTORIES) or {}
        self._by_key[memo_hash] = {p: (read.get(p) or {}).get("blake3") or directories.get(p) for p in paths}

    def made_from(self, memo_hash: str, path: str) -> str | None:
        """The digest ``path`` had when this run's latest result of ``memo_hash`` was made
        (None: not made in this run, or the file was not hashed then)."""
        return (self._by_key.get(memo_hash) or {}).get(path)

    def made_here(self, memo_hash: str) -> bool:
        return memo_hash in self._by_key


def keep_handed_directories(task: MutableMapping[str, Any]) -> None:
    """Marks ``task`` (about to be handed to its executor) with the digests its ignored input
    directories have now, for :class:`MadeHere`. ``read_digests`` leaves directories to the
    recording process, which hashes them as the try ends: without this, a hit later in the run
    on a directory rewritten since was reused unchecked, even under ``strict``
    (tests/test_parsl_s47_ignore_for_cache.py). Only apps that ignore a directory pay for it."""
    if not isinstance(task.get("hashsum"), str):  # not memoized: no later hit can reuse its value
        return
    paths = [p for p in dict.fromkeys(ignored_inputs(task)) if os.path.isdir(p)]
    found = {p: digest for p in paths if p not in unnamed(paths) and (digest := _disk(p)) is not None}
    if found:
        task[HANDED_DIRECTORIES] = found


def refuse_ignored_outputs(memoizer: LedgerMemoizer, task: Mapping[str, Any]) -> None:
    """Refuses a memoized try whose app leaves ``outputs`` out of its memo key. Parsl's
    ``make_hash`` deletes that keyword twice, once as ignored and once as the outputs, and the
    try failed with a bare ``KeyError: 'outputs'`` (with or without the ledger). It could not
    be honoured either: a value reused for other output files leaves those unwritten. The
    memoizer keys output ``File``s by their URL; the refusal says so, under every policy,
    and is recorded (the try wrote nothing)."""
    if "outputs" not in (task.get("ignore_for_cache") or ()) or not task.get("memoize") \
            or not getattr(memoizer.inner, "memoize", True):
        return
    refusal = ValueError(
        f"lineage-ledger refuses to run task {task['id']} ({task['func_name']}): its app leaves its outputs out of "
        "its memo key (ignore_for_cache=['outputs']), which Parsl's make_hash cannot do (it fails with KeyError: "
        "'outputs', with or without the ledger), and a cached result reused for other output files would leave "
        "them unwritten. Remove 'outputs' from ignore_for_cache: the memoizer keys output Files by their URL")
    log.error("%s", refusal)
    if memoizer.ledger.unrecordable is None:
        memoizer._record(task, "failed", {"error": str(refusal)[:2000], "refused_by": "ignore_for_cache"})
    raise refusal


def ignored_inputs_changed(memoizer: LedgerMemoizer, task: Mapping[str, Any], cached: Future[Any],
                           skip: list[str]) -> list[str]:
    """The ignored inputs (see :func:`ignored_inputs`) of a cache hit (``cached``) whose bytes
    no ``succeeded`` try that made its value read. ``strict`` raises ``ArtifactMismatch`` (the
    try recorded as refused); ``warn`` and ``rerun`` log each one and return them."""
    memo_hash = task.get("hashsum")
    left = set(skip)
    paths = [p for p in dict.fromkeys(ignored_inputs(task)) if p not in left and os.path.exists(p)]
    paths = [p for p in paths if p not in unnamed(paths)]
    if not paths or not isinstance(memo_hash, str) or memoizer.ledger.unrecordable is not None:
        return []
    policy = memoizer.ledger.policy
    try:
        here = memoizer.made_here
        if here.made_here(memo_hash):  # the value Parsl keeps was made in this run: its bytes are known
            changed = [(p, disk, [made]) for p in paths if (made := here.made_from(memo_hash, p)) is not None
                       and (disk := _disk(p)) is not None and disk != made]
        else:
            value = cached.result() if cached.done() and not cached.exception() else None
            made_value = memoizer.entry_digest(task, value) if cached.done() and not cached.exception() else None
            changed = _changed(memoizer.ledger.capture.ledger, memo_hash, made_value, paths)
    except LedgerError as err:
        log.error("lineage-ledger: could not tell whether the files task %s leaves out of its memo key are the "
                  "ones its cached result was made from: %s", task["id"], err)
        if policy == "strict":
            failed = f"{type(err).__name__}: {err}"[:2000]
            memoizer._record(task, "failed", {"error": failed, "refused_by": "strict", "check_failed": failed},
                             leave_out=paths, left_out_as="not_verified")
            raise
        return []
    if not changed:
        return []
    said = "; ".join(f"{path} (made from {', '.join(d[:12] for d in made)}; disk {disk[:12]})"
                     for path, disk, made in changed)
    found = [path for path, _, _ in changed]
    if policy == "strict":
        refusal = ArtifactMismatch(
            f"lineage-ledger refuses to reuse the cached result of task {task['id']} ({task['func_name']}): "
            f"files it leaves out of its memo key (ignore_for_cache) changed since that result was made from "
            f"them: {said}. Run it again with policy rerun",
            path=found[0],
        )
        log.error("%s", refusal)
        memoizer._record(task, "failed", {"error": str(refusal)[:2000], "refused_by": "strict"}, leave_out=found)
        raise refusal
    log.warning("lineage-ledger: task %s (%s): files it leaves out of its memo key changed since its cached result "
                "was made from them: %s; %s", task["id"], task["func_name"], said,
                "the task runs again" if policy == "rerun" else "its cached result is reused all the same")
    return found


def _changed(ledger: Any, memo_hash: str, made_value: str | None,
             paths: list[str]) -> list[tuple[str, str, list[str]]]:
    """(path, disk digest, digests the key's tries read) for each of ``paths`` whose bytes on
    disk none of the ``succeeded`` tries with ``memo_hash`` that read it read. Only those
    tries made a result: a ``cached`` one reused a result, and one recorded before this check
    existed may name bytes the result was never made from. Where the tries say which value
    they made (``extra["memo_result"]``, the checkpoint entry's digest, see _values) and some
    made ``made_value``, only those count: a result made from ``a``, replaced in Parsl's table
    by one made from ``b``, is not reused when the file goes back to ``a``."""
    found: list[tuple[str, str, list[str]]] = []
    for path in paths:
        disk = _disk(path)
        if disk is None:
            continue
        key = ledger.query_path(path)
        tries = [entry.record for entry in ledger.consumers(key, as_key=True)
                 if entry.record.status == "succeeded" and (entry.record.extra or {}).get("memo_hash") == memo_hash
                 and (entry.record.inputs.get(key) or {}).get("blake3")]
        same = [r for r in tries if made_value is not None and (r.extra or {}).get("memo_result") == made_value]
        made = sorted({r.inputs[key]["blake3"] for r in same or tries})
        if made and disk not in made:
            found.append((path, disk, made))
    return found


def _disk(path: str) -> str | None:
    try:
        return hash_file(path).blake3
    except LedgerError:  # gone or unreadable now: the task itself, or the other checks, say so
        return None
