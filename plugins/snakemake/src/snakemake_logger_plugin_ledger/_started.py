"""A job's input files as they were when it started, and those that changed while it ran.

A job's record was made from digests taken after the job ended: an input rewritten by another
process while the job ran was recorded with its new digest. Its lineage then said the output
was made from bytes the job never saw, and ``verify-lineage`` of the output passed with the
rewritten file in place.

Two steps, so that Snakemake's process hashes nothing:

- :func:`stat_inputs` runs in the plugin's filter on Snakemake's logger, synchronously in the
  ``job_info`` logging call that Snakemake makes before it starts the job (``run_job_pre``):
  one ``stat`` per input file, no reading.
- :class:`StartedInputs`, in the recording process, hashes those files as soon as it hears of
  the job (a ``{"start": jobid, "inputs": {path: stat}}`` line), on a thread of its own. A digest
  counts as the file at the start only if the file's stat is still the one taken before the job
  started. When the job ends (:meth:`StartedInputs.apply`), an input whose stat is unchanged
  takes its start digest (no second read); one that changed is hashed again, and where its
  bytes differ the record keeps the digest at the start, names the file in
  ``extra["inputs_changed_while_running"]`` (``{path: {"at_start": entry or None, "now": entry
  or None}}``) and the change is logged. ``at_start`` is None where the file changed between
  the job's start and the moment it was hashed: no digest is then what the job read, and the
  record leaves it out of its inputs and names it in ``extra["not_verified"]``.

A directory is hashed at the start and again at the end, through this user's stat cache (a
file in it that did not change costs a stat); its stat says nothing of the files in it, so a
change between the job's start and the first hash of it goes unseen.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

log = logging.getLogger("lineage_ledger.snakemake")

#: Seconds the end of a job waits for its inputs' start digests before hashing as before.
WAIT = 600.0


#: The "stat" of a directory: its own stat says nothing of the files in it.
DIRECTORY = [-1]


def stat_key(path: str, directories: bool = False) -> list[int] | None:
    """What says a regular file was not written: size, mtime, ctime, inode, device; None for
    anything else (not there, a pipe; a directory, unless ``directories``: then DIRECTORY)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return list(DIRECTORY) if directories and stat.S_ISDIR(st.st_mode) else None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def name_thread(name: str) -> None:
    """Name the calling thread where ``ps -L`` and ``top -H`` show it (Linux; 15 characters)."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as comm:
            comm.write(name[:15])
    except OSError:  # not Linux, or no /proc: only a name
        pass


def stat_inputs(paths: list[str]) -> dict[str, list[int]]:
    """The stat of each regular file among ``paths``, DIRECTORY for each directory (on
    Snakemake's thread: a stat each)."""
    return {path: key for path in paths if (key := stat_key(path, True)) is not None}


def _directory_entry(path: str, lock: threading.Lock) -> dict[str, Any] | None:
    """A directory's digest entry through this user's stat cache (a file that did not change
    costs a stat), its manifest remembered in this process: the capture records the directory
    from the digest only where it has the manifest."""
    from lineage_ledger import LedgerError
    from lineage_ledger._files.hashing import cached_hasher
    from lineage_ledger._files.manifest import remember

    try:
        with lock:  # one hasher's stat cache at a time
            artifact = cached_hasher().hash(path)
    except (LedgerError, OSError):
        return None
    manifest = getattr(artifact, "manifest", None)
    if manifest is None:
        return None
    remember(manifest)
    return dict(artifact.entry())


def _entry_if_unchanged(path: str, key: list[int]) -> tuple[dict[str, Any] | None, bool]:
    """(the file's digest entry, whether it is the file as ``key`` saw it)."""
    from lineage_ledger import LedgerError, hash_file

    if stat_key(path) != key:
        entry = _entry(path, hash_file, LedgerError)
        return entry, False
    entry = _entry(path, hash_file, LedgerError)
    return entry, entry is not None and stat_key(path) == key


def _entry(path: str, hash_file: Any, error: Any) -> dict[str, Any] | None:
    try:
        artifact = hash_file(path)
    except (error, OSError):
        return None
    return {"blake3": artifact.blake3, "size": artifact.size}


class StartedInputs:
    """Start digests by Snakemake job id, taken on a thread of this (the recording) process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[int, tuple[dict[str, list[int]], Future[dict[str, Any]]]] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._seen: dict[tuple[str, tuple[int, ...]], dict[str, Any]] = {}  # (path, stat) -> entry
        self._directories = threading.Lock()
        #: Set once the first job's start digests are taken: the recording process's warm-up
        #: import of the back-end waits for it (:mod:`._sidecar`).
        self.first_hashed = threading.Event()

    def start(self, message: dict[str, Any]) -> None:
        stats = {str(p): list(k) for p, k in dict(message.get("inputs") or {}).items()}
        if not stats:
            return
        with self._lock:
            if self._pool is None:
                # Started from the recording process's reading thread, at Snakemake's priority:
                # a thread's nice value is inherited by the threads it starts.
                self._pool = ThreadPoolExecutor(2, thread_name_prefix="lineage-started",
                                                initializer=name_thread, initargs=("ledger-start",))
            future = self._pool.submit(self._hash_then_say, stats)
            self._jobs[int(message["start"])] = (stats, future)

    def _hash_then_say(self, stats: dict[str, list[int]]) -> dict[str, Any]:
        try:
            return self._hash(stats)
        finally:
            self.first_hashed.set()

    def _hash(self, stats: dict[str, list[int]]) -> dict[str, Any]:
        # A reference genome read by every job of a scatter is read once while it stays put,
        # not once a job: its stat (size, mtime, ctime, inode) is the key, as in the core's cache.
        found: dict[str, Any] = {}
        for path, key in stats.items():
            if key == DIRECTORY:
                entry = _directory_entry(path, self._directories)
                found[path] = (entry, entry is not None)
                continue
            memo = (path, tuple(key))
            with self._lock:
                entry = self._seen.get(memo)
            if entry is not None and stat_key(path) == key:
                found[path] = (entry, True)
                continue
            found[path] = _entry_if_unchanged(path, key)
            if found[path][1]:
                with self._lock:
                    self._seen[memo] = found[path][0]
        return found

    def apply(self, run: dict[str, Any]) -> None:
        """Give ``run`` (a ``TaskRun`` message) its inputs' start digests as ``known``; name
        those that changed while it ran."""
        jobid = (run.get("extra") or {}).get("snakemake_jobid")
        with self._lock:
            taken = self._jobs.pop(jobid, None) if isinstance(jobid, int) else None
        if taken is None:
            return  # its start was not seen (a recovered job): hashed after it ended, as before
        stats, future = taken
        try:
            at_start = future.result(timeout=WAIT)
        except Exception as err:  # noqa: BLE001 - the job is still recorded, hashed as before
            log.warning("lineage-ledger: could not hash the inputs of job %s at its start: %s", jobid, err)
            return
        known = dict(run.get("known") or {})
        changed: dict[str, Any] = {}
        for path in run.get("inputs") or ():
            if path not in stats or path in known:
                continue
            entry, was_at_start = at_start.get(path, (None, False))
            directory = stats[path] == DIRECTORY
            now_key = stat_key(path, directory)
            if now_key is None or (was_at_start and now_key == stats[path] and not directory):
                if entry is not None:  # unchanged, or deleted since (a temp() input): as it started
                    known[path] = entry
                continue
            from lineage_ledger import LedgerError, hash_file

            now = _directory_entry(path, self._directories) if directory else _entry(path, hash_file, LedgerError)
            if was_at_start and now is not None and now["blake3"] == entry["blake3"]:
                known[path] = entry  # touched, or its mode changed: the same bytes
                continue
            changed[path] = {"at_start": entry if was_at_start else None, "now": now}
            if was_at_start:
                known[path] = entry  # what it was when the job started
        run["known"] = known
        if changed:
            extra = {**(run.get("extra") or {}), "inputs_changed_while_running": changed}
            # Changed before it could be hashed: no digest is what the job read. Left out of the
            # inputs and named as not verified, as the Nextflow plugin does with such an input.
            unknown = [path for path, entry in changed.items() if entry["at_start"] is None]
            if unknown:
                run["inputs"] = [p for p in run["inputs"] if p not in unknown]
                extra["not_verified"] = sorted({*extra.get("not_verified", ()), *unknown})
            run["extra"] = extra
            log.warning("lineage-ledger: job %s (%s): input(s) changed while the job ran, recorded as they were "
                        "when it started; its outputs may have been made from either version: %s",
                        jobid, run.get("task_name"), ", ".join(sorted(changed)))

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
