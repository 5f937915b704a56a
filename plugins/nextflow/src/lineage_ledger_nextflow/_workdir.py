"""What a task's work directory says about it, read from the files Nextflow writes there.

Nextflow runs each task in a directory of its own (``work/ab/cdef...``) and writes there:

* ``.command.sh``: the task's script, as run (parameters substituted): its digest is the
  record's ``code_digest``;
* ``.command.run``: the wrapper, whose ``nxf_stage`` function stages every input file into
  the directory (``ln -s SRC NAME`` by default; ``ln``, ``cp -fRL`` or ``rsync`` for the
  other ``stageInMode`` settings); a conda environment appears as an ``activate`` line;
* ``.exitcode``, ``.command.err``, ``.command.out``, ``.command.log``;
* the task's own files.

Inputs are recorded as the real files behind what was staged (a symbolic link is followed
to its target, so an upstream task's output keeps the path its producer recorded); outputs
are the files the task wrote itself: everything else in the directory. A symbolic link the
task made to a file (a reference put into a directory output without a copy) is an output
too, under its own name, with the digest of the file it leads to: that is what a downstream
task reads through it, and what the check before ``-resume`` compares (a link slipped in,
retargeted, or whose file was edited, is then seen as a regular file's change is).

A directory the task made at the top of its work directory (a ``path 'outdir'`` output) is
an output as well, whole, beside its files: the core records it by its manifest, which lists
every file, subdirectory and symbolic link in it, a link by its target text, never followed.
A link to a directory (``ln -s /refs/index outdir/``) or one that leads nowhere is thereby
recorded as the link it is: pointed elsewhere, made to dangle, or slipped in, the directory's
manifest differs, and the check before ``-resume`` and ``verify-lineage`` of the directory
see it. What such a link leads to outside the task's own files is not followed (no loop, no
walk of whatever tree it names). A directory that holds a staged input, or something that
cannot be recorded (a socket, a FIFO, a device, an entry that cannot be read), is left to its
files (``problems`` says why).

Nextflow's own files at the top (:data:`NEXTFLOW_FILES`: the wrapper, the script, the logs,
``.exitcode``) are no output of the task and are in no record nor manifest: ``.command.run``
exports the configuration's ``env`` scope (a token's digest would give a guessable token
away), and a grid executor appends to ``.command.log`` after ``.exitcode`` is written. The
script's digest is the record's ``code_digest``. ``.command.out`` and ``.command.env`` hold
the task's ``stdout`` and ``env`` outputs, which ``-resume`` hands on from the cached
directory: they are outputs. The work directory itself is therefore never recorded whole.

A link the task made directly in its work directory that does not lead to a file (a
``path 'idx'`` output that is itself a link to a directory, a link to nothing) is kept by its
target text in ``links`` (the record's ``extra.links``), never followed (following it could
walk any tree, ``/`` included); the check before ``-resume`` compares it (``_appeared``).

A staged directory gives its files as inputs, links to files followed. A link in it to a
directory, or to nothing, is not followed: the directory's own files are walked once, and
what the link names elsewhere (its parent, ``/``, ``/usr``, a reference) is no input of the
task (its producer's manifest keeps the link; stage a reference as an input of its own to
have it checked). Such a link to outside the directory is named in ``not_followed`` (the
record's ``extra.links_not_followed``): the first :data:`_not_followed.LIMIT` by path, the
others counted in ``not_followed_more``. A staged directory that holds the work directory
(``/``, the launch directory) is not listed (``problems`` says so).
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field

from ._not_followed import capped
from ._stored import stored_outputs
from ._unrecordable import not_utf8, shown

#: Files Nextflow writes at the top of every work directory that are not the task's outputs
#: (``.command.out`` and ``.command.env``, its ``stdout`` and ``env`` outputs, are).
NEXTFLOW_FILES = frozenset({".exitcode", ".command.sh", ".command.run", ".command.err", ".command.log",
                            ".command.begin", ".command.trace", ".command.stub", ".command.in", ".command.ps"})
_STAGE_START = re.compile(r"^\s*nxf_stage\(\)\s*\{\s*$")
# Nextflow 25.04 writes `source $(conda info --json | awk ...)/bin/activate ENV`: the words
# between `source` and `activate` may hold spaces.
_CONDA = re.compile(r"(?:conda|mamba|micromamba)\s+activate\s+(\S+)|\bsource\s+(?:.*?/)?activate\s+(\S+)")
# The image on the container engine's command line (docker/podman: after `--name $NXF_BOXID`;
# singularity/apptainer: the word before the shell it starts).
_CONTAINER = re.compile(r"(?:docker|podman)\s+run\s.*?--name\s+\$NXF_BOXID\s+(\S+)"
                        r"|(?:singularity|apptainer)\s+(?:exec|run)\s.*?\s(\S+)\s+/bin/(?:ba)?sh\b")
#: The staging commands of each stageInMode, and the tail of their argument lists (SRC DST).
_STAGE_COMMANDS = ("ln", "cp", "rsync")


@dataclass
class WorkDir:
    """One task's work directory as found after the task ended."""

    path: str
    script: bytes | None = None  # .command.sh
    staged: dict[str, str] = field(default_factory=dict)  # name in the directory -> source as given
    inputs: list[str] = field(default_factory=list)  # the real files behind the staged ones
    outputs: list[str] = field(default_factory=list)  # files the task wrote
    stored: list[str] = field(default_factory=list)  # those of outputs it stored elsewhere (_stored: storeDir)
    not_utf8: list[str] = field(default_factory=list)  # its files whose path is not UTF-8: in no record
    links: dict[str, str] = field(default_factory=dict)  # a link at the top to no file -> its target text
    not_followed: dict[str, str] = field(default_factory=dict)  # a staged directory's link out of it -> target
    not_followed_more: int = 0  # such links past those kept in not_followed (_not_followed.LIMIT)
    conda: str | None = None
    container: str | None = None
    started: float | None = None  # mtime of .command.begin (the task's script began)
    ended: float | None = None  # mtime of .exitcode
    exit_code: int | None = None  # from .exitcode
    problems: list[str] = field(default_factory=list)  # what could not be read (kept in the record)


