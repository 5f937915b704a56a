"""Issue 15, items 1-2 for BAASH: no code on the wire, and only the allow-list's users, in their roles.

The decoders are fuzzed without a service; the rest starts a real one and talks to it as
another uid (``nobody``, from a forked child that drops root), which needs root.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import stat
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lineage_ledger import ConfigError, CorruptStore
from lineage_ledger.backends import open_backend
from lineage_ledger.backends.baash._wire import (
    ANSWERS,
    CLIENT_REQUESTS,
    MAX_FRAME,
    TO_DAEMON,
    TO_GATEWAY,
    WireError,
    block_to_wire,
    decode,
    encode,
    mpi_dumps,
    mpi_loads,
    recv_frame,
)
from lineage_ledger.backends.baash.access import AccessList, bind_unix
from lineage_ledger.backends.baash.storage import SharedStore
from tests.backend_conformance import chain_of
from tests.support.factories import make_records
from tests.support.users import as_user

NOBODY = 65534
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TABLES = {"client": CLIENT_REQUESTS, "answers": ANSWERS, "to_daemon": TO_DAEMON, "to_gateway": TO_GATEWAY}
KINDS = sorted({k for table in TABLES.values() for k in table}) + ["", "nope", "__reduce__"]
FIELDS = sorted({f for table in TABLES.values() for fields in table.values() for f in fields})
CHAIN = chain_of(make_records(6), 3)


class Exploit:
    """Unpickling this creates ``marker``: proof that pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _valid_messages() -> list[tuple[str, bytes]]:
    block = block_to_wire(CHAIN[0])
    return [
        ("client", encode("append", blocks=[block], timeout=5)),
        ("client", encode("find", role="in", path="/data/x", digest=None)),
        ("client", encode("register", uid=1000, roles=["user"])),
        ("answers", encode("blocks", blocks=[block])),
        ("answers", encode("found", found=[[0, 0, block[3][0]]])),
        ("answers", encode("status", status={"job": {"pids": [1, 2]}, "uptime": 1.5})),
        ("to_daemon", encode("hello", pids=[10, 11], restore_seconds=0.1, size=2, clusters=1, mode="baash",
                             subclusters=[[1]], idle=[], head=[0, None], gateway_pid=10)),
        ("to_daemon", encode("result", round_id=1, outcomes=[["committed", ""]],
                             info={"acks": 1, "agreeing": 1, "ways": {"quorum": 1}, "timing": {"decide": 0.1},
                                   "failed_validators": []},
                             checkpoint="lineage-ledger:00\n1\nAAAA\n\n\u2014 baash-rank-0 AAAA\n")),
        ("answers", encode("identity", uid=None, subject="OU=user,CN=alice", roles=["user"])),
        ("answers", encode("checkpoint", origin="lineage-ledger:00", note=None, keys=["baash-rank-0+00+AA"])),
        ("to_gateway", encode("round", round_id=1, blocks=[block], groups=[[0, 1]])),
    ]


VALID = _valid_messages()
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=25)


def _decodes_or_refuses(payload: bytes, table: str) -> None:
    """The decoder's contract: a checked message, or WireError; never another exception."""
    try:
        message = decode(payload, TABLES[table])
    except WireError:
        return
    assert message["kind"] in TABLES[table]


# -- item 1: the decoders, fuzzed -----------------------------------------------------------
def test_valid_messages_round_trip():
    for table, payload in VALID:
        message = decode(payload, TABLES[table])
        assert message["kind"] in TABLES[table]
    assert decode(VALID[0][1], CLIENT_REQUESTS)["blocks"] == [CHAIN[0]]


@FUZZ
@given(payload=st.binary(max_size=400), table=st.sampled_from(sorted(TABLES)))
def test_random_bytes_are_refused(payload, table):
    _decodes_or_refuses(payload, table)


@FUZZ
@given(data=st.data(), table=st.sampled_from(sorted(TABLES)))
def test_messages_with_wrong_kinds_fields_and_types_are_refused(data, table):
    message = {"v": data.draw(st.sampled_from([1, 1, 1, 0, 2, "1", None, 1.0, True])),
               "kind": data.draw(st.sampled_from(KINDS) | st.text(max_size=5) | json_values)}
    for name in data.draw(st.lists(st.sampled_from(FIELDS) | st.text(max_size=6), max_size=5)):
        message[name] = data.draw(json_values)
    if data.draw(st.booleans()):
        del message["v"]
    _decodes_or_refuses(json.dumps(message).encode(), table)


