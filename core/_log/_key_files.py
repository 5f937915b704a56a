"""Key files: a new key pair written to disk, and keys read back from their files.

The private key file is 0600 whatever the umask, and neither file of a pair overwrites
anything (a key lost to an overwrite cannot sign again, and a signature made with a replaced
key proves nothing). Files are read with a size bound, and every error names the file but
never the key it holds (see :mod:`._note_keys` for the key texts).
"""

from __future__ import annotations

import os
import stat

from .._errors import ConfigError
from ._note_keys import Signer, Verifier, generate_key, parse_signer, parse_verifier

__all__ = ["load_signer", "load_verifier", "load_verifiers", "write_keypair"]

_MAX_KEY_FILE = 4096
#: A list of public keys, one a line (BAASH's ranks.pub: one a rank, ~70 bytes each): 4 KiB
#: refused about 60 of them (tests/test_trust_attacks_pubkey.py); this is BAASH's own bound.
_MAX_KEY_LIST = 1 << 20


def _create(path: str, data: str, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise ConfigError(f"{path} exists; refusing to overwrite a key file") from None
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed it; make it exactly this
        with os.fdopen(fd, "wb", closefd=False) as handle:  # every byte, however many writes it takes
            handle.write(data.encode("utf-8"))
        os.fsync(fd)
    except OSError as exc:
        # A full disk, a quota: the file just made (ours, empty or cut short) goes, so that the
        # same name can be given again once there is room; it was left, and keygen then refused
        # it ("exists"), after an "unexpected OSError" naming no file.
        os.close(fd)
        os.unlink(path)
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
    os.close(fd)


def write_keypair(path: str | os.PathLike[str], name: str) -> tuple[str, str]:
    """Write a new key pair: ``path`` (private, 0600) and ``path + '.pub'`` (0644).

    Neither file may exist. Returns the two paths.
    """
    private_path = os.fspath(path)
    public_path = private_path + ".pub"
    if os.path.lexists(public_path):
        raise ConfigError(f"{public_path} exists; refusing to overwrite a key file")
    private, public = generate_key(name)
    if len((private + "\n").encode("utf-8")) > _MAX_KEY_FILE:  # read back with this bound: never usable
        raise ConfigError(f"the key name is too long ({len(name)} characters): its key file would be larger "
                          f"than a key file may be ({_MAX_KEY_FILE} bytes); give a shorter --name")
    _create(private_path, private + "\n", 0o600)
    try:
        _create(public_path, public + "\n", 0o644)
        # Where another user may write, the pair would be refused on first use (load_signer,
        # load_verifier): said now, and nothing left there (tests/test_trust_attacks_pubkey.py).
        unsafe = _who_else_writes(private_path, os.stat(private_path))
        if unsafe is not None:
            os.unlink(public_path)
            raise ConfigError(f"{private_path}: a key pair in a place other users may write ({unsafe}) is one they "
                              "could replace with their own; write it where only you (or root) may write")
    except ConfigError:
        os.unlink(private_path)  # ours, just created: leave no half pair
        raise
    return private_path, public_path


def _read_key_file(path: str | os.PathLike[str], opened: list[os.stat_result] | None = None,
                   limit: int = _MAX_KEY_FILE) -> str:
    """The key file's text; ``opened`` is given the file's status, as opened (through any link)."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
            if opened is not None:
                opened.append(os.fstat(f.fileno()))
    except OSError as exc:
        raise ConfigError(f"cannot read key file {os.fspath(path)}: {exc.strerror}") from None
    if len(data) > limit:
        raise ConfigError(f"{os.fspath(path)} is too large to be a key file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{os.fspath(path)} is not a key file (not UTF-8 text)") from None


def load_signer(path: str | os.PathLike[str]) -> Signer:
    """The private key in ``path``; ``ConfigError`` if it is unreadable or malformed, or if
    other users may read or write it (as ssh refuses such a key: anyone who read it signs as
    its owner; ``keygen`` writes it 0600): its mode gives it to them, or another user owns it
    (the file, or where a link leads: its owner may read and chmod it whenever they like;
    root reads it whatever its mode, so mode 0600 alone said nothing;
    tests/test_trust_attack_keys.py), or a directory on its way is one they may write."""
    opened: list[os.stat_result] = []
    try:
        signer = parse_signer(_read_key_file(path, opened))
    except ConfigError as exc:
        raise ConfigError(f"{os.fspath(path)}: {exc}") from None
    mode = opened[0].st_mode if opened else 0
    if opened and opened[0].st_uid != os.geteuid():
        raise ConfigError(f"{os.fspath(path)}: a private key that another user owns (uid {opened[0].st_uid}) "
                          "signs for that user too; use a key of your own (`lineage-ledger keygen`)")
    if mode & 0o077:
        raise ConfigError(f"{os.fspath(path)}: a private key that other users may read or write (mode "
                          f"{mode & 0o777:o}) signs for whoever read it; `chmod 600 {os.fspath(path)}` "
                          "if only you have had it, else make a new one (`lineage-ledger keygen`)")
    unsafe = _who_else_writes(path, opened[0]) if opened else None
    if unsafe is not None:  # a directory on its way: tests/test_trust_attacks_pubkey.py
        raise ConfigError(f"{os.fspath(path)}: a private key in a place other users may write ({unsafe}): they "
                          "could have put a key pair of their own there, whose public key you would hand out; "
                          "keep it where only you (or root) may write it")
    return signer


def _group_is_private(gid: int, uid: int) -> bool:
    """Whether group ``gid`` is ``uid``'s own (a user private group, as Debian and Ubuntu give
    each account, whose umask 002 makes files group-writable): named after the user, with no
    other member listed."""
    import grp
    import pwd

    try:
        user, group = pwd.getpwuid(uid).pw_name, grp.getgrgid(gid)
    except KeyError:
        return False
    return group.gr_name == user and set(group.gr_mem) <= {user}


def _has_acl(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` carries an access ACL (POSIX or NFSv4), whose mask the mode's group bits
    then show: group write may be another user's, granted by name."""
    for name in ("system.posix_acl_access", "system.nfs4_acl"):
        try:
            os.getxattr(path, name)
        except OSError:
            continue  # none (ENODATA), or a file system without them (ENOTSUP)
        return True
    return False


