"""Text that is not UTF-8 from where a ``lineage-ledger run`` task ran: Linux names (user,
host, directories, arguments, environment variables) are bytes, the ledger stores text.

Found by the lead: ``LOGNAME=$'\\xff' lineage-ledger run -- true`` ran the command, then said
``unexpected ValueError: not valid UTF-8 text`` (exit 2) and recorded nothing; so did a
command line that is not UTF-8 and a working directory whose name is not. What describes a
task (user, host, working directory, conda prefix, the command line) is now kept in the
escape docs/guide.md describes (``\\xNN`` for each byte that is not UTF-8, backslashes
doubled, the field named in ``escaped``); names the ledger keys by (inputs, outputs) and names
the user chooses (``-n``, ``--run-id``, ``--param``) are refused before the command runs.

Real ``lineage-ledger`` processes, given the bytes as a shell gives them (``os.fsencode``).
"""

from __future__ import annotations

import json
import os
import re
import sys

import pytest

from tests.conftest import run_cli

BYTE = "\udcff"  # the byte 0xff, as Python reads it from the OS (surrogateescape)


def unescape(text: str) -> bytes:
    """The bytes an escaped field stood for, as docs/guide.md tells a reader to get them."""
    return re.sub(rb"\\(\\|x([0-9a-f]{2}))",
                  lambda m: bytes([int(m.group(2), 16)]) if m.group(2) else b"\\", text.encode("utf-8"))


def _records(cwd, ledger) -> list[dict]:
    shown = run_cli("log", "--json", "-n", "0", "--ledger", str(ledger), cwd=cwd, check_rc=0)
    return [json.loads(line) for line in shown.stdout.splitlines()]


def _run(workdir, *args, env=None, cwd=None):
    ledger = workdir / "ledger.db"
    done = run_cli("run", "--ledger", str(ledger), *args, cwd=cwd or workdir, env=env, errors="surrogateescape")
    return done, ledger


def test_a_user_name_that_is_not_utf8_is_recorded_escaped(workdir):
    done, ledger = _run(workdir, "-n", "t", "--", "touch", "ran", env={"LOGNAME": "a\\b" + BYTE, "USER": "x"})
    assert done.returncode == 0, done.stderr
    assert (workdir / "ran").exists()
    [record] = _records(workdir, ledger)
    environment = record["environment"]
    assert environment["user"] == "a\\\\b\\xff"  # the backslash doubled, the byte \xff
    assert environment["escaped"] == ["user"]
    assert unescape(environment["user"]) == b"a\\b\xff"  # lossless: the bytes come back
    assert "escaped" not in record["extra"]


def test_a_conda_prefix_that_is_not_utf8_is_recorded_escaped(workdir):
    done, ledger = _run(workdir, "--", "true", env={"CONDA_PREFIX": "/opt/c" + BYTE})
    assert done.returncode == 0, done.stderr
    [record] = _records(workdir, ledger)
    assert record["environment"]["conda_env"] == "/opt/c\\xff"
    assert record["environment"]["escaped"] == ["conda_env"]


def test_a_command_line_that_is_not_utf8_is_recorded_escaped(workdir):
    done, ledger = _run(workdir, "-n", "t2", "--", "sh", "-c", 'printf "%s" "$1" > out', "sh", "a\\b",
                        "c" + BYTE)
    assert done.returncode == 0, done.stderr
    assert (workdir / "out").read_bytes() == b"a\\b"  # it ran, with its arguments as given
    [record] = _records(workdir, ledger)
    argv = record["extra"]["argv"]
    assert argv == ["sh", "-c", 'printf "%s" "$1" > out', "sh", "a\\\\b", "c\\xff"]
    assert record["extra"]["escaped"] == ["argv"]
    assert [unescape(arg) for arg in argv][-2:] == [b"a\\b", b"c\xff"]
    again, _ = _run(workdir, "-n", "t2", "--", "sh", "-c", 'printf "%s" "$1" > out', "sh", "a\\b", "c" + BYTE)
    assert again.returncode == 0, again.stderr
    first, second = _records(workdir, ledger)
    assert first["code_digest"] == second["code_digest"]  # deterministic


def test_a_program_whose_name_is_not_utf8_is_recorded_under_an_escaped_task_name(workdir):
    (workdir / "bin").mkdir()
    os.symlink("/bin/sh", os.path.join(os.fsencode(workdir), b"bin", b"prog\xff"))
    path = f"{workdir / 'bin'}{os.pathsep}{os.environ['PATH']}"
    done, ledger = _run(workdir, "--", "prog" + BYTE, "-c", "touch ran", env={"PATH": path})
    assert done.returncode == 0, done.stderr
    [record] = _records(workdir, ledger)
    assert record["task_name"] == "prog\\xff"
    assert record["extra"]["escaped"] == ["argv", "task_name"]


