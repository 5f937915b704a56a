"""Where a task ran: host, user, Python, and the conda env or container where known."""

from __future__ import annotations

import functools
import os
import re
import stat
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

__all__ = ["ESCAPED", "checked_makedirs", "current_environment", "escape_fields", "escaped_text", "not_utf8",
           "others_control", "state_root"]

#: The key, in a record's ``environment`` or ``extra``, that names the fields written in the
#: escape of :func:`escaped_text` (sorted): their text came from the OS and was not UTF-8.
ESCAPED = "escaped"

# A backslash, and a lone surrogate: what Python makes of a byte that is not UTF-8 in a name
# the OS gives (surrogateescape: the byte 0xNN is U+DCNN), or of another source's broken text.
_TO_ESCAPE = re.compile("[\\\\\ud800-\udfff]")


def _escape_one(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code == 0x5C:
        return "\\\\"
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def not_utf8(text: str) -> bool:
    """Whether ``text`` holds what UTF-8 cannot carry: a lone surrogate, as a name that is not
    UTF-8 gives (``surrogateescape``). Such text has no canonical bytes."""
    if text.isascii():  # most text: at C speed
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def escaped_text(text: str) -> str:
    """``text``, which came from the OS and is not UTF-8, as a record keeps it: each byte
    that is not UTF-8 written ``\\xNN`` (two lowercase hex digits), each backslash ``\\\\``
    (so that the escape is lossless), a lone surrogate no byte gives ``\\uNNNN``; every other
    character as it is. Deterministic: the same bytes, the same text (docs/guide.md)."""
    return _TO_ESCAPE.sub(_escape_one, text)


def escape_fields(values: MutableMapping[str, Any], names: Iterable[str]) -> list[str]:
    """Write the fields ``names`` of ``values`` (a string, or a list of strings as a command
    line) that hold text that is not UTF-8 in the escape of :func:`escaped_text`, in place: a
    list is escaped whole, each of its strings. Returns the names escaped, sorted; the caller
    keeps them under :data:`ESCAPED`, so that a reader knows which text to read back to bytes.
    Text that is UTF-8 is left exactly as it is (and a record of it, as it was)."""
    done = []
    for name in names:
        value = values.get(name)
        if isinstance(value, str):
            if not_utf8(value):
                values[name] = escaped_text(value)
                done.append(name)
        elif isinstance(value, list) and any(isinstance(v, str) and not_utf8(v) for v in value):
            values[name] = [escaped_text(v) if isinstance(v, str) else v for v in value]
            done.append(name)
    return sorted(done)


def _container() -> str | None:
    for variable in ("APPTAINER_CONTAINER", "SINGULARITY_CONTAINER"):
        if os.environ.get(variable):
            return f"apptainer:{os.environ[variable]}"
    if os.path.exists("/.dockerenv"):
        return "docker"
    if os.path.exists("/run/.containerenv"):
        return "podman"
    return None


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry inside some containers
        return str(os.getuid())


@functools.lru_cache(maxsize=1)
def _static() -> dict[str, Any]:
    # The probe's modules are imported when a task is recorded, not by every process that
    # reads a ledger (a CLI start).
    import platform
    import socket

    environment: dict[str, Any] = {
        "host": socket.gethostname(),
        "user": _user(),
        "python": platform.python_version(),
        "platform": f"{sys.platform}-{platform.machine()}",
    }
    conda = os.environ.get("CONDA_PREFIX")
    if conda:
        environment["conda_env"] = conda
    container = _container()
    if container:
        environment["container"] = container
    # Names from the OS are bytes: a user, host or prefix that is not UTF-8 is kept escaped,
    # never refused (the task it describes has run by the time its record is made).
    escaped = escape_fields(environment, list(environment))
    if escaped:
        environment[ESCAPED] = escaped
    return environment


def current_environment(**extra: Any) -> dict[str, Any]:
    """The environment of this process, plus engine-specific entries (a task's conda env or
    container); text that is not UTF-8 in either is escaped (:func:`escape_fields`)."""
    environment = dict(_static())
    plain = ESCAPED not in environment
    for key, value in extra.items():  # the common case, per task: ASCII text, nothing to escape
        if value is not None:
            environment[key] = value
            if type(value) is not str or not value.isascii() or key == ESCAPED:
                plain = False
    if plain:
        return environment
    environment = dict(_static())
    given = {k: v for k, v in extra.items() if v is not None and k != ESCAPED}
    escaped = escape_fields(given, list(given))
    # An engine's entry that takes the place of an escaped one of this process is its own.
    names = sorted({*escaped, *(n for n in environment.get(ESCAPED, ()) if n not in given)})
    environment.update(given)
    environment.pop(ESCAPED, None)
    if names:
        environment[ESCAPED] = names
    return environment


def state_root() -> str:
    """``$LINEAGE_STATE_DIR``, else ``$XDG_STATE_HOME/lineage-ledger``, else ``~/.local/state/lineage-ledger``."""
    explicit = os.environ.get("LINEAGE_STATE_DIR")
    if explicit:
        # A relative one would be a different state in each working directory: a history
        # rewritten after a verification in one would pass as a first audit from another.
        if not os.path.isabs(explicit):
            from ._errors import ConfigError

            raise ConfigError(f"LINEAGE_STATE_DIR must be an absolute path, not {explicit!r}")
        return explicit
    base = os.environ.get("XDG_STATE_HOME")
    if not base or not os.path.isabs(base):  # the XDG spec: a relative value is to be ignored
        home = os.environ.get("HOME")
        if home is not None and not os.path.isabs(home):
            # As a relative LINEAGE_STATE_DIR: HOME=. kept a state in each working directory,
            # and an empty HOME one in /.local (tests/test_trust_attacks_state_home.py).
            from ._errors import ConfigError

            raise ConfigError(f"HOME ({home!r}) is not an absolute path: the verified tree heads kept below it "
                              "would be another state in each working directory; set HOME, or LINEAGE_STATE_DIR "
                              "(or XDG_STATE_HOME), to an absolute path")
        base = os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "lineage-ledger")


