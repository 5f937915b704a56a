"""The connection profile behind a ``fabric://`` URL.

``fabric:///etc/lineage/org1-provider.json?ledger=genomics`` reads a JSON file::

    {
      "endpoint":    "peer0.org1.example.com:7051",   // a peer with the Gateway service
      "tls_ca":      "org1-tlsca.pem",                // CA of that peer's TLS certificate
      "server_name": "peer0.org1.example.com",        // optional: TLS name, if not the host
      "msp_id":      "Org1MSP",
      "certificate": "provider1/cert.pem",            // this client's enrolment certificate
      "private_key": "provider1/key.pem",             // and its P-256 key
      "channel":     "lineage",                       // optional, default "lineage"
      "chaincode":   "lineage",                       // optional, default "lineage"
      "ledger":      "default",                       // optional: several ledgers share a chaincode
      "timeout":     60,                              // optional: seconds per Gateway call
      "endorsers":   {"Org1MSP": "org1-ca.pem",       // optional: the member orgs' MSP root CAs,
                      "Org2MSP": "org2-ca.pem"},      // trusted for endorsed tree heads
      "endorsement_quorum": 2                         // optional: orgs that must sign (default:
    }                                                 // a majority of the endorsers)

Relative paths are taken from the profile's directory. Query parameters of the URL
(``ledger``, ``channel``, ``chaincode``, ``timeout``) override the file.

The private key is refused (:class:`ConfigError`) where another user could put their own key
in its place: a key file that another user may write or owns, or a directory on its path that
another user may write (without the sticky bit, as ``/tmp`` has) or owns; that user's key
would sign for this workflow. A key that others may only read is taken with a warning, once a
process: Fabric's own tools write keys 0644, and one that others have read signs for them too.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, unquote

from lineage_ledger._errors import ConfigError

__all__ = ["ConnectionProfile", "parse_fabric_url", "read_private_key"]

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}\Z")
_REQUIRED = ("endpoint", "tls_ca", "msp_id", "certificate", "private_key")


@dataclass(frozen=True)
class ConnectionProfile:
    endpoint: str
    tls_ca: Path
    msp_id: str
    certificate: Path
    private_key: Path
    channel: str = "lineage"
    chaincode: str = "lineage"
    ledger: str = "default"
    server_name: str | None = None
    timeout: float = 60.0
    #: MSP id -> PEM files of that org's root CAs (``endorsers``); empty: read the channel's.
    endorsers: tuple[tuple[str, tuple[Path, ...]], ...] = ()
    endorsement_quorum: int | None = None

    def read(self, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"fabric profile: cannot read {path}: {exc.strerror}") from exc


_WARNED: set[str] = set()


def read_private_key(path: Path) -> bytes:
    """The key file's bytes, once nothing shows that another user could have put it there
    (see the module docstring); the mode looked at is that of the file opened."""
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            data = handle.read()
    except OSError as exc:
        raise ConfigError(f"fabric profile: cannot read {path}: {exc.strerror}") from exc
    writer = _other_writer(info, f"the private key {path}")
    absolute = os.path.abspath(path)
    for directory in dict.fromkeys([*_parents(absolute), *_parents(os.path.realpath(absolute))]):
        try:
            writer = writer or _other_writer(os.stat(directory), f"the directory {directory}, which holds the "
                                                                  f"private key {path},")
        except OSError:
            continue
    if writer is not None:
        raise ConfigError(f"fabric profile: {writer}: another user could put their own key in its place, and this "
                          f"workflow would sign as them; make it writable by you only (chmod go-w), or move the "
                          "key somewhere only you may write (and enrol again if someone else may have had it)")
    readable = info.st_mode & 0o004 or info.st_mode & 0o040 and not _own_group(info.st_gid)
    if readable and str(path) not in _WARNED:
        _WARNED.add(str(path))
        log.warning("lineage-ledger: other users may read the Fabric private key %s (mode %o): whoever has read it "
                    "signs as you; chmod 600 %s", path, stat.S_IMODE(info.st_mode), path)
    return data


def _parents(path: str) -> list[str]:
    parents: list[str] = []
    while True:
        parent = os.path.dirname(path)
        if parent == path:
            return parents
        parents.append(parent)
        path = parent


def _other_writer(info: os.stat_result, what: str) -> str | None:
    """Why a user other than this one (and root) may write what ``info`` describes, or None.
    A group of this user alone (a user private group: the group named after the user, with
    no other member) counts as this user, as ssh's strict modes count it on Debian."""
    mine = os.geteuid()
    if info.st_uid not in (mine, 0):
        return f"{what} belongs to another user (uid {info.st_uid}), who may write it"
    mode = stat.S_IMODE(info.st_mode)
    if stat.S_ISDIR(info.st_mode) and mode & stat.S_ISVTX:
        return None  # others may add files, not replace this user's
    if mode & 0o002 or mode & 0o020 and not _own_group(info.st_gid):
        return f"{what} is one other users may write (mode {mode:o})"
    return None


