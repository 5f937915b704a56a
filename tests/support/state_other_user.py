"""Another local user against the account's trusted local state (``core/_log/trust.py``): what
tests/test_state_other_user*.py share.

The state is the tree head an account verified, and the nodes and names beside it, kept
outside the ledger per user; the same state root also holds the stat cache, and reset-trust
forgets what is kept there. Whoever can write that state, or move it aside, makes the account
trust what it finds next: a ledger rewritten in the meantime then verifies (see
docs/security.md, "Trusted state"). So another user must not read or write it, must not be
able to plant it, a link in its place, or a directory above it that they control, and the
account's commands refuse all of these.

CI runs these as root: "another user" is uid 65534 (nobody), in a forked child that drops
root for good (``tests/support/users.as_user``). The account is root itself, which ignores
file modes: what keeps the state private here is ownership checks, not access checks, so they
are exercised for real.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from blake3 import blake3

from lineage_ledger import open_ledger
from tests.conftest import run_cli
from tests.support.factories import artifact, make_record
from tests.support.users import as_user

NOBODY = 65534

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="acting as another uid (65534) needs root; CI runs as root")


def as_nobody(action: Callable[[], object]) -> object:
    """``action()`` run in a forked child that has dropped to uid and gid 65534; its JSON-able
    result. An exception it raises fails the test: expected refusals are caught in ``action``."""
    result = as_user(NOBODY, NOBODY, [], action)
    assert not (isinstance(result, dict) and "crashed" in result), result  # an attempt that was meant to work
    return result


@pytest.fixture(name="public")
def public_fixture():
    """A directory every user may enter and make entries in, sticky, as /tmp is (pytest's own
    tmp is 0700 and would hide everything under it from nobody, whatever the state's modes)."""
    path = Path(tempfile.mkdtemp(prefix="state-other-user-", dir="/tmp"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# -- a ledger, verified, then rewritten consistently ---------------------------------------------
def six_records():
    records, previous = [], artifact("/data/raw", "raw")
    for i in range(6):
        out = artifact(f"/data/step-{i}", f"out{i}")
        records.append(make_record(i, run_id="run", inputs=[previous], outputs=[out]))
        previous = out
    return records


def two_block_ledger(tmp_path: Path) -> str:
    """Two blocks of three records; the building process remembers nothing the tests look at
    (its state is the test's private one, not the directories under test)."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with open_ledger(url, spool=str(tmp_path / "spool")) as ledger:
        records = six_records()
        for start in (0, 3):
            ledger.append_records([r.stored() for r in records[start : start + 3]])
    return url


def rewrite_last_block(tmp_path: Path, url: str) -> None:
    """The last block replaced by one whose ids, root and block id are recomputed: the chain
    verifies on its own, and only a remembered head (or a checkpoint) tells."""
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        last, first = conn.execute("SELECT height, first_seq FROM ll_blocks ORDER BY height DESC LIMIT 1").fetchone()
        conn.execute("DELETE FROM ll_artifacts WHERE seq >= ?", (first,))
        conn.execute("DELETE FROM ll_records WHERE seq >= ?", (first,))
        conn.execute("DELETE FROM ll_blocks WHERE height = ?", (last,))
    forged = six_records()[3:]
    forged[0] = make_record(3, run_id="run", inputs=[artifact("/data/step-2", "out2")],
                            outputs=[artifact("/data/step-3", "forged")])
    with open_ledger(url, spool=str(tmp_path / "spool-forger")) as ledger:
        ledger.append_records([r.stored() for r in forged])


def verify_lineage(tmp_path: Path, url: str, env: dict[str, str]):
    return run_cli("--ledger", url, cwd=tmp_path, program="verify-lineage", env=env)


def ledger_dir(root: Path, url: str) -> Path:
    """Where the account keeps this ledger's state under ``root`` (named by the ledger's identity,
    which anyone who can read the ledger can work out)."""
    from lineage_ledger.backends import open_backend

    with open_backend(url, create=False) as backend:
        identity = backend.identity
    return root / blake3(identity.encode()).hexdigest()[:32]


def assert_refused(result, *why: str) -> None:
    """The command stopped on a configuration error (status 2) that says why."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert all(phrase in result.stderr for phrase in why), (why, result.stderr)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


# -- what nobody plants, and the state roots nobody controls ---------------------------------
def forged_head(url: str) -> bytes:
    """A head as the account would write it, for a ledger of 6 records, whose root is made up."""
    return json.dumps({"origin": _origin(url), "size": 6, "root": "ab" * 32, "blocks": 2, "block_id": "cd" * 32,
                       "verified": "", "audited": "", "names": 0}).encode()


def _origin(url: str) -> str:
    from lineage_ledger.backends import open_backend

    with open_backend(url, create=False) as backend:
        return getattr(backend, "origin", backend.identity)


def state_roots(public: Path, where: str) -> tuple[dict[str, str], Path, Path]:
    """(the account's environment, its state root, the directory nobody owns) for a state root
    that nobody made, or that lies below a directory nobody made."""
    theirs = public / "theirs"
    if where == "LINEAGE_STATE_DIR is theirs":
        return {"LINEAGE_STATE_DIR": str(theirs)}, theirs, theirs
    if where == "XDG_STATE_HOME/lineage-ledger is theirs":
        return {"XDG_STATE_HOME": str(public)}, public / "lineage-ledger", public / "lineage-ledger"
    if where == "XDG_STATE_HOME is theirs":
        return {"XDG_STATE_HOME": str(theirs)}, theirs / "lineage-ledger", theirs
    assert where == "a directory above LINEAGE_STATE_DIR is theirs"
    return {"LINEAGE_STATE_DIR": str(theirs / "deep" / "state")}, theirs / "deep" / "state", theirs


ROOTS = ["LINEAGE_STATE_DIR is theirs", "XDG_STATE_HOME/lineage-ledger is theirs", "XDG_STATE_HOME is theirs",
         "a directory above LINEAGE_STATE_DIR is theirs"]
