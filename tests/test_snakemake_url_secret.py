"""`snakemake-ledger --ledger postgresql://user:PASSWORD@host/db`: the password is not put on
Snakemake's command line, which Snakemake prints ("Command: ..." on a dry run) and keeps in
its log. Found by helper-84's careless-user review: the wrapper passed the URL as
--logger-ledger-url. It now goes in $LINEAGE_LEDGER_URL, which the plugin reads where it is
given no URL setting; a URL setting of the user's own beside --ledger is refused.

A real run against the real PostgreSQL server the tests start (trust authentication: the
password is taken and ignored, which shows the URL still reaches the plugin whole).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lineage_ledger import open_ledger

SECRET = "S3cretPw-not-to-be-seen"
SNAKEFILE = 'rule all:\n    output: "a.txt"\n    shell: "echo hi > {output}"\n'


def _wrapper(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LINEAGE_", "SNAKEMAKE_"))}
    env["LINEAGE_STATE_DIR"] = str(tmp_path / "state")
    return subprocess.run([str(Path(sys.executable).parent / "snakemake-ledger"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def _with_password(postgres_url: str) -> str:
    scheme, rest = postgres_url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:{SECRET}@{host}"


def _files_holding_the_secret(tmp_path) -> list[str]:
    found = []
    for path in tmp_path.rglob("*"):
        if path.is_file() and SECRET.encode() in path.read_bytes():
            found.append(str(path))
    return found


@pytest.mark.postgres
@pytest.mark.slow
def test_a_ledger_password_is_never_on_snakemakes_command_line(tmp_path, postgres_url):
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    url = _with_password(postgres_url)
    dry = _wrapper(tmp_path, "--ledger", url, "-n", "-c1")
    assert dry.returncode == 0, dry.stderr
    assert "Command:" in dry.stdout + dry.stderr  # Snakemake still says what it ran
    assert SECRET not in dry.stdout + dry.stderr

    done = _wrapper(tmp_path, "--ledger", url, "--ledger-policy", "strict", "-c1")
    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stdout + done.stderr
    assert _files_holding_the_secret(tmp_path) == []  # .snakemake/log among them
    with open_ledger(postgres_url, read_only=True, state_dir=str(tmp_path / "reader")) as ledger:
        assert ledger.tree_head().size >= 1  # the job's record reached the ledger the URL names


def test_a_second_url_setting_beside_a_url_with_a_password_is_refused(tmp_path):
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    result = _wrapper(tmp_path, "--ledger", f"postgresql://u:{SECRET}@127.0.0.1:1/db",
                      "--logger-ledger-url", "other.db", "-n", "-c1")
    assert result.returncode == 2 and "give the ledger once" in result.stderr, result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert not (tmp_path / "other.db").exists()
