"""A ledger whose own path is not UTF-8: the default ledger in a working directory whose name
is not (``$'d\\xff'``), or ``--ledger sqlite:////tmp/$'d\\xff'/l.db``.

A ledger is named by its location (its identity keys the spool, this account's remembered
tree head, the messages that name it), and that name is text. helper-106 found ``run``
refusing such a ledger with a clear message (exit 2) while ``log``, ``verify`` and
``verify-lineage`` ended in ``unexpected UnicodeEncodeError`` and ``adopt`` did too, after
creating ``.lineage/`` and an empty ledger file there. Every command now refuses it the same
way, before anything is created: one message that names the way out (``--ledger`` elsewhere).

Real ``lineage-ledger`` processes, given the bytes as a shell gives them.
"""

from __future__ import annotations

import os

import pytest

from tests.conftest import run_cli

BYTE = "\udcff"  # the byte 0xff, as Python reads it from the OS (surrogateescape)

COMMANDS = {
    "log": ("log",),
    "verify": ("verify",),
    "verify-lineage": ("f.txt",),
    "adopt": ("adopt", "f.txt"),
    "run": ("run", "--", "touch", "ran"),
    "spool ship": ("spool ship",),
    "why": ("why", "f.txt"),
    "show": ("show", "abcd"),
    "reset-trust": ("reset-trust",),
    "repair-index": ("repair-index",),
}

NAMES = sorted(COMMANDS)


def _call(name, here, *ledger, state):
    program = "verify-lineage" if name == "verify-lineage" else "lineage-ledger"
    args = COMMANDS[name]
    if ledger:  # --ledger goes after the command's name (run's before its "--")
        args = (args[0], *ledger, *args[1:]) if program == "lineage-ledger" else (*ledger, *args)
    args = (*args[0].split(), *args[1:])
    return run_cli(*args, program=program, cwd=here, errors="surrogateescape",
                   env={"LINEAGE_STATE_DIR": str(state)})


def _refused(done):
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "unexpected" not in done.stderr, done.stderr
    assert "not valid UTF-8" in done.stderr and "--ledger" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr  # one message, no traceback


@pytest.mark.parametrize("name", NAMES)
def test_the_default_ledger_in_a_directory_that_is_not_utf8_is_refused_by_every_command(workdir, name):
    here = workdir / ("d" + BYTE)
    here.mkdir()
    (here / "f.txt").write_text("x")
    done = _call(name, here, state=workdir / "state")
    _refused(done)
    assert not (here / ".lineage").exists()  # refused before anything was created
    assert not (here / "ran").exists()


@pytest.mark.parametrize("name", NAMES)
def test_a_ledger_url_whose_path_is_not_utf8_is_refused_by_every_command(workdir, name):
    elsewhere = workdir / ("l" + BYTE)
    elsewhere.mkdir()
    (workdir / "f.txt").write_text("x")
    done = _call(name, workdir, "--ledger", f"sqlite:///{elsewhere}/l.db", state=workdir / "state")
    _refused(done)
    assert os.listdir(elsewhere) == []
    assert not (workdir / "ran").exists()


def test_a_ledger_elsewhere_works_from_a_directory_that_is_not_utf8(workdir):
    # The way out the message names: the working directory may be anything.
    here = workdir / ("d" + BYTE)
    here.mkdir()
    ledger = workdir / "ledger.db"
    state = workdir / "state"
    env = {"LINEAGE_STATE_DIR": str(state), "LINEAGE_LEDGER_URL": str(ledger)}
    run_cli("run", "-n", "t", "--", "touch", "ran", cwd=here, env=env, errors="surrogateescape", check_rc=0)
    shown = run_cli("log", cwd=here, env=env, errors="surrogateescape", check_rc=0)
    assert " cli:t [succeeded] " in shown.stdout, shown.stdout
    run_cli("verify", cwd=here, env=env, errors="surrogateescape", check_rc=0)


_PG, _MEMORY = "postgresql://u@127.0.0.1:1/d" + BYTE, "memory://m" + BYTE
# log opens a PostgreSQL ledger through its reader (ledger_backends/_pg_reader.py), which
# connected before any name was worked out: open_backend refuses such a URL first.
URLS = [("run", _PG), ("run", _MEMORY), ("spool ship", _PG), ("spool ship", _MEMORY), ("log", _PG)]


@pytest.mark.parametrize(("name", "url"), URLS)
def test_a_ledger_url_that_is_not_utf8_is_refused_as_a_bad_configuration(workdir, name, url):
    # Not a path: a URL given from bytes (an environment variable, a shell's $'...'). Nothing
    # connects to it (port 1 refuses at once, were it tried).
    done = _call(name, workdir, "--ledger", url, state=workdir / "state")
    assert done.returncode == 2, done.stderr
    assert "unexpected" not in done.stderr and "not valid UTF-8" in done.stderr, done.stderr
    assert not (workdir / "ran").exists()