@FUZZ
@given(data=st.data())
def test_valid_messages_mutated_are_refused(data):
    table, payload = data.draw(st.sampled_from(VALID))
    cut = data.draw(st.integers(0, len(payload) - 1))
    with pytest.raises(WireError):  # canonical JSON cut short is never JSON
        decode(payload[:cut], TABLES[table])
    position = data.draw(st.integers(0, len(payload) - 1))
    flipped = payload[:position] + bytes([payload[position] ^ data.draw(st.integers(1, 255))]) + payload[position + 1:]
    _decodes_or_refuses(flipped, table)
    message = json.loads(payload)
    field = data.draw(st.sampled_from(sorted(message)))
    message[field] = data.draw(json_values)
    _decodes_or_refuses(json.dumps(message).encode(), table)


@pytest.mark.parametrize("payload", [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b'{"kind":"status","v":1,"status":' + b"[" * 200 + b"]" * 200 + b"}",
    b'{"kind":"head","v":1,"head":[' + b"9" * 5000 + b',"x"]}',
    b'{"kind":"head","v":1,"head":[1e999,"x"]}',
    b'{"kind":"head","v":1,"head":[NaN,"x"]}',
    b'{"kind":"head","kind":"head","v":1,"head":null}',
    b'{"kind":"head","v":1,"head":null,"extra":1}',
    b'{"kind":"count","v":1}',
    b'{"kind":"head","v":2,"head":null}',
    b'{"kind":"head","v":1,"head":[true,"x"]}',
    b'{"kind":"blocks","v":1,"blocks":[[0,"id","\\u20ac",[]]]}',
    b'{"kind":"blocks","v":1,"blocks":[[0,"id","h",[["r","b","run",[["p"]],[]]]]]}',
    b'\xff\xfe{"kind":"pong","v":1}',
    pickle.dumps(Exploit(Path("/nonexistent/marker"))),
], ids=["deep-lists", "deep-objects", "deep-status", "huge-int", "infinity", "nan", "duplicate-key",
        "unknown-field", "missing-field", "version-2", "bool-for-int", "not-latin1", "short-pair", "utf16",
        "pickle"])
def test_malformed_frames_are_refused(payload):
    with pytest.raises(WireError):
        decode(payload, ANSWERS)


def _frame_from(data: bytes, limit: int = MAX_FRAME) -> bytes:
    left, right = socket.socketpair()
    with left, right:
        left.sendall(data)
        left.shutdown(socket.SHUT_WR)
        return recv_frame(right, limit)


@FUZZ
@given(body=st.binary(max_size=300), cut=st.integers(1, 303))
def test_truncated_frames_are_refused(body, cut):
    frame = struct.pack(">I", len(body)) + body
    if cut >= len(frame):
        assert _frame_from(frame) == body
    else:
        with pytest.raises(WireError, match="truncated"):
            _frame_from(frame[:cut])


def test_oversized_frames_are_refused_before_their_body_is_read():
    with pytest.raises(WireError, match="announced"):
        _frame_from(struct.pack(">I", MAX_FRAME + 1))  # no body follows: it was not waited for
    with pytest.raises(WireError, match="announced"):
        _frame_from(struct.pack(">I", 2000) + b"x" * 2000, limit=1000)
    with pytest.raises(ConnectionError):  # a close between frames is a close, not a malformed frame
        _frame_from(b"")


@FUZZ
@given(value=st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
    | st.binary() | st.sampled_from(CHAIN),
    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner)
    | st.dictionaries(st.integers() | st.text(), inner, max_size=3), max_leaves=12))
def test_the_codec_between_ranks_round_trips(value):
    assert mpi_loads(mpi_dumps(value)) == value


