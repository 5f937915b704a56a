"""An outside review (session 38) of the exports, the BAASH service and the Fabric back-end, as
an attacker and as a new user would meet them: the real CLI, real ``mpiexec`` ranks.

Each test names one bug found; a bug not fixed yet is a strict xfail whose reason says where
the fix lies. The export tests take about 5 s; the BAASH ones (marked ``mpi``) start a
service each, about 10 s apiece on this 2-core machine.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.conftest import run_cli

SINGLE_FILE_EXPORTS = [
    ("export", "prov-json"), ("export", "prov-n"), ("export", "openlineage"),
    ("graph", "html"), ("graph", "svg"), ("graph", "dot"),
]


def _recorded(base: Path) -> dict[str, str]:
    """One task (``in.txt`` -> ``out.txt``) recorded through the CLI into ``base/ledger.db``;
    the environment that names that ledger."""
    env = {"LINEAGE_LEDGER_URL": f"sqlite:///{base}/ledger.db"}
    (base / "in.txt").write_text("input\n")
    run_cli("run", "-i", "in.txt", "-o", "out.txt", "--", "sh", "-c", "cat in.txt > out.txt",
            cwd=base, env=env, check_rc=0)
    return env


@pytest.mark.parametrize(("command", "fmt"), SINGLE_FILE_EXPORTS)
def test_an_export_never_writes_through_a_planted_link(tmp_path, command, fmt):
    """Bug: every single-file export (``export -f prov-json|prov-n|openlineage``, ``graph -f
    html|svg|dot``) opened ``-o PATH`` with a plain ``open(path, "w")``, which follows a
    symbolic link. Setup: another user of a shared (group-writable) project directory plants
    ``lineage.html -> ~/.bashrc`` (here: a link to a 'victim' file); the owner runs
    ``lineage-ledger graph out.txt -o lineage.html``. Impact: the victim file was truncated
    and overwritten with the export (exit 0, nothing said). Now the export is written to a new
    private file beside PATH and renamed onto it: the link is replaced, its target untouched."""
    env = _recorded(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "planted").symlink_to(victim)
    result = run_cli(command, "out.txt", "-f", fmt, "-o", "planted", cwd=tmp_path, env=env)
    assert victim.read_text() == "precious\n", "the export wrote through the planted link"
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "planted").is_symlink() and (tmp_path / "planted").stat().st_size > 0


@pytest.mark.parametrize(("command", "fmt"), SINGLE_FILE_EXPORTS)
def test_an_export_is_as_private_as_the_ledger(tmp_path, command, fmt):
    """Bug: the ledger is created 0600 whatever the umask (it holds every task's command
    line, parameters, user and host), but an export of it, which carries the same, was created
    under the umask: 0644 with the usual 022, readable by every local user. Setup: a task
    recorded, exported with umask 022. Impact: another user of the machine reads the records
    (argv, parameters, paths) that the ledger's mode kept from them. Now every export file is
    created 0600 (the owner widens it to share it)."""
    env = _recorded(tmp_path)
    out = tmp_path / f"export.{fmt}"
    result = run_cli(command, "out.txt", "-f", fmt, "-o", out, cwd=tmp_path, env=env,
                     preexec_fn=lambda: os.umask(0o022))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(os.stat(tmp_path / "ledger.db").st_mode) == 0o600
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_a_crate_is_private_and_never_written_through_a_planted_link(tmp_path):
    """Bug: ``export -f ro-crate -o DIR`` accepted a symbolic link to an empty directory as
    DIR and wrote the crate into the link's target, and made a new crate directory (and a
    ``.zip`` crate) under the umask (0755/0644) though it holds every record's body. Setup:
    ``crate -> /elsewhere/empty`` planted; a second export to a new ``crate2/`` and
    ``crate.zip`` with umask 022. Impact: files appear in a directory the owner never named;
    the records are readable by every local user. Now a link is refused (exit 2, nothing
    written), a new crate directory is 0700 and a zip 0600."""
    env = _recorded(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "crate").symlink_to(elsewhere)
    linked = run_cli("export", "out.txt", "-f", "ro-crate", "-o", "crate", cwd=tmp_path, env=env)
    assert list(elsewhere.iterdir()) == [], "the crate was written through the planted link"
    assert linked.returncode == 2, linked.stderr
    for name in ("crate2", "crate.zip"):
        run_cli("export", "out.txt", "-f", "ro-crate", "-o", name, cwd=tmp_path, env=env, check_rc=0,
                preexec_fn=lambda: os.umask(0o022))
    assert stat.S_IMODE((tmp_path / "crate2").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "crate.zip").stat().st_mode) == 0o600
