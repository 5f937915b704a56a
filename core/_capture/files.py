"""The file side of a :class:`~.task.TaskCapture`: hashing a task's inputs and outputs.

Digests the caller already knows win; a path through a symbolic link is recorded by its
real path and as an alias of it; a directory is hashed as its manifest through this user's
stat cache; inputs already deleted (Snakemake's ``temp()`` files) are recalled from this
capture's outputs, else from the ledger. Several tasks' files are hashed on a small thread
pool at once (hashing releases the GIL); the records are still made in submission order.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NamedTuple

from .._errors import ArtifactError
from .._files.hashing import Hasher, hash_file, normalize_path
from .._files.manifest import Manifest, manifest_record, recall
from .._model import DirectoryArtifact, Record

if TYPE_CHECKING:
    from .._ledger.ledger import Ledger
    from .report import TaskRun

__all__ = ["FoundFiles", "TaskFiles", "entries_of", "manifest_records_of"]


class FoundFiles(NamedTuple):
    """One task's files as found on disk."""

    inputs: dict[str, dict[str, Any]]
    gone: list[str]  # inputs not on disk: recalled in submission order
    outputs: dict[str, dict[str, Any]]
    missing: list[str]
    manifests: dict[str, Manifest] = {}  # noqa: RUF012 - a NamedTuple default, never mutated