def others_control(base: str, *, missing_ok: bool = False) -> str | None:
    """Why another user could rename, replace or write the state root ``base`` (None if none
    can). Each directory and link on the way is looked at as the kernel resolves the path:
    each must be this user's or root's, and a directory writable by others must be sticky
    (as /tmp is) and not the root itself. Otherwise they could move this user's state aside,
    so that the next command trusts whatever it finds, or point the path elsewhere.

    Everything kept in the state root goes through this: the verified tree heads
    (``TrustStore``), ``reset-trust`` before it deletes one, and the stat cache. A component
    that does not exist raises ``FileNotFoundError``; with ``missing_ok`` the walk ends there
    instead, and what it checked is the way to the directory the rest would be created in
    (see :func:`checked_makedirs`)."""
    uid = os.getuid()
    absolute = base if os.path.isabs(base) else os.path.join(os.getcwd(), base)
    pending = [part for part in reversed(absolute.split("/")) if part]
    current, hops = "/", 0
    while True:
        st = os.lstat(current)  # a directory, resolved: checked with what is still to come
        if st.st_uid not in (0, uid) or (not pending and st.st_uid != uid):
            return f"{current} belongs to uid {st.st_uid}"
        if st.st_mode & 0o022 and not (pending and st.st_mode & stat.S_ISVTX):
            return f"{current} is writable by other users"
        if not pending:
            return None
        part = pending.pop()
        if part == "..":
            current = os.path.dirname(current)
        elif part != ".":
            here = os.path.join(current, part)
            try:
                link = os.lstat(here)
            except FileNotFoundError:
                if not missing_ok:
                    raise
                return None  # created below ``current``, which was checked as a directory on the way
            if not stat.S_ISLNK(link.st_mode):
                current = here
            elif link.st_uid not in (0, uid):
                return f"{here} is a link of uid {link.st_uid}"
            elif (hops := hops + 1) > 40:
                return f"{here}: too many levels of symbolic links"
            else:
                target = os.readlink(here)
                pending.extend(reversed([p for p in target.split("/") if p]))
                current = "/" if target.startswith("/") else current


def checked_makedirs(base: str, mode: int = 0o700) -> str | None:
    """Create the directory ``base`` (``mode``; missing parents as ``os.makedirs`` makes them)
    unless another user controls the way to it: why not (from :func:`others_control`), or None
    once it exists and none does. The way is checked before anything is created, so that a
    refusal leaves no empty folders of this user's in another user's tree, and the whole path
    again after, since another user could have made a missing part in between (in a sticky
    directory, as /tmp). Raises ``OSError`` where the directory cannot be made."""
    unsafe = others_control(base, missing_ok=True)
    if unsafe is not None:
        return unsafe
    os.makedirs(base, mode=mode, exist_ok=True)
    return others_control(base)
