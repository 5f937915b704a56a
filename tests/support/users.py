"""Another local user, for tests that run as root: an action run in a forked child that has
dropped to that user's uid (and gid and groups), its result sent back as JSON."""

from __future__ import annotations

import json
import os
from collections.abc import Callable


def as_user(uid: int, gid: int, groups: list[int], action: Callable[[], object]) -> object:
    """``action()`` run as ``uid``; its JSON-able result, or ``{"crashed": "Type: message"}``
    for an exception it raised (the caller decides whether that fails the test)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        try:
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            result = action()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            result = {"crashed": f"{type(exc).__name__}: {exc}"}
        os.write(write, json.dumps(result).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        output = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(output)
