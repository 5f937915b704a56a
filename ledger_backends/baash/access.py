"""Who may talk to the service, and how: Unix sockets in private directories, peer credentials, roles.

Clients reach the daemon over a Unix socket whose directory is created 0700 (0710 with a
``--socket-group``, whose members may then reach the socket). The kernel tells the
daemon each peer's uid (``SO_PEERCRED``), which is looked up in the allow-list. Roles
follow Table 1 of the Fabric resource-sharing paper (docs/baash.md):

===========  =============================================================
role         may
===========  =============================================================
admin        read; register and revoke clients (READ-only transactions)
provider     read; append (an HPC system's workflow services)
user         read; append (a scientist's runs)
===========  =============================================================

The service's own uid is ``admin`` and ``provider`` unless ``--allow`` says otherwise.
Everyone else is refused, with a message that names the role an operation needs.
The control channel to the MPI job is another Unix socket, in a 0700 directory of its own,
and it accepts only peers of the daemon's own uid.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import socket
import stat
import struct
import threading
from collections.abc import Iterable

from lineage_ledger._errors import ConfigError

from ._wire import ROLES, Enum, Int, List, WireError, canonical, decode

__all__ = ["AccessList", "NEEDS", "PERMITS", "bind_unix", "needed_roles", "parse_allow", "peer_uid",
           "private_dir", "service_uids", "unsafe_directory", "write_replace"]

PERMITS: dict[str, frozenset[str]] = {
    "admin": frozenset({"read", "register"}),
    "provider": frozenset({"read", "append"}),
    "user": frozenset({"read", "append"}),
}
#: client operation -> the permission it needs (None: any identity on the allow-list)
NEEDS: dict[str, str | None] = {
    "append": "append", "register": "register", "revoke": "register",
    "head": "read", "blocks": "read", "record_count": "read", "known": "read", "find": "read",
    "by_run": "read", "by_id_prefix": "read", "status": "read", "ledgers": "read", "checkpoint": "read",
    "ping": None, "whoami": None,
}
_ENTRY_ROLES = List(Enum(*ROLES), len(ROLES))


def needed_roles(permission: str | None) -> list[str]:
    return [role for role in ROLES if permission is None or permission in PERMITS[role]]


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket, as the kernel saw it connect."""
    _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                          struct.calcsize("3i")))
    return uid


def unsafe_directory(directory: str, owners: set[int]) -> str | None:
    """Why someone outside ``owners`` could have made, filled or swapped ``directory`` (links
    resolved), or None: it and every directory above it must belong to one of ``owners`` and
    be writable by no one else, but for a sticky one (``/tmp``) whose entry on the way
    belongs to root or this process's user (no one else can replace that entry)."""
    me = os.getuid()
    path = os.path.realpath(directory)
    child: os.stat_result | None = None  # the entry below ``path`` on the way down
    try:
        while True:
            info = os.stat(path)
            if info.st_uid not in owners:
                return f"{path} belongs to uid {info.st_uid}"
            if info.st_mode & 0o022 and not (info.st_mode & stat.S_ISVTX and child is not None
                                             and child.st_uid in (0, me)):
                return f"others can write {path} (mode {stat.S_IMODE(info.st_mode):o})"
            parent = os.path.dirname(path)
            if parent == path:
                return None
            path, child = parent, info
    except OSError as exc:  # a directory we may not look at: nothing is known about it
        return f"cannot look at {path}: {exc.strerror}"


def service_uids(socket_path: str) -> set[int]:
    """The uids a client takes for the service listening at ``socket_path``: its own, root's,
    and the owner of the socket's directory where no one else could have made or filled that
    directory (:func:`unsafe_directory`). In world-writable /tmp anyone can make
    ``/tmp/lineage-ledger-baash-<uid>/`` before the service does, so there only the
    client's own service (or root's) is believed."""
    trusted = {os.getuid(), 0}
    directory = os.path.dirname(os.path.realpath(socket_path))
    try:
        owner = os.stat(directory).st_uid
    except OSError:
        return trusted
    return trusted if unsafe_directory(directory, trusted | {owner}) else trusted | {owner}