def test_a_working_directory_that_is_not_utf8_is_recorded_escaped(workdir):
    here = workdir / ("d" + BYTE)
    here.mkdir()
    done, ledger = _run(workdir, "--", "touch", "ran", cwd=here)
    assert done.returncode == 0, done.stderr
    [record] = _records(workdir, ledger)
    assert record["extra"]["cwd"] == str(workdir).replace("\\", "\\\\") + "/d\\xff"
    assert record["extra"]["escaped"] == ["cwd"]


def test_the_default_ledger_in_a_working_directory_that_is_not_utf8_is_refused_before_the_command_runs(workdir):
    # The ledger is named by its path (its spool directory, its trust state): one that is not
    # UTF-8 has no such name. Said clearly, before the command runs; --ledger elsewhere records.
    here = workdir / ("d" + BYTE)
    here.mkdir()
    done = run_cli("run", "--", "touch", "ran", cwd=here, errors="surrogateescape")
    assert done.returncode == 2, done.stderr
    assert "unexpected" not in done.stderr and "not valid UTF-8" in done.stderr and "--ledger" in done.stderr
    assert not (here / "ran").exists()


@pytest.mark.parametrize("option", ["-n", "--run-id", "LINEAGE_RUN_ID"])
def test_a_name_the_user_chooses_that_is_not_utf8_is_refused_before_the_command_runs(workdir, option):
    given = "n" + BYTE
    args, env = ((option, given), None) if option.startswith("-") else ((), {option: given})
    done, ledger = _run(workdir, *args, "--", "touch", "ran", env=env)
    assert done.returncode == 2, done.stderr
    assert "unexpected" not in done.stderr and "not valid UTF-8" in done.stderr, done.stderr
    assert not (workdir / "ran").exists()  # refused before it ran: nothing to lose


@pytest.mark.parametrize("option", ["-i", "-o"])
def test_an_input_or_output_that_is_not_utf8_is_refused_before_the_command_runs(workdir, option):
    name = workdir / ("f" + BYTE)
    name.write_text("x")
    done, _ = _run(workdir, option, str(name), "--", "touch", "ran")
    assert done.returncode == 2, done.stderr
    assert "the file name is not valid UTF-8" in done.stderr and "unexpected" not in done.stderr
    assert not (workdir / "ran").exists()


def test_a_script_named_on_the_command_line_that_is_not_utf8_is_refused_before_it_runs(workdir):
    # The code digest names each script file the command line names, by its path, as records
    # name files: one that is not UTF-8 is refused as an input would be (rename it).
    script = workdir / ("s" + BYTE + ".sh")
    script.write_text("touch ran\n")
    done, _ = _run(workdir, "--", "sh", str(script))
    assert done.returncode == 2, done.stderr
    assert "the file name is not valid UTF-8" in done.stderr and "unexpected" not in done.stderr
    assert not (workdir / "ran").exists()


def test_a_host_name_that_is_not_utf8_is_recorded_escaped(workdir):
    # A UTS namespace of its own (root, or user namespaces allowed): the host name is bytes.
    script = ("import socket, subprocess, sys; socket.sethostname(b'h\\xff'); "
              "sys.exit(subprocess.run(sys.argv[1:]).returncode)")
    ledger = workdir / "ledger.db"
    done = run_cli("run", "--ledger", str(ledger), "--", "touch", "ran", cwd=workdir,
                   prefix=("unshare", "--uts", "--map-root-user", sys.executable, "-c", script))
    if not (workdir / "ran").exists() and done.returncode != 0:
        pytest.skip(f"no UTS namespace here: {done.stderr.strip()[-200:]}")
    assert done.returncode == 0, done.stderr
    [record] = _records(workdir, ledger)
    assert record["environment"]["host"] == "h\\xff"
    assert record["environment"]["escaped"] == ["host"]


def test_adopt_by_a_user_whose_name_is_not_utf8_is_recorded_escaped(workdir):
    (workdir / "f.txt").write_text("x")
    ledger = workdir / "ledger.db"
    done = run_cli("adopt", "--ledger", str(ledger), "f.txt", cwd=workdir, env={"LOGNAME": "u" + BYTE},
                   errors="surrogateescape")
    assert done.returncode == 0, done.stderr
    [record] = _records(workdir, ledger)
    assert record["extra"]["adopted_by"].startswith("u\\xff@")
    assert record["extra"]["escaped"] == ["adopted_by"]
    assert record["environment"]["user"] == "u\\xff"


def test_an_adopt_note_that_is_not_utf8_is_refused(workdir):
    (workdir / "f.txt").write_text("x")
    ledger = workdir / "ledger.db"
    done = run_cli("adopt", "--ledger", str(ledger), "f.txt", "--note", "n" + BYTE, cwd=workdir,
                   errors="surrogateescape")
    assert done.returncode == 2, done.stderr
    assert "unexpected" not in done.stderr and "--note" in done.stderr and "not valid UTF-8" in done.stderr
