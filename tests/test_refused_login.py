"""A PostgreSQL URL whose role or database does not exist is refused for good: ``run`` and
``spool ship`` exit 1, say what to fix and keep the record in the spool.

Before, the server's refusal of the login (which psycopg raises at connection time without
a SQLSTATE) was taken for a server that is down: ``run`` said the record waited in the
spool and exited 0 after every task, and nothing ever reached the ledger. A server that is
down still only delays the record (tests/test_review_left_s38.py). A real server; about 5 s.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.postgres


def _waiting(cwd) -> int:
    result = run_cli("spool", "status", "--json", cwd=cwd, check_rc=0)
    return sum(entry["records"] for entry in json.loads(result.stdout))


@pytest.mark.parametrize("wrong, says", [
    ("role", "no such role"),
    ("database", "no such database"),
])
def test_a_login_the_server_refuses_is_an_error_not_a_wait(postgres_url, tmp_path, wrong, says):
    user_part, _, rest = postgres_url.partition("@")
    url = (user_part.replace("ledger", "nosuchrole") + "@" + rest if wrong == "role"
           else postgres_url.rsplit("/", 1)[0] + "/nosuchdb")
    result = run_cli("run", "--ledger", url, "--", "true", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert says in result.stderr and "lineage-ledger spool ship" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert _waiting(tmp_path) == 1  # kept
    shipped = run_cli("spool", "ship", "--ledger", url, cwd=tmp_path)
    assert shipped.returncode == 1 and says in shipped.stderr, shipped.stderr
    assert _waiting(tmp_path) == 1
