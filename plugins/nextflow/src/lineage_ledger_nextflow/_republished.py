"""What a ``-resume`` publishes for the tasks it takes from the cache.

A resumed run publishes the outputs of its cached tasks again, to wherever ``publishDir``
says now (``-resume --outdir results2``, nf-core's way to get a second copy of the
results). For a cached task Nextflow never overwrites a file already there: it logs the
publication (``publishing file: SRC -[COPY]-> DST``) and keeps what the target holds, an
edit or another run's file included (tested with 25.04.4).

The wrapper recorded the publications of the tasks that ran only: a copy made for a cached
task had no record, ``verify-lineage`` failed it as UNRECORDED and an edit of it went unseen
before the next strict ``-resume``. Now a publication of a cached task to a target the
session's list does not name for it yet is recorded where the target holds what the task's
file holds (Nextflow copied it; a target that was there with the same content holds the
task's output too). A target Nextflow kept with other content is not recorded (a record
would vouch for whatever is there), and the wrapper says so: ``-resume`` left a published
file that is not the task's. Targets the list names were checked before the run, against
their records, so they are not hashed again (the common ``-resume`` into the same
``publishDir`` costs nothing more). Under ``--ledger-policy off`` no list is read and these
publications are not recorded, as before.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

from ._unrecordable import shown

log = logging.getLogger("lineage_ledger.nextflow")

#: Kept targets said one by one; the others counted in one line.
SAID = 5


def cached_owner(source: str, cached: Mapping[str, str]) -> str | None:
    """The work directory of the cached task (``cached``: short hash ``ab/cdef01`` -> name)
    that holds the published ``source``, in its top folder or one below."""
    folder = os.path.dirname(os.path.normpath(source))
    while True:
        parent, leaf = os.path.split(folder)
        if len(leaf) > 6 and f"{os.path.basename(parent)}/{leaf[:6]}" in cached:
            return folder
        if parent == folder:
            return None
        folder = parent


def worth_recording(pairs: Iterable[tuple[str, str]], listed: Iterable[Any]) -> tuple[
        list[tuple[str, str]], dict[str, dict[str, Any]], list[tuple[str, str]]]:
    """Of a cached task's published (source, target) pairs, those to record: (pairs, the
    digests the capture needs not compute again, the pairs whose target Nextflow kept with
    other content). ``listed``: the pairs the session's list names for the task, checked
    before the run."""
    from lineage_ledger import ArtifactError, hash_file

    known_targets = {pair[1] for pair in listed if isinstance(pair, (list, tuple)) and len(pair) == 2}
    chosen: list[tuple[str, str]] = []
    digests: dict[str, dict[str, Any]] = {}
    kept: list[tuple[str, str]] = []
    for source, target in pairs:
        if target in known_targets:
            continue
        try:
            if os.path.samefile(source, target):  # a link, or a hard link: the task's own file
                chosen.append((source, target))
                continue
            made, there = hash_file(source), hash_file(target)
        except (OSError, ArtifactError):
            continue  # gone, or not to be hashed: nothing to vouch for
        if made.blake3 == there.blake3 and made.is_dir == there.is_dir:
            chosen.append((source, target))
            if not made.is_dir:  # a directory's digest is taken again, with its manifest
                digests[source], digests[target] = made.entry(), there.entry()
        else:
            kept.append((source, target))
    return chosen, digests, kept


def say_kept(name: str, kept: list[tuple[str, str]], said: int) -> int:
    """Warn of targets Nextflow kept with other content; returns how many were said in all."""
    for source, target in kept:
        said += 1
        if said <= SAID:
            log.warning("lineage-ledger: task %s (cached): Nextflow kept %s, which does not hold what the task's %s "
                        "holds (a resumed run never overwrites a cached task's published file); not recorded as "
                        "published: remove it and -resume to publish it again", name, shown(target), shown(source))
    return said


def said_more(said: int) -> None:
    if said > SAID:
        log.warning("lineage-ledger: ... and %d more published file(s) of cached tasks that Nextflow kept with other "
                    "content, not recorded as published either", said - SAID)