@FUZZ
@given(payload=st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_the_codec_between_ranks_refuses_anything_else(payload):
    try:
        mpi_loads(payload)
    except WireError:
        pass


def test_the_codec_between_ranks_never_unpickles(tmp_path):
    marker = tmp_path / "ran"
    for payload in (pickle.dumps(Exploit(marker)), pickle.dumps(Exploit(marker), protocol=0)):
        with pytest.raises(WireError):
            mpi_loads(payload)
    with pytest.raises(WireError):
        mpi_loads(b'{"D":[true,"quorum",1,1,"",5]}')  # a decision of the wrong shape
    with pytest.raises(WireError):
        mpi_loads(b'{"m":[[[1],2]]}')  # an unhashable key
    with pytest.raises(WireError):
        mpi_dumps(Exploit(marker))  # only the codec's types go out, too
    assert not marker.exists()


def test_planted_files_are_data_not_code(tmp_path):
    """Shared-storage block files and the allow-list are parsed, never unpickled."""
    marker = tmp_path / "ran"
    store = SharedStore(str(tmp_path / "storage"))
    store.commit(CHAIN[:1])
    path = Path(store._path(CHAIN[0].id))
    path.write_bytes(pickle.dumps(Exploit(marker)))
    with pytest.raises(CorruptStore, match="cannot read block"):
        store.get(CHAIN[0].id)
    access = tmp_path / "access.json"
    access.write_bytes(pickle.dumps(Exploit(marker)))
    access.chmod(0o600)
    with pytest.raises(ConfigError, match="malformed"):
        AccessList(str(access))
    assert not marker.exists()


def test_the_allow_list_file_is_private_and_checked(tmp_path):
    path = tmp_path / "access.json"
    access = AccessList(str(path), overrides={1000: {"user"}})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert access.of(os.getuid()) == {"admin", "provider"} and access.of(1000) == {"user"}
    assert AccessList(str(path)).roles == access.roles  # kept across restarts
    path.chmod(0o666)
    with pytest.raises(ConfigError, match="writable by nobody else"):
        AccessList(str(path))
    path.chmod(0o600)
    link = tmp_path / "link.json"
    link.symlink_to(path)
    with pytest.raises(ConfigError, match="link is not followed"):
        AccessList(str(link))


def test_socket_directories_are_private(tmp_path):
    alone = bind_unix(str(tmp_path / "a" / "s.sock"))
    shared = bind_unix(str(tmp_path / "b" / "s.sock"), group=NOBODY)
    with alone, shared:
        assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
        assert stat.S_IMODE((tmp_path / "a" / "s.sock").stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o710
        assert (tmp_path / "b").stat().st_gid == NOBODY
        assert stat.S_IMODE((tmp_path / "b" / "s.sock").stat().st_mode) == 0o660
        with pytest.raises(ConfigError, match="another BAASH service"):
            bind_unix(str(tmp_path / "a" / "s.sock"))
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "planted").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="not a directory owned by"):
        bind_unix(str(tmp_path / "planted" / "s.sock"))


@pytest.mark.parametrize("mode", [0o755, 0o1777, 0o775])
def test_an_existing_socket_directory_keeps_its_mode(tmp_path, mode):
    """A socket named in a directory that exists (a home, /tmp as root): its mode was made
    0700, closing it to every other user (/tmp for the whole machine). Now it is left as it is,
    used where no other user may write it, refused where they may."""
    existing = tmp_path / "existing"
    existing.mkdir()
    existing.chmod(mode)
    if mode & 0o022:
        with pytest.raises(ConfigError, match="can be written by other users"):
            bind_unix(str(existing / "s.sock"))
        assert not (existing / "s.sock").exists()
    else:
        with bind_unix(str(existing / "s.sock")):
            assert stat.S_IMODE((existing / "s.sock").stat().st_mode) == 0o600
    assert stat.S_IMODE(existing.stat().st_mode) == mode


@pytest.mark.parametrize("mode", [0o755, 0o1777])
def test_an_existing_storage_directory_keeps_its_mode(tmp_path, mode):
    """``--storage`` naming a directory that exists (``.``, a home, /tmp as root): it was made
    0700. Now its mode is left as it is; one others may write is refused before anything is
    made in it. What the service makes (blocks/) is private."""
    existing = tmp_path / "existing"
    existing.mkdir()
    existing.chmod(mode)
    if mode & 0o022:
        with pytest.raises(ConfigError, match="refusing to use it"):
            SharedStore(str(existing))
        assert list(existing.iterdir()) == []
    else:
        SharedStore(str(existing))
        assert stat.S_IMODE((existing / "blocks").stat().st_mode) == 0o700
    assert stat.S_IMODE(existing.stat().st_mode) == mode