class TaskFiles:
    """Hashes :class:`~.task.TaskRun` files for the capture that derives from it, which
    sets these attributes up and gives the ledger to recall deleted inputs from."""

    threads: int
    _lock: threading.Lock
    _hashers: ThreadPoolExecutor | None
    _dir_hasher: Hasher | None
    # The last digest this capture recorded for each output path: a temp() file deleted
    # before its consumer is reported may not have reached the ledger yet.
    _outputs: dict[str, dict[str, Any]]
    _journaled_manifests: set[str]  # manifest records this capture wrote
    if TYPE_CHECKING:
        def _ledger_for_lookup(self) -> Ledger | None: ...

    def _hash_many(self, runs: list[TaskRun]) -> list[FoundFiles | BaseException | None]:
        """Each run's files hashed (None: it names none), several runs at once when a pool helps."""
        results: list[FoundFiles | BaseException | None] = [None] * len(runs)
        todo = [i for i, run in enumerate(runs) if run.inputs or run.outputs]
        if len(todo) > 1 and self.threads > 1:
            try:
                pool = self._hash_pool()
                futures = [(i, pool.submit(self._hash_files, runs[i])) for i in todo]
            except RuntimeError:  # the pool is shut down (interpreter exit): hash here
                futures = []
            for i, future in futures:
                try:
                    results[i] = future.result()
                except Exception as err:  # noqa: BLE001 - reported with its task
                    results[i] = err
            if futures:
                return results
        for i in todo:
            try:
                results[i] = self._hash_files(runs[i])
            except Exception as err:  # noqa: BLE001 - reported with its task
                results[i] = err
        return results

    def _hash_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._hashers is None:
                self._hashers = ThreadPoolExecutor(self.threads, thread_name_prefix="lineage-capture-hash")
            return self._hashers

    def _hash_files(self, run: TaskRun) -> FoundFiles | None:
        """Digests of the files on disk; inputs already gone are recalled later, in order."""
        if not (run.inputs or run.outputs):
            return None
        given = self._known(run.known) if run.known else {}
        manifests: dict[str, Manifest] = {}
        inputs, gone = self._hash_present(run.inputs, given, manifests)
        # A file updated in place was read with one digest and written with another.
        if run.known_outputs is not None:
            given = self._known(run.known_outputs)
        outputs, missing = self._hash_present(run.outputs, given, manifests)
        return FoundFiles(inputs, gone, outputs, missing, manifests)

    def _known(self, known: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        return {normalize_path(p): _plain(e) for p, e in known.items()}

    def _hash_present(self, paths: Iterable[str], given: Mapping[str, dict[str, Any]],
                      manifests: dict[str, Manifest]):
        """Digests of ``paths`` (``given`` ones win) and the paths that are not on disk.

        Each path is recorded by its real path; one given through a symbolic link is
        recorded as well, as an alias of it. A directory's manifest goes into ``manifests``;
        a file below a directory hashed earlier in ``paths`` takes the digest its manifest
        lists (a task that names a directory output and its files, as the Nextflow plugin's
        records do, has each file read once, not twice)."""
        entries: dict[str, dict[str, Any]] = {}
        missing: list[str] = []
        hashed_directories: dict[str, Manifest] = {}  # real path -> manifest, hashed here
        for path in _unique(paths):
            real = os.path.realpath(path)
            entry = given.get(path) or given.get(real)
            if entry is None and hashed_directories:
                entry = _listed_file(hashed_directories, real)
            if entry is None or (entry.get("type") == "dir" and not self._have_manifest(entry, real, manifests)):
                try:
                    artifact = self._hash_path(path)
                except ArtifactError:
                    if os.path.lexists(path):
                        raise  # there but unreadable: a real problem, not a clean-up
                    missing.append(path)
                    continue
                entry = artifact.entry()
                if isinstance(artifact, DirectoryArtifact):
                    manifests[artifact.blake3] = artifact.manifest
                    hashed_directories[real] = artifact.manifest
            entries[real] = _plain(entry)
            if real != path:
                entries[path] = {**entries[real], "alias_of": real}
        return entries, missing

    def _have_manifest(self, entry: Mapping[str, Any], path: str, manifests: dict[str, Manifest]) -> bool:
        """Whether the manifest of a directory a caller gave the digest of is at hand (hashed
        by this process lately, or journaled by this capture)."""
        digest = entry["blake3"]
        if digest in manifests or digest in self._journaled_manifests:
            return True
        manifest = recall(digest)
        if manifest is None:
            return False
        manifests[digest] = manifest
        return True

    def _hash_path(self, path: str):
        """A file's digest now; a directory's through this user's stat cache (a large input
        directory that did not change costs a stat per file, not a read)."""
        if not os.path.isdir(path):
            return hash_file(path)
        with self._lock:
            if self._dir_hasher is None:
                from .._files.hashing import cached_hasher

                self._dir_hasher = cached_hasher()
            hasher = self._dir_hasher
        return hasher.hash(path)

    def _recall(self, gone: list[str], entries: dict[str, dict[str, Any]]):
        """Digests of inputs already deleted: from this capture's outputs, else the ledger."""
        unhashed: list[str] = []
        recalled: dict[str, str] = {}  # path -> where its digest came from
        for path in gone:
            with self._lock:
                remembered = self._outputs.get(path)
            source = "capture"
            if remembered is None:
                ledger = self._ledger_for_lookup()
                seen = ledger.last_seen(path) if ledger is not None else None
                remembered, source = (dict(seen[2]) if seen is not None else None), "ledger"
            if remembered is None:
                unhashed.append(path)
            else:
                entries[path] = _plain(remembered)
                recalled[path] = source
        return unhashed, recalled


def _listed_file(directories: Mapping[str, Manifest], real: str) -> dict[str, Any] | None:
    """The digest entry of the regular file at ``real`` (a real path) as the manifest of a
    directory above it lists it; None if none does. Every part of ``real`` below that
    directory is a directory or the file itself, not a link (it is a real path), so the
    manifest's entry names this very file, hashed a moment before."""
    parent = os.path.dirname(real)
    while True:
        manifest = directories.get(parent)
        if manifest is not None:
            listed = manifest.lookup(os.path.relpath(real, parent).replace(os.sep, "/"))
            return {"blake3": listed[2], "size": listed[3]} if listed is not None and listed[1] == "file" else None
        above = os.path.dirname(parent)
        if above == parent:
            return None
        parent = above


def _plain(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A digest entry as a record keeps it: blake3, size, and ``"type": "dir"`` for a directory."""
    plain = {"blake3": entry["blake3"], "size": int(entry["size"])}
    if entry.get("type") == "dir":
        plain["type"] = "dir"
    return plain


def _unique(paths: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(normalize_path(p) for p in paths))


def entries_of(artifacts: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """Record entries of hashed paths: each by its real path, and, where the path as hashed
    went through a symbolic link, by that path too, as an alias (for `run` and `adopt`)."""
    entries: dict[str, dict[str, Any]] = {}
    for artifact in artifacts:
        real = os.path.realpath(artifact.path)
        entries[real] = artifact.entry()
        if real != artifact.path:
            entries[artifact.path] = {**artifact.entry(), "alias_of": real}
    return entries


def manifest_records_of(artifacts: Iterable[Any]) -> list[Record]:
    """The manifest records of the directories among ``artifacts`` (each once)."""
    found = {a.blake3: a.manifest for a in artifacts if isinstance(a, DirectoryArtifact)}
    return [manifest_record(m) for m in found.values()]