def read_workdir(path: str) -> WorkDir:
    """Read ``path``; a missing or unreadable part is noted in ``problems``, never raised."""
    work = WorkDir(path)
    try:
        with open(os.path.join(path, ".command.sh"), "rb") as handle:
            work.script = handle.read()
    except OSError as err:
        work.problems.append(f".command.sh: {err.strerror or err}")
    try:
        with open(os.path.join(path, ".command.run"), encoding="utf-8", errors="replace") as handle:
            wrapper = handle.read()
    except OSError as err:
        wrapper = ""
        work.problems.append(f".command.run: {err.strerror or err}")
    work.staged = staged_files(wrapper)
    work.conda = conda_env(wrapper)
    found = _CONTAINER.search(wrapper)
    work.container = (found.group(1) or found.group(2)) if found else None
    work.started = _mtime(os.path.join(path, ".command.begin"))
    work.ended = _mtime(os.path.join(path, ".exitcode"))
    try:
        with open(os.path.join(path, ".exitcode"), encoding="ascii", errors="replace") as handle:
            text = handle.read().strip()
        work.exit_code = int(text) if text.lstrip("-").isdigit() else None
    except OSError:
        pass  # a task killed before it ended writes none
    not_followed: dict[str, str] = {}
    work.inputs = _input_files(path, work.staged, work.problems, not_followed)
    work.not_followed, work.not_followed_more = capped(not_followed)  # thousands would make a huge record
    written, unrecordable, loose = _walk_written(path, work.staged)
    work.links = _targets(path, loose)
    # The directories first: the capture then takes their files' digests from the manifests
    # instead of reading each file twice.
    work.outputs = _output_directories(path, work.staged, unrecordable) + written
    work.stored = stored_outputs(path, wrapper, work.started)  # storeDir took them out of the directory
    work.outputs += work.stored
    _leave_out_not_utf8(work, unrecordable)
    work.problems.extend(f"{os.path.basename(d)}: recorded file by file only: {why}"
                         for d, why in sorted(unrecordable.items()))
    return work