# -- items 1-2 against a real service ----------------------------------------------------------


def _attempt(call) -> list[str]:
    try:
        value = call()
    except Exception as exc:  # noqa: BLE001 - what happened is the result
        return [type(exc).__name__, str(exc)]
    return ["ok", repr(value)[:200]]


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="talking to the service as another uid needs root "
                                                          "(to fork a child that drops to nobody); CI runs as root")


@pytest.fixture
def public_dir():
    """A directory other users may traverse (pytest's own tmp is 0700): the socket lives under it."""
    path = Path(tempfile.mkdtemp(prefix="baash-sec-", dir="/tmp"))
    path.chmod(0o711)
    yield path
    import shutil

    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def group_service(tmp_path, public_dir):
    from tests.support.baash import BaashService

    service = BaashService(tmp_path, 3, "--socket-group", str(NOBODY), socket=public_dir / "run" / "baash.sock")
    yield service
    service.stop()


@pytest.mark.mpi
@needs_root
def test_another_user_can_neither_read_nor_append(group_service, tmp_path):
    service = group_service
    owner = open_backend(service.url)
    owner.append(CHAIN[:1])
    socket_dir = Path(service.info["socket"]).parent
    assert stat.S_IMODE(socket_dir.stat().st_mode) == 0o710 and socket_dir.stat().st_gid == NOBODY
    intruder = CHAIN[1:]

    def try_everything() -> dict:
        backend = open_backend(service.url)
        return {"head": _attempt(backend.head), "blocks": _attempt(lambda: list(backend.blocks())),
                "find": _attempt(lambda: backend.find("in", path="/data/in-0")),
                "status": _attempt(backend.status), "append": _attempt(lambda: backend.append(intruder)),
                "register": _attempt(lambda: backend.register(NOBODY, ["admin"]))}

    # Not in the socket's group: the kernel refuses at the directory.
    outside = as_user(NOBODY, NOBODY - 1, [], try_everything)
    # In the group, so the socket is reached, but not on the allow-list: the daemon refuses.
    listed_not = as_user(NOBODY, NOBODY, [NOBODY], try_everything)
    for result in (outside, listed_not):
        assert set(result) == {"head", "blocks", "find", "status", "append", "register"}, result
        for op, (outcome, message) in result.items():
            assert outcome == "AccessDenied", (op, outcome, message)
            assert "role" in message and "user" in message, message
    assert "not admit uid 65534" in outside["head"][1]
    assert "uid 65534 may not use this service" in listed_not["append"][1]
    # Nothing it sent was committed.
    assert owner.head().height == 0
    assert owner.known([r.id for b in intruder for r in b.records]) == set()
    assert owner.status()["refused_connections"] >= 6

    # An admin (not a provider or user) reads and registers but cannot append; a user
    # appends and reads but cannot register.
    owner.register(NOBODY, ["admin"])
    admin = as_user(NOBODY, NOBODY, [NOBODY], try_everything)
    assert admin["head"][0] == "ok" and admin["blocks"][0] == "ok" and admin["register"][0] == "ok"
    assert admin["append"][0] == "AccessDenied" and "needs the role provider or user" in admin["append"][1]
    assert owner.head().height == 0
    owner.register(NOBODY, ["user"])
    user = as_user(NOBODY, NOBODY, [NOBODY], try_everything)
    assert user["append"][0] == "ok" and user["head"][0] == "ok", user
    assert user["register"][0] == "AccessDenied" and "needs the role admin" in user["register"][1]
    assert owner.head().height == len(CHAIN) - 1
    assert json.loads((service.storage / "access.json").read_text())["entries"] == [[0, ["admin", "provider"]],
                                                                                    [NOBODY, ["user"]]]
    owner.revoke(NOBODY)
    assert as_user(NOBODY, NOBODY, [NOBODY], try_everything)["head"][0] == "AccessDenied"
    # The control channel is not reachable by another user at all.
    control = service.info.get("control") or owner.status()["control"]
    assert stat.S_IMODE(Path(control).parent.stat().st_mode) == 0o700

    def reach_control() -> dict:
        probe = socket.socket(socket.AF_UNIX)
        return {"connect": _attempt(lambda: probe.connect(control))}

    assert as_user(NOBODY, NOBODY, [NOBODY], reach_control)["connect"][0] == "PermissionError"
    # Without --listen nothing in the daemon listens on TCP (test_baash_tls.py: with it, only mutual TLS).
    assert _tcp_listeners(service.info["pid"]) == []


