"""What a user reads when a PostgreSQL ledger cannot be reached: one clean line.

libpq breaks its messages into lines and indents the hint (``Connection refused\\n\\tIs the
server running ...``) and the server pads its severity (``FATAL:  database ...``). Every
message of the command line shows a control character as a visible escape (the driver's
text may quote what another user wrote: a role or database name), so before the back-ends
folded the driver's whitespace a user read ``Connection refused\\x0a\\x09Is the server
running ...``. The whitespace is folded into single spaces; any other control character
stays escaped, and the URL's password never appears, whatever the driver says.

Through the command line, against a port where nothing listens and a real server (marked
postgres: the session's, and one of this module's own that asks a role for its password).
"""

from __future__ import annotations

import json
import urllib.parse

import pytest

from lineage_ledger.backends._sqlite_files import driver_text
from tests.conftest import run_cli
from tests.support import postgres
from tests.support.faults import refused_port

# Spaces, a tab, percent-escapes and an '@': a password whose spellings must all stay hidden.
PASSWORD = "s3 cr\tet@p%w"
WRONG = "Wr0ng  p@ss\tx"


def quoted(password: str) -> str:
    return urllib.parse.quote(password, safe="")


def assert_no_password(result, password: str) -> None:
    shown = result.stdout + result.stderr
    for spelling in {password, quoted(password), urllib.parse.quote(password), password.split()[0] + " "}:
        assert spelling not in shown, shown


@pytest.fixture
def refused():
    """A loopback port where every connection is refused (held by this test meanwhile)."""
    with refused_port() as port:
        yield port


@pytest.fixture(scope="module")
def password_server():
    """A server of its own that asks role 'secretive' for a password (the session's trusts every role)."""
    with postgres.password_server(PASSWORD) as server:
        yield server


# The read commands a user runs: the reader (psycopg alone) opens the ledger for each.
READERS = [("verify-lineage", ()), ("lineage-ledger", ("verify",)), ("lineage-ledger", ("log",))]


def read(program: str, args: tuple[str, ...], url: str, cwd) -> object:
    return run_cli(*args, "--ledger", url, cwd=cwd, program=program)