def _leave_out_not_utf8(work: WorkDir, unrecordable: dict[str, str]) -> None:
    """Take the paths that are not UTF-8 text out of ``work``'s inputs and outputs (a record
    names files by their paths, as text: one such path cost the task's whole record) into
    ``work.not_utf8``, and say so in ``problems``; a directory that holds one is recorded
    file by file only (its manifest would name it)."""
    odd = [p for p in [*work.inputs, *work.outputs] if not_utf8(p)]
    if not odd:
        return
    for output in work.outputs:
        if os.path.dirname(output) != work.path and output.startswith(work.path + os.sep) and not_utf8(output):
            top = os.path.join(work.path, os.path.relpath(output, work.path).split(os.sep, 1)[0])
            unrecordable.setdefault(top, f"{shown(os.path.relpath(output, work.path))}: the name is not valid UTF-8 text")
    work.inputs = [p for p in work.inputs if not not_utf8(p)]
    work.outputs = [p for p in work.outputs if not not_utf8(p) and p not in unrecordable]
    work.stored = [p for p in work.stored if not not_utf8(p)]
    work.not_utf8 = odd
    work.problems.extend(f"{shown(p)}: the file name is not valid UTF-8 text: not recorded (rename it to record it)"
                         for p in odd)


def staged_files(wrapper: str) -> dict[str, str]:
    """``{name: source}`` from the ``nxf_stage`` function of a ``.command.run``."""
    staged: dict[str, str] = {}
    inside = False
    for line in wrapper.splitlines():
        if not inside:
            inside = bool(_STAGE_START.match(line))
            continue
        if line.strip() == "}":
            break
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        if len(words) >= 3 and words[0] in _STAGE_COMMANDS:
            staged[os.path.normpath(words[-1])] = words[-2]
    return staged


def conda_env(wrapper: str) -> str | None:
    match = _CONDA.search(wrapper)
    if match is None:
        return None
    return match.group(1) or match.group(2)


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def _targets(workdir: str, names: list[str]) -> dict[str, str]:
    """``{name: target text}`` of the links ``names`` at the top of ``workdir``."""
    found = {}
    for name in names:
        try:
            found[name] = os.readlink(os.path.join(workdir, name))
        except OSError:
            continue  # gone meanwhile: nothing to keep
    return found


def _input_files(workdir: str, staged: dict[str, str], problems: list[str],
                 not_followed: dict[str, str] | None = None) -> list[str]:
    """The real files behind each staged input; a staged directory gives every file in it
    (:func:`_files_below`), unless it holds the work directory (noted in ``problems``); its
    links out of it that are not followed go to ``not_followed``."""
    files: dict[str, None] = {}
    here = os.path.realpath(workdir)
    for name, source in staged.items():
        target = source if os.path.isabs(source) else os.path.join(workdir, source)
        real = os.path.realpath(target)
        if os.path.isdir(real):
            if _within(here, real):  # '/', the launch directory: the task's own files, and every other's
                problems.append(f"{name}: a staged directory that holds this work directory ({real}): its files "
                                "are not listed")
                continue
            files.update(dict.fromkeys(_files_below(real, not_followed)))
        else:
            files[real] = None  # a source that is gone is recalled from the ledger, or listed unhashed
    return list(files)