def _own_group(gid: int) -> bool:
    import grp
    import pwd

    try:
        user = pwd.getpwuid(os.geteuid())
        group = grp.getgrgid(gid)
    except KeyError:
        return False
    return gid == user.pw_gid and group.gr_name == user.pw_name and set(group.gr_mem) <= {user.pw_name}


def parse_fabric_url(url: str) -> ConnectionProfile:
    rest = url.split("://", 1)[1]
    location, _, query = rest.partition("?")
    if not location:
        raise ConfigError("fabric URL names no connection profile: use fabric:///path/to/profile.json")
    path = Path(unquote(location)).expanduser()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"fabric profile {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ConfigError(f"fabric profile {path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"fabric profile {path} must hold a JSON object")
    overrides = dict(parse_qsl(query, keep_blank_values=True))
    unknown = set(overrides) - {"ledger", "channel", "chaincode", "timeout"}
    if unknown:
        raise ConfigError(f"fabric URL: unknown parameter(s) {', '.join(sorted(unknown))}")
    raw.update(overrides)
    missing = [key for key in _REQUIRED if not raw.get(key)]
    if missing:
        raise ConfigError(f"fabric profile {path} lacks {', '.join(missing)}")
    for key in ("channel", "chaincode", "ledger"):
        if key in raw and not _NAME.match(str(raw[key])):
            raise ConfigError(f"fabric profile: bad {key} name {raw[key]!r} (letters, digits, '.', '_', '-')")
    base = path.parent
    try:
        timeout = float(raw.get("timeout", 60.0))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"fabric profile: timeout must be a number of seconds, got {raw['timeout']!r}") from exc
    endorsers, quorum = _endorsement_settings(raw, base)
    return ConnectionProfile(
        endorsers=endorsers, endorsement_quorum=quorum,
        endpoint=str(raw["endpoint"]), msp_id=str(raw["msp_id"]),
        tls_ca=base / raw["tls_ca"], certificate=base / raw["certificate"], private_key=base / raw["private_key"],
        channel=str(raw.get("channel", "lineage")), chaincode=str(raw.get("chaincode", "lineage")),
        ledger=str(raw.get("ledger", "default")), server_name=raw.get("server_name"), timeout=timeout,
    )


def _endorsement_settings(raw: dict, base: Path) -> tuple[tuple[tuple[str, tuple[Path, ...]], ...], int | None]:
    """``endorsers`` ({MSP id: PEM path or [paths]}) and ``endorsement_quorum`` (an int)."""
    given = raw.get("endorsers", {})
    if not isinstance(given, dict) or not all(isinstance(k, str) and k for k in given):
        raise ConfigError("fabric profile: endorsers must map MSP ids to CA certificate files")
    endorsers = []
    for msp_id, paths in sorted(given.items()):
        paths = [paths] if isinstance(paths, str) else paths
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p for p in paths):
            raise ConfigError(f"fabric profile: endorsers[{msp_id!r}] must name one or more CA certificate files")
        endorsers.append((msp_id, tuple(base / p for p in paths)))
    quorum = raw.get("endorsement_quorum")
    if quorum is not None and (isinstance(quorum, bool) or not isinstance(quorum, int) or quorum < 1):
        raise ConfigError(f"fabric profile: endorsement_quorum must be a whole number >= 1, got {quorum!r}")
    if quorum is not None and endorsers and quorum > len(endorsers):
        raise ConfigError(f"fabric profile: endorsement_quorum {quorum} exceeds the {len(endorsers)} endorsers named")
    return tuple(endorsers), quorum
