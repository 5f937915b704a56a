"""``lineage-ledger run -o out`` in a working directory whose name is not UTF-8 (``$'d\\xff'``),
the ledger elsewhere.

An output is a ledger key, named by its absolute path; a relative one in such a directory has
no UTF-8 name. An output named so on the command line (``-o $'f\\xff'``) was refused before the
command ran; a relative one was not: the command ran and succeeded, then ``run`` recorded it
as *failed*, said "declared output was not produced" (it was) and exited 2. A relative script
the command line names (``sh s.sh``; its path is in the code digest) ended in ``unexpected
ValueError``. Both are refused before the command runs, as the names that are not UTF-8 are,
with the same message.
"""

from __future__ import annotations

import json

from tests.conftest import run_cli

BYTE = "\udcff"  # the byte 0xff, as Python reads it from the OS (surrogateescape)


def test_a_relative_output_in_a_directory_that_is_not_utf8_is_refused_before_the_command_runs(workdir):
    here = workdir / ("d" + BYTE)
    here.mkdir()
    ledger = workdir / "ledger.db"
    env = {"LINEAGE_STATE_DIR": str(workdir / "state"), "LINEAGE_LEDGER_URL": str(ledger)}
    run_cli("run", "-n", "first", "--", "true", cwd=workdir, env=env, check_rc=0)  # the ledger exists
    done = run_cli("run", "-o", "out", "--", "touch", "out", cwd=here, env=env, errors="surrogateescape")
    assert done.returncode == 2, done.stderr
    assert "the file name is not valid UTF-8" in done.stderr and "d\\\\xff/out" in done.stderr, done.stderr
    assert "not produced" not in done.stderr and "unexpected" not in done.stderr, done.stderr
    assert not (here / "out").exists()  # refused before it ran
    shown = run_cli("log", "--json", "-n", "0", cwd=workdir, env=env, check_rc=0)
    assert [json.loads(line)["task_name"] for line in shown.stdout.splitlines()] == ["first"]  # no 'failed' record


def test_a_relative_script_in_a_directory_that_is_not_utf8_is_refused_as_a_script_named_so_is(workdir):
    # The code digest names each script file the command line names by its absolute path.
    here = workdir / ("d" + BYTE)
    here.mkdir()
    (here / "s.sh").write_text("touch ran\n")
    env = {"LINEAGE_STATE_DIR": str(workdir / "state"), "LINEAGE_LEDGER_URL": str(workdir / "ledger.db")}
    done = run_cli("run", "--", "sh", "s.sh", cwd=here, env=env, errors="surrogateescape")
    assert done.returncode == 2, done.stderr
    assert "the file name is not valid UTF-8" in done.stderr and "d\\\\xff/s.sh" in done.stderr, done.stderr
    assert "unexpected" not in done.stderr, done.stderr
    assert not (here / "ran").exists()


def test_other_commands_refuse_a_relative_name_in_a_directory_that_is_not_utf8(workdir):
    """The check is on the absolute path (normalize_path), for every command, not only run's."""
    here = workdir / ("d" + BYTE)
    here.mkdir()
    (here / "out").write_text("made by hand")
    env = {"LINEAGE_STATE_DIR": str(workdir / "state"), "LINEAGE_LEDGER_URL": str(workdir / "ledger.db")}
    for args in (["hash", "out"], ["adopt", "out"]):
        done = run_cli(*args, cwd=here, env=env, errors="surrogateescape")
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert "the file name is not valid UTF-8" in done.stderr and "unexpected" not in done.stderr, done.stderr
    assert not (workdir / "ledger.db").exists()  # adopt refused it before making a ledger