def _check_entries(value: object, path: str) -> list[tuple[int, list[str]]]:
    if type(value) is not list or len(value) > 1 << 16:
        raise WireError(f"{path}: expected a list of [uid, roles] entries")
    out = []
    for i, item in enumerate(value):
        if type(item) is not list or len(item) != 2:
            raise WireError(f"{path}[{i}]: expected [uid, roles]")
        out.append((Int(0, (1 << 32) - 2)(item[0], f"{path}[{i}].uid"), _ENTRY_ROLES(item[1], f"{path}[{i}].roles")))
    return out


def write_replace(path: str, data: bytes, mode: int) -> None:
    """Write ``path`` whole or not at all, through a new file beside it (never a link's
    target). A write cut short (a full disk returns a count, not an error) is finished or
    fails; a failed one removes its temporary file: left behind, it made every later write
    of the process fail on O_EXCL."""
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


_ACCESS_FILE = {"access": {"entries": _check_entries}}


class AccessList:
    """uid -> roles, kept in ``DIR/access.json`` (0600, owned by the service's user)."""

    def __init__(self, path: str | None, *, owner: int | None = None, overrides: dict[int, set[str]] | None = None) -> None:
        self.path = path
        self.owner = os.getuid() if owner is None else owner
        self._lock = threading.Lock()
        self.roles: dict[int, frozenset[str]] = {}
        stored: dict[int, frozenset[str]] | None = None
        if path is not None:
            stored = self._load(path)
            self.roles.update(stored)
        for uid, roles in (overrides or {}).items():
            self._set(self.roles, uid, roles)
        if self.owner not in self.roles:
            self.roles[self.owner] = frozenset({"admin", "provider"})
        if path is not None and (stored != self.roles or not os.path.lexists(path)):
            # Only a change is written: a restart on a full disk must still serve the ledger.
            try:
                self._save(self.roles)
            except OSError as exc:
                raise ConfigError(f"cannot write the BAASH allow-list {path}: {exc.strerror}; "
                                  "refusing to start") from exc
        elif path is not None and os.stat(path).st_mode & 0o077:
            with contextlib.suppress(OSError):  # read-only storage: it is served as it is
                os.chmod(path, 0o600)  # private, as a written one is

    def of(self, uid: int) -> frozenset[str]:
        return self.roles.get(uid, frozenset())

    def allows(self, uid: int, permission: str | None) -> bool:
        roles = self.of(uid)
        return bool(roles) and (permission is None or any(permission in PERMITS[r] for r in roles))

    def register(self, uid: int, roles: Iterable[str]) -> frozenset[str]:
        with self._lock:
            changed = dict(self.roles)
            self._set(changed, uid, set(roles))
            self._save(changed)  # kept first: a change that could not be saved is not made
            self.roles = changed
            return self.of(uid)

    def revoke(self, uid: int) -> None:
        with self._lock:
            changed = {u: r for u, r in self.roles.items() if u != uid}
            self._save(changed)
            self.roles = changed

    @staticmethod
    def _set(table: dict[int, frozenset[str]], uid: int, roles: set[str]) -> None:
        unknown = roles - set(ROLES)
        if unknown:
            raise ConfigError(f"unknown role {sorted(unknown)[0]!r}; roles are {', '.join(ROLES)}")
        if roles:
            table[uid] = frozenset(roles)
        else:
            table.pop(uid, None)

    @staticmethod
    def _load(path: str) -> dict[int, frozenset[str]]:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ConfigError(f"cannot open the BAASH allow-list {path}: {exc} (a link is not followed)") from exc
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
                raise ConfigError(f"the BAASH allow-list {path} must be a regular file owned by uid {os.getuid()} "
                                  f"and writable by nobody else (found uid {info.st_uid}, mode "
                                  f"{stat.S_IMODE(info.st_mode):o}); refusing to start")
            data = os.read(fd, 1 << 22)
        finally:
            os.close(fd)
        try:
            entries = decode(data, _ACCESS_FILE)["entries"]  # type: ignore[arg-type]
        except WireError as exc:
            raise ConfigError(f"the BAASH allow-list {path} is malformed: {exc}") from exc
        return {uid: frozenset(roles) for uid, roles in entries if roles}

    def _save(self, roles: dict[int, frozenset[str]]) -> None:
        if self.path is None:
            return
        body = canonical({"kind": "access", "v": 1,
                          "entries": [[uid, sorted(r)] for uid, r in sorted(roles.items())]})
        write_replace(self.path, body, 0o600)


