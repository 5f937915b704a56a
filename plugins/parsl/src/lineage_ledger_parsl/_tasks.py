"""What a Parsl task reads, writes and runs, as the ledger wants to see it.

Parsl hands an executor only ``func, resource_specification, *args, **kwargs``; the
task's id, try and name live in the DataFlowKernel's task record. Both the executor
wrapper and the memoizer describe a task from that record with the helpers here.
"""

from __future__ import annotations

import ast
import functools
import inspect
import os
import sys
import textwrap
import threading
import weakref
from collections.abc import Iterable, Mapping
from types import FrameType
from typing import Any

from parsl.data_provider.files import File

from lineage_ledger import LedgerError, code_digest, hash_file, jsonable

# Keyword arguments that Parsl itself interprets: they are files or plumbing, not parameters.
_RESERVED = frozenset({
    "inputs", "outputs", "stdout", "stderr", "walltime", "parsl_resource_specification",
    "_parsl_staging_inhibit",
})
_PARAM_TEXT_LIMIT = 200


def local_path(value: Any) -> str | None:
    """The submit-side path of a ``File`` that lives on a POSIX file system, else None."""
    if isinstance(value, File) and value.scheme == "file":
        return value.filepath
    return None


def task_files(args: Iterable[Any], kwargs: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(inputs, outputs): every local ``File`` among the arguments.

    Files in ``outputs=`` are outputs, and so is a ``File`` given as a bash app's ``stdout``
    or ``stderr`` (Parsl opens it ``"w"``: a file the app makes); every other ``File``
    (positional, ``inputs=``, other keywords) is an input. A stream given as a path (a
    string, or ``(path, mode)``, appended to by default) is a log, not data: see
    :func:`stream_paths`.
    """
    inputs: list[str] = []
    outputs: list[str] = []
    for value in args:
        _collect(value, inputs)
    for key, value in kwargs.items():
        if key in STREAMS:
            if isinstance(value, File):
                _collect(value, outputs)
            continue
        _collect(value, outputs if key == "outputs" else inputs)
    return inputs, outputs


STREAMS = ("stdout", "stderr")


def stream_paths(kwargs: Mapping[str, Any]) -> list[str]:
    """The files a bash app's ``stdout``/``stderr`` given as paths (not ``File``s) name, as
    absolute paths: not recorded, but written by the try all the same, so an app that reads
    one later in the run must not find it changed outside the workflow."""
    paths: list[str] = []
    for key in STREAMS:
        value = kwargs.get(key)
        if isinstance(value, File):  # an output (task_files)
            continue
        if isinstance(value, tuple) and len(value) == 2:  # (path, mode); the path may be a File
            value = local_path(value[0]) if isinstance(value[0], File) else value[0]
        if isinstance(value, (str, os.PathLike)):
            try:
                paths.append(os.path.abspath(os.fspath(value)))
            except (TypeError, ValueError):  # bytes, or a NUL: Parsl reports it itself
                continue
    return paths


def _collect(value: Any, into: list[str]) -> None:
    if isinstance(value, (list, tuple)):
        for item in value:
            path = local_path(item)
            if path is not None:
                into.append(os.path.abspath(path))
        return
    path = local_path(value)
    if path is not None:
        into.append(os.path.abspath(path))


def file_digest(path: str) -> dict[str, Any] | None:
    """``{"blake3", "size"}`` of a file as it is now (None if it cannot be hashed), in the
    shape of a record's digests. Only for files a record names outside its inputs and
    outputs (``not_verified_digests``): the capture hashes those."""
    try:
        found = hash_file(path)
    except LedgerError:  # gone, or unreadable: named without a digest
        return None
    return {"blake3": found.blake3, "size": found.size}


def read_digests(inputs: list[str], hashed: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The ``known`` digests of a try's input files as they are right before the try is handed
    to its executor (the memoizer's check, on Parsl's launch thread): a file rewritten while
    the task runs must not be recorded with bytes the task never read (the recording process
    hashes a try's files when it ends; tests/test_parsl_deployed_read_digests.py). ``hashed``:
    those the content key was made of, not read again. Directories, and files not there yet or
    that cannot be hashed, are left to the recording process, as before."""
    found: dict[str, dict[str, Any]] = {}
    for path in dict.fromkeys(inputs):
        artifact = hashed.get(path)
        if artifact is None and not os.path.isdir(path):
            try:
                artifact = hash_file(path)
            except LedgerError:  # not there (yet), unreadable, or a path the ledger cannot name
                continue
        if artifact is not None and not artifact.is_dir:
            found[path] = artifact.entry()
    return found


def unverified_digests(inputs: list[str], outputs: list[str], unverified: Iterable[str]) -> dict[str, Any]:
    """``not_verified_digests`` of a try that lists none of ``unverified``: ``{"inputs": {path:
    digest}, "outputs": {...}}`` for those among ``inputs`` and ``outputs``, as they are now
    (each file hashed once, whatever its roles)."""
    left_out = set(unverified)
    found = {p: file_digest(p) for p in dict.fromkeys([*inputs, *outputs]) if p in left_out}
    return {"inputs": {p: found[p] for p in inputs if p in found},
            "outputs": {p: found[p] for p in outputs if p in found}}


def task_parameters(args: Iterable[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The non-file arguments, each cut to a short stable spelling (arrays must not bloat records)."""
    params: dict[str, Any] = {}
    positional = [_param(v) for v in args if not isinstance(v, File)]
    if positional:
        params["args"] = positional
    for key, value in kwargs.items():
        if key in _RESERVED or isinstance(value, File):
            continue
        params[key] = _param(value)
    return params


def _param(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        if isinstance(value, str) and len(value) > _PARAM_TEXT_LIMIT:
            return value[:_PARAM_TEXT_LIMIT] + "..."
        return jsonable(value)
    if isinstance(value, (list, tuple, dict)) and len(value) <= 32:
        text = repr(value)
        if len(text) <= _PARAM_TEXT_LIMIT:
            return jsonable(value)
    text = repr(value)
    return text if len(text) <= _PARAM_TEXT_LIMIT else text[:_PARAM_TEXT_LIMIT] + "..."


def app_function(func: Any) -> Any:
    """The user's own function under Parsl's wrappers (``wrap_error``, the bash partial, staging)."""
    seen = 0
    while seen < 16:
        seen += 1
        if isinstance(func, functools.partial):
            # A bash app is partial(remote_side_bash_executor, user_function).
            func = func.args[0] if func.args and callable(func.args[0]) else func.func
            continue
        inner = getattr(func, "__wrapped__", None)
        if inner is None:
            return func
        func = inner
    return func


_digests: dict[Any, str | None] = {}
_digests_lock = threading.Lock()
# The callable Parsl hands over (an app's error wrapper, the same object for every call of
# a file-less app) -> its digest, without unwrapping it again; weak, because staging
# wraps the app anew for every task that has files.
_by_callable: weakref.WeakKeyDictionary[Any, str | None] = weakref.WeakKeyDictionary()


def function_digest(func: Any) -> str | None:
    """BLAKE3 of the app's source (for a bash app, its command template); cached per function.

    Staging wraps the app anew for every task, so the cache is keyed by the user's function.
    """
    try:
        return _by_callable[func]
    except (KeyError, TypeError):  # TypeError: a callable that takes no weak reference
        pass
    digest = _user_function_digest(func)
    try:
        _by_callable[func] = digest
    except TypeError:
        pass
    return digest


def _user_function_digest(func: Any) -> str | None:
    user = app_function(func)
    try:
        return _digests[user]
    except (KeyError, TypeError):
        pass
    try:
        digest: str | None = code_digest(app_source(user))
    except (OSError, TypeError):  # built at runtime, no source file: name it instead
        name = f"{getattr(user, '__module__', '?')}.{getattr(user, '__qualname__', repr(user))}"
        digest = code_digest(name)
    try:
        with _digests_lock:
            _digests[user] = digest
    except TypeError:  # unhashable callable
        pass
    return digest


def app_source(func: Any) -> str:
    """The app's own source, from its ``def`` line: the code, and only the code.

    ``inspect.getsource`` starts at the decorators, and ``@python_app(executors=[...],
    cache=True)`` says where and how the app runs, not what it computes: moving an app to
    another executor must not give it another code digest. The source is dedented first, so
    that an app defined inside a function digests like the same app at module level.
    """
    source = textwrap.dedent(inspect.getsource(func))
    try:
        tree = ast.parse(source)
    except SyntaxError:  # a lambda's line, or source inspect cut oddly: keep it whole
        return source
    node = tree.body[0] if tree.body else None
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.decorator_list:
        return "".join(source.splitlines(keepends=True)[node.lineno - 1:])
    return source


def calling_task_record() -> dict[str, Any] | None:
    """The DataFlowKernel's record of the task being submitted, from the ``launch_task`` frame.

    Parsl's executor interface does not pass the task id; ``DataFlowKernel.launch_task``
    calls ``executor.submit`` directly with ``task_record`` as a local, so the wrapper reads
    it from there. None when an executor is driven some other way.

    A copy, as it is at submission: the try's record is made when the try ends, and by then
    the DataFlowKernel may have moved its own record on to the next try (``try_id``). Its
    done callback, which does that for a retry, is not always called after ours: when the
    try ends before the DataFlowKernel adds it, it is called at once on the launch thread,
    while ours still runs on the executor's.
    """
    frame: FrameType | None = sys._getframe(2)
    for _ in range(6):
        if frame is None:
            return None
        if frame.f_code.co_name == "launch_task":
            record = frame.f_locals.get("task_record")
            if isinstance(record, dict) and "id" in record and "try_id" in record:
                return dict(record)
            return None
        frame = frame.f_back
    return None