@pytest.mark.parametrize(("program", "args"), READERS)
def test_nothing_listening_reads_as_one_line(tmp_path, program, args, refused):
    port = refused
    url = f"postgresql://bob:{quoted(PASSWORD)}@127.0.0.1:{port}/ledger"
    result = read(program, args, url, tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr == (
        f"error: postgresql://bob:***@127.0.0.1:{port}/ledger: opening the ledger failed: connection failed: "
        f'connection to server at "127.0.0.1", port {port} failed: Connection refused '
        "Is the server running on that host and accepting TCP/IP connections?\n"
    )
    assert_no_password(result, PASSWORD)


@pytest.mark.postgres
def test_a_wrong_password_reads_as_one_line_and_is_never_shown(tmp_path, password_server):
    port = password_server.port
    url = f"postgresql://secretive:{quoted(WRONG)}@127.0.0.1:{port}/secretdb"
    result = read("verify-lineage", (), url, tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr == (
        f"error: postgresql://secretive:***@127.0.0.1:{port}/secretdb: opening the ledger failed: "
        f'connection failed: connection to server at "127.0.0.1", port {port} failed: '
        'FATAL: password authentication failed for user "secretive"\n'
    )
    assert_no_password(result, WRONG)
    assert_no_password(result, PASSWORD)


@pytest.mark.postgres
def test_the_right_password_still_reads_the_ledger(tmp_path, password_server):
    """The other side: the fixture's role and password do open the ledger (so the wrong one
    above failed for its password, not for a server or URL that nothing could open)."""
    url = f"postgresql://secretive:{quoted(PASSWORD)}@127.0.0.1:{password_server.port}/secretdb"
    # `run` waits 2 s by default (--ship-wait) for the ledger to take the record, then leaves it
    # in the spool and exits 0: on a loaded machine it could still be on its way when the reader
    # opens the ledger (NoLedger, exit 2).
    # The wait is generous, below run_cli's 120 s so that a failure shows `run`'s own message.
    made = run_cli("run", "--ledger", url, "--ship-wait", "90", "--", "true", cwd=tmp_path, check_rc=0)
    assert "did not take it within" not in made.stderr, made.stderr
    result = read("verify-lineage", (), url, tmp_path)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert_no_password(result, PASSWORD)


@pytest.mark.postgres
def test_a_database_that_does_not_exist_reads_as_one_line(tmp_path, postgres_server):
    port = postgres_server.port
    url = f"postgresql://ledger:{quoted(PASSWORD)}@127.0.0.1:{port}/nosuchdb"
    result = read("verify-lineage", (), url, tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr == (
        f"error: postgresql://ledger:***@127.0.0.1:{port}/nosuchdb: opening the ledger failed: "
        f'connection failed: connection to server at "127.0.0.1", port {port} failed: '
        'FATAL: database "nosuchdb" does not exist\n'
    )
    assert_no_password(result, PASSWORD)


@pytest.mark.postgres
def test_a_control_character_the_server_quotes_stays_escaped(tmp_path, postgres_server):
    """An ESC in the role's name (percent-decoded from the URL) comes back in the server's
    message: shown as ``\\x1b``, never sent to the terminal, while the padding is folded."""
    port = postgres_server.port
    url = f"postgresql://no%1Bbody@127.0.0.1:{port}/postgres"
    result = read("verify-lineage", (), url, tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr == (
        f"error: {url}: opening the ledger failed: connection failed: connection to server at "
        f'"127.0.0.1", port {port} failed: FATAL: role "no\\x1bbody" does not exist\n'
    )
    assert "\x1b" not in result.stderr


def test_run_keeps_its_record_and_says_why_in_one_clean_line(tmp_path, refused):
    """The writer's side (SQLAlchemy's engine): the record waits in the spool and the reason
    ``run`` gives is the driver's message on one line, without the password."""
    port = refused
    url = f"postgresql://bob:{quoted(PASSWORD)}@127.0.0.1:{port}/ledger"
    result = run_cli("run", "--ledger", url, "--", "true", cwd=tmp_path)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert (f'port {port} failed: Connection refused Is the server running on that host and accepting '
            "TCP/IP connections?). It waits there") in result.stderr, result.stderr
    assert "\\x0a" not in result.stderr and "\\x09" not in result.stderr, result.stderr
    assert_no_password(result, PASSWORD)
    waiting = run_cli("spool", "status", "--json", cwd=tmp_path, check_rc=0)
    assert [entry["records"] for entry in json.loads(waiting.stdout)] == [1], waiting.stdout


def test_only_ascii_whitespace_is_folded():
    """The separators \\x1c-\\x1f, NEL and U+2028 are whitespace to str.isspace() but stay,
    for the command line to show escaped; the message's ends are stripped."""
    text = " a\n\tb \r\n c\x0b\x0cd\x1ce\x85f\u2028g\x1b[2J \n"
    assert driver_text(Exception(text)) == "a b c d\x1ce\x85f\u2028g\x1b[2J"


def test_a_password_the_driver_quotes_across_a_line_break_is_hidden():
    """Redacted after folding too: the driver's 'se\\ncret' is 'se cret' once folded, the
    password itself; and before folding, so that a run of spaces in a password is found."""
    url = f"postgresql://bob:{quoted('se cret')}@db.example/ledger"
    shown = driver_text(Exception("password 'se\ncret' refused for bob"), url)
    assert "se cret" not in shown and "cret" not in shown, shown
    url = f"postgresql://bob:{quoted('two  spaces')}@db.example/ledger"
    shown = driver_text(Exception("password two  spaces refused"), url)
    assert "two" not in shown and "spaces" not in shown, shown
