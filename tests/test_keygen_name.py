"""``lineage-ledger keygen --name`` with a name a signed note cannot carry: the refusal shows
the name as typed, each control character escaped once.

The message was built with the name's ``repr`` (``'lab\\nkey'``) and the command line then
made it printable, escaping repr's backslash again: a user who typed a newline read
``'lab\\\\nkey'``, a name with two backslashes that they never typed, where every other
message shows a newline as ``\\x0a``.
"""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(("name", "shown"), [
    ("lab\nkey", r"lab\x0akey"),  # the escapes every message of the command line uses
    ("lab\tkey\n", r"lab\x09key\x0a"),
    ("lab\x1b[31mkey ", r"lab\x1b[31mkey "),
])
def test_keygen_shows_a_refused_name_escaped_once(cli, workdir, name, shown):
    result = cli("keygen", "lab.key", "--name", name)
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines  # no raw line break from the name
    assert f"invalid key name '{shown}'" in lines[0], lines
    assert "\\\\" not in lines[0] and "\x1b" not in lines[0], lines
    assert not (workdir / "lab.key").exists() and not (workdir / "lab.key.pub").exists()