def _walk_written(workdir: str, staged: dict[str, str]) -> tuple[list[str], dict[str, str], list[str]]:
    """Regular files below ``workdir``, and links to regular files, that are neither Nextflow's
    (:data:`NEXTFLOW_FILES`, at the top) nor staged inputs; ``{top-level directory: why}`` for
    each directory of ``workdir`` whose manifest cannot be made (it holds a socket, a FIFO, a device or an entry that cannot
    be read); and the names of the links the task made at the top of ``workdir`` that do not
    lead to a regular file (to a directory, to nothing): all in the same walk."""
    skip = {os.path.join(workdir, name) for name in staged}
    written = []
    unrecordable: dict[str, str] = {}
    loose: list[str] = []

    def top(path: str) -> str:
        return os.path.join(workdir, os.path.relpath(path, workdir).split(os.sep, 1)[0])

    def unreadable(err: OSError) -> None:
        if err.filename and os.path.normpath(err.filename) != os.path.normpath(workdir):
            unrecordable.setdefault(top(err.filename), f"{err.filename}: {err.strerror or err}")

    for root, dirs, files in os.walk(workdir, onerror=unreadable):
        dirs[:] = sorted(d for d in dirs if os.path.join(root, d) not in skip)
        for name in dirs if root != workdir else ():  # a manifest names every subdirectory
            if not_utf8(name):
                unrecordable.setdefault(top(root), f"{shown(os.path.relpath(os.path.join(root, name), workdir))}: "
                                                   "the name is not valid UTF-8 text")
        if root == workdir:  # a link to a directory is listed among dirs (and not walked)
            loose.extend(d for d in dirs if os.path.islink(os.path.join(root, d)))
        for name in sorted(files):
            full = os.path.join(root, name)
            if full in skip or (root == workdir and name in NEXTFLOW_FILES):
                continue
            if not os.path.isfile(full):
                # A link to nothing is in the manifest of its directory (at the top, in the work
                # directory's); a socket, a FIFO or a device makes a directory's manifest
                # impossible (the core refuses it).
                if os.path.islink(full):
                    if root == workdir:
                        loose.append(name)
                elif root != workdir:
                    unrecordable.setdefault(top(full), f"{os.path.relpath(full, workdir)} is not a regular file")
                continue
            written.append(full)
    return written, unrecordable, sorted(loose)


def _output_directories(workdir: str, staged: dict[str, str], unrecordable: dict[str, str]) -> list[str]:
    """The directories at the top of ``workdir`` the task made: not Nextflow's staging (a staged
    directory, or one the stager made to put an input in), and not among ``unrecordable``."""
    staging = {name.split(os.sep, 1)[0] for name in staged}
    try:
        with os.scandir(workdir) as scan:
            entries = sorted(scan, key=lambda e: e.name)
    except OSError:
        return []
    return [entry.path for entry in entries
            if entry.name not in staging and entry.path not in unrecordable and entry.is_dir(follow_symlinks=False)]


def _files_below(directory: str, not_followed: dict[str, str] | None = None) -> list[str]:
    """Regular files below ``directory`` (a real path), links to files followed, in walk
    order. A link to a directory, or to nothing, is not followed (no loop, no walk of ``/`` or
    ``/usr``; what it leads to inside ``directory`` is walked anyway); one that leads out of
    ``directory`` goes to ``not_followed`` with its target text."""
    found: list[str] = []
    for root, dirs, files in os.walk(directory):  # a link to a directory is in dirs, not walked
        listed = set(files)
        for name in [*sorted(dirs), *sorted(files)]:
            path = os.path.join(root, name)
            if os.path.isfile(path):
                if name in listed:
                    found.append(path)
                continue
            if os.path.islink(path) and not _within(os.path.realpath(path), directory):
                try:
                    target = os.readlink(path)
                except OSError:
                    continue
                if not_followed is not None:
                    not_followed[path] = target
    return found


def _within(path: str, directory: str) -> bool:
    """Whether ``path`` is ``directory`` or lies below it (both real, normal paths)."""
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def a_link_to_no_file(path: str) -> bool:
    """A symbolic link that does not lead to a regular file (to a directory, to nothing):
    recorded by its target text in a manifest only, never followed."""
    return os.path.islink(path) and not os.path.isfile(path)


def task_key(workdir: str) -> str:
    """The task's full hash, as its work directory spells it (``ab/cdef...`` -> ``abcdef...``)."""
    parent, leaf = os.path.split(os.path.normpath(workdir))
    return os.path.basename(parent) + leaf