def _others_write(st: os.stat_result, uid: int, path: str | os.PathLike[str]) -> str | None:
    """How another user may write the file or directory ``path`` (status ``st``), else None."""
    mode = f"mode {st.st_mode & 0o777:o}"
    if st.st_mode & 0o002:
        return mode
    if st.st_mode & 0o020:
        # The account's private group writes for it alone, unless an ACL's mask is what shows
        # (tests/test_trust_attacks_pubkey.py: an ACL's write for uid 65534 passed as that group's).
        if _has_acl(path):
            return f"{mode}, its group bits an ACL's mask: see getfacl"
        if not _group_is_private(st.st_gid, uid):
            return mode
    return None


def _who_else_writes(path: str | os.PathLike[str], opened: os.stat_result) -> str | None:
    """Why another user could have written the key just read from ``path`` (its status
    ``opened``), None if none could: they own the file (or the file a link leads to), its
    mode lets them write it, or a directory on its way (links resolved) is theirs or one they
    may write and is not sticky, where they could put a file of theirs in its place. Root's
    files and directories are trusted (an administrator installs keys in /etc). A pipe
    (``--pubkey <(...)``) is judged by its owner and mode only: no other user can open it."""
    uid = os.geteuid()
    if opened.st_uid not in (0, uid):
        return f"it belongs to uid {opened.st_uid}"
    if not stat.S_ISREG(opened.st_mode):  # a pipe: no ACL, no directory entry to replace
        return None if not opened.st_mode & 0o022 else f"its mode is {opened.st_mode & 0o777:o}"
    others = _others_write(opened, uid, path)
    if others is not None:
        return f"its {others}"
    real = os.path.realpath(path)
    try:
        found = os.stat(real)
    except OSError:
        found = None
    if found is None or (found.st_dev, found.st_ino) != (opened.st_dev, opened.st_ino):
        return f"{real} was replaced while it was read"
    directory = os.path.dirname(real)
    while True:
        st = os.stat(directory)
        if st.st_uid not in (0, uid):
            return f"the directory {directory} belongs to uid {st.st_uid}"
        others = None if st.st_mode & stat.S_ISVTX else _others_write(st, uid, directory)
        if others is not None:
            return f"the directory {directory} is writable by them ({others})"
        if directory == "/":
            return None
        directory = os.path.dirname(directory)


def _read_public_key_file(path: str | os.PathLike[str], limit: int = _MAX_KEY_FILE) -> str:
    """The text of a public key file that no other user could have written. A key they may
    swap for theirs is refused (tests/test_trust_attacks_pubkey.py): with it they sign a
    checkpoint of a ledger they rewrote, and ``verify-lineage --against --pubkey`` passed it."""
    opened: list[os.stat_result] = []
    text = _read_key_file(path, opened, limit)
    unsafe = _who_else_writes(path, opened[0])
    if unsafe is not None:
        raise ConfigError(f"{os.fspath(path)}: a public key that other users may write ({unsafe}): they could "
                          "swap in a key of their own and sign a checkpoint of a rewritten ledger with it; keep "
                          "the key where only you (or root) may write it")
    return text


def load_verifier(path: str | os.PathLike[str]) -> Verifier:
    """The public key in ``path`` (the ``.pub`` file); ``ConfigError`` if unreadable or
    malformed, or if another user could have written it (:func:`_read_public_key_file`)."""
    text = _read_public_key_file(path)
    if text.startswith("PRIVATE+KEY+"):
        raise ConfigError(f"{os.fspath(path)} holds a private key; give the public key (.pub) file")
    try:
        return parse_verifier(text)
    except ConfigError as exc:
        raise ConfigError(f"{os.fspath(path)}: {exc}") from None


def load_verifiers(path: str | os.PathLike[str]) -> list[Verifier]:
    """Every public key in ``path``: one a line (a ``.pub`` file holds one; a list such as
    BAASH's ``ranks.pub`` holds several). ``ConfigError`` if unreadable or malformed, or if
    another user could have written it."""
    text = _read_public_key_file(path, _MAX_KEY_LIST)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise ConfigError(f"{os.fspath(path)} holds no public key")
    if any(line.startswith("PRIVATE+KEY+") for line in lines):
        raise ConfigError(f"{os.fspath(path)} holds a private key; give the public key (.pub) file")
    try:
        return [parse_verifier(line) for line in lines]
    except ConfigError as exc:
        raise ConfigError(f"{os.fspath(path)}: {exc}") from None