def parse_allow(values: Iterable[str]) -> dict[int, set[str]]:
    """``USER:ROLE[,ROLE]`` (USER a name or a uid; no role: refused) -> {uid: roles}."""
    out: dict[int, set[str]] = {}
    for value in values:
        who, sep, roles_text = value.partition(":")
        if not sep or not who:
            raise ConfigError(f"--allow {value!r}: expected USER:ROLE[,ROLE], e.g. alice:user")
        roles = {r.strip() for r in roles_text.split(",") if r.strip()}
        unknown = roles - set(ROLES)
        if unknown:
            raise ConfigError(f"--allow {value!r}: unknown role {sorted(unknown)[0]!r}; roles are {', '.join(ROLES)}")
        out[resolve_user(who)] = roles
    return out


def resolve_user(who: str) -> int:
    if who.isdigit():
        return int(who)
    try:
        return pwd.getpwnam(who).pw_uid
    except KeyError:
        raise ConfigError(f"no user named {who!r} on this machine") from None


def private_dir(path: str, *, group: int | None = None) -> str:
    """Create ``path`` as a directory only this uid (and ``group``, to reach sockets by name)
    can enter: mode 0700, or 0710 with the group. An existing one must be a real directory
    owned by this uid that no other user can write; its mode is left as it is. (It was
    taken over, made 0700: ``--socket /tmp/baash.sock`` run as root made /tmp 0700 for
    the whole machine, and a socket in a home directory closed the home to everyone.)
    Anything else (a link, another owner, a directory others may write) is refused."""
    try:
        os.mkdir(path, 0o700)
        made = True
    except FileExistsError:
        made = False
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise ConfigError(f"{path} exists but is not a directory owned by uid {os.getuid()} "
                          f"(found uid {info.st_uid}, mode {info.st_mode:o}); refusing to use it")
    if not made:
        group_may_write = info.st_mode & stat.S_IWGRP and (group is None or info.st_gid != group)
        if info.st_mode & stat.S_IWOTH or group_may_write:
            raise ConfigError(
                f"{path} can be written by other users (mode {stat.S_IMODE(info.st_mode):o}), who could replace "
                "the socket there; refusing to use it, and its mode is left as it is: name a socket in a "
                "directory only this user can write (a new one is made 0700; without --socket, "
                "$XDG_RUNTIME_DIR/lineage-ledger-baash)")
        return path
    os.chmod(path, 0o700, follow_symlinks=False)
    if group is not None:
        os.chown(path, -1, group, follow_symlinks=False)
        os.chmod(path, 0o710, follow_symlinks=False)
    return path


def bind_unix(path: str, *, group: int | None = None) -> socket.socket:
    """A listening Unix socket at ``path``, inside a private directory (see :func:`private_dir`)."""
    if len(os.fsencode(path)) >= 107:
        raise ConfigError(f"socket path {path!r} is too long for a Unix socket (at most 107 bytes)")
    private_dir(os.path.dirname(path) or ".", group=group)
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise ConfigError(f"{path} exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # a stale socket of a service that is gone
        else:
            raise ConfigError(f"another BAASH service is serving at {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o660 if group is not None else 0o600)
        if group is not None:
            os.chown(path, -1, group)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock
