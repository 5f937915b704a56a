"""``lineage-ledger keygen`` by a user whose name is not UTF-8, or with a ``--name`` that is not.

The default key name is ``lineage-ledger/USER@HOST``, taken from the environment; a key name
is UTF-8 text in every signature line. ``LOGNAME=$'\\xff' lineage-ledger keygen k`` ended in
``unexpected UnicodeEncodeError`` (exit 2). The user and host names are written in the escape
records use for them (``\\xNN``, docs/guide.md), as ``run`` and ``adopt`` do, so the key is
made and works; a name the user chooses (``--name``) is refused, as ``run -n`` is; a default
name the key rule refuses (a user name with a space) says to give ``--name``.

Real ``lineage-ledger`` processes, given the bytes as a shell gives them.
"""

from __future__ import annotations

from tests.conftest import run_cli

BYTE = "\udcff"  # the byte 0xff, as Python reads it from the OS (surrogateescape)


def _cli(workdir, *args, env=None, check_rc=None):
    return run_cli(*args, cwd=workdir, env={"LINEAGE_STATE_DIR": str(workdir / "state"), **(env or {})},
                   errors="surrogateescape", check_rc=check_rc)


def test_keygen_by_a_user_whose_name_is_not_utf8_makes_a_key_that_signs(workdir):
    (workdir / "raw.txt").write_text("raw\n")
    _cli(workdir, "run", "-i", "raw.txt", "-o", "out.txt", "--", "cp", "raw.txt", "out.txt", check_rc=0)
    done = _cli(workdir, "keygen", "lab.key", env={"LOGNAME": "a\\b" + BYTE, "USER": "x"})
    assert done.returncode == 0, done.stderr
    name = (workdir / "lab.key.pub").read_text().split("+")[0]
    assert name.startswith("lineage-ledger/a\\\\b\\xff@"), name  # the escape of run's records
    _cli(workdir, "checkpoint", "--key", "lab.key", "-o", "head.txt", check_rc=0)
    _cli(workdir, "verify", "--against", "head.txt", "--pubkey", "lab.key.pub", check_rc=0)


def test_keygen_refuses_a_name_given_that_is_not_utf8(workdir):
    done = _cli(workdir, "keygen", "lab.key", "--name", "n" + BYTE)
    assert done.returncode == 2, done.stderr
    assert "unexpected" not in done.stderr and "--name" in done.stderr and "not valid UTF-8" in done.stderr
    assert not (workdir / "lab.key").exists() and not (workdir / "lab.key.pub").exists()


def test_keygen_for_a_user_whose_name_the_key_rule_refuses_says_to_give_a_name(workdir):
    done = _cli(workdir, "keygen", "lab.key", env={"LOGNAME": "a b", "USER": "x"})
    assert done.returncode == 2, done.stderr
    assert "--name" in done.stderr and "'lineage-ledger/a b@" in done.stderr, done.stderr
    assert not (workdir / "lab.key").exists()