def _tcp_listeners(pid: int) -> list[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:
                    found.append(fields[1])
    return found


def _send_raw(path: str, payload: bytes, framed: bool = True, wait: float = 3) -> bytes:
    """Send bytes to a Unix socket; whatever comes back before it closes (or ``wait`` s pass)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(wait)
        sock.connect(path)
        try:
            sock.sendall(struct.pack(">I", len(payload)) + payload if framed else payload)
            sock.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except OSError:
            return b""
        return b"".join(chunks)


@pytest.mark.mpi
@needs_root
def test_pickles_sent_to_every_channel_run_nothing(group_service, tmp_path):
    from tests.support.baash import job_back

    service = group_service
    marker = tmp_path / "pickle-ran"
    payloads = [pickle.dumps(Exploit(marker), protocol=p) for p in (0, 2, pickle.HIGHEST_PROTOCOL)]
    backend = open_backend(service.url)
    control = backend.status()["control"]
    for payload in payloads:
        # The client socket, as the owner (an allowed admin and provider) ...
        answer = _send_raw(service.info["socket"], payload)
        assert b"malformed request" in answer and b'"bad_request"' in answer
        _send_raw(service.info["socket"], payload, framed=False)
        # ... and as nobody, in the socket's group but not on the allow-list.
        refused = as_user(NOBODY, NOBODY, [NOBODY],
                          lambda p=payload: {"answer": _send_raw(service.info["socket"], p).decode("latin-1")})
        assert '"forbidden"' in refused["answer"], refused
        # The control channel (only the owner can reach it): read when the job (re)starts, so
        # nothing comes back now. The connection waits in the listen queue with the bytes in
        # it, however long this end waits before it closes (3 s each was 18 of this test's 20 s).
        _send_raw(control, payload, wait=0.5)
        _send_raw(control, payload, framed=False, wait=0.5)
    generation = backend.status()["job"]["generation"]
    os.kill(backend.status()["job"]["pids"][1], signal.SIGKILL)  # the restart reads the queued connections
    job_back(backend, generation, 90, said=service.output)
    backend.append(CHAIN)  # still serving: appends commit and read back
    assert [b.id for b in backend.blocks()] == [b.id for b in CHAIN]
    assert not marker.exists(), "a pickle sent to the service was unpickled"
    assert backend.status()["malformed_requests"] >= 2 * len(payloads)
    assert "dropped a control connection" in service.output()


@pytest.mark.mpi
def test_a_malformed_request_changes_nothing(tmp_path):
    from tests.support.baash import BaashService

    service = BaashService(tmp_path, 2)
    try:
        assert stat.S_IMODE(Path(service.info["socket"]).parent.stat().st_mode) == 0o700
        path = service.info["socket"]
        block = block_to_wire(CHAIN[0])
        wrong = [
            {"kind": "append", "v": 1, "blocks": [[0, block[1], block[2], block[3], "extra"]]},
            {"kind": "append", "v": 1, "blocks": [block], "timeout": "soon"},
            {"kind": "append", "v": 1, "blocks": [block], "as_uid": 0},
            {"kind": "append", "v": 2, "blocks": [block]},
            {"kind": "register", "v": 1, "uid": -1, "roles": ["admin"]},
            {"kind": "register", "v": 1, "uid": 1000, "roles": ["root"]},
        ]
        for message in wrong:
            answer = json.loads(_send_raw(path, json.dumps(message).encode())[4:])
            assert answer["kind"] == "error" and answer["status"] == "bad_request", answer
        backend = open_backend(service.url)
        assert backend.head() is None and backend.whoami() == {"uid": os.getuid(), "subject": None,
                                                               "roles": ["admin", "provider"]}
        assert json.loads((service.storage / "access.json").read_text())["entries"] == [
            [os.getuid(), ["admin", "provider"]]]
    finally:
        service.stop()
