"""Whole numbers given on the command line (tree sizes, listing limits): a negative one is
refused with a message that says what the number must be, exit 2, and one past what a
database integer holds is not an "unexpected OverflowError".

Found at stop 38: ``lineage-ledger consistency -1`` said click's "No such option: -1" (a
negative number reads as an option to click's parser), and ``depends PATH -n 2**63`` and
``log --run ID -n 2**63`` ended in "unexpected OverflowError: Python int too large to convert
to SQLite INTEGER". About 10 s at a load of 2.
"""

from __future__ import annotations

import pytest

HUGE = str(2**63)  # one past the largest SQLite and PostgreSQL integer


@pytest.fixture
def ledger(cli, workdir):
    (workdir / "in.txt").write_text("in")
    cli("run", "-i", "in.txt", "--run-id", "r1", "--", "true", check_rc=0)
    cli("run", "-i", "in.txt", "--run-id", "r1", "--", "true", check_rc=0)
    return workdir


@pytest.mark.parametrize("args, name, rule", [
    (("consistency", "-1"), "OLD_SIZE", "must be a non-negative whole number"),
    (("consistency", "0", "-3"), "NEW_SIZE", "must be a non-negative whole number"),
    (("consistency", "1", "1.5"), "NEW_SIZE", "must be a non-negative whole number"),
    (("show", "abcd", "--size", "-1"), "--size", "must be a positive whole number"),
    (("show", "abcd", "--size", "0"), "--size", "must be a positive whole number"),
    (("log", "-n", "-1"), "--limit", "must be a non-negative whole number"),
    (("depends", "in.txt", "-n", "-5"), "--limit", "must be a non-negative whole number"),
])
def test_a_negative_count_is_refused_saying_what_it_must_be(cli, ledger, args, name, rule):
    result = cli(*args)
    assert result.returncode == 2, (args, result.stdout, result.stderr)
    assert "No such option" not in result.stderr, result.stderr
    assert name in result.stderr and rule in result.stderr, result.stderr


def test_minus_zero_is_zero(cli, ledger):
    """"-0" is a number (0), not an option."""
    result = cli("consistency", "-0", "1")
    assert result.returncode == 0 and '"size": 0' in result.stdout, (result.stdout, result.stderr)


def test_a_mistyped_option_is_still_called_one(cli, ledger):
    result = cli("consistency", "--jsn", "1")
    assert result.returncode == 2 and "No such option" in result.stderr and "--jsn" in result.stderr, result.stderr


@pytest.mark.parametrize("args", [
    ("depends", "in.txt", "-n", HUGE),
    ("log", "--run", "r1", "-n", HUGE),
    ("log", "-n", HUGE),
])
def test_a_limit_past_a_database_integer_lists_everything(cli, ledger, args):
    """A limit larger than any ledger can hold is no limit: the whole listing, exit 0."""
    result = cli(*args)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    assert "unexpected" not in result.stderr, result.stderr
    everything = cli(*args[:-1], "1000", check_rc=0)
    assert result.stdout == everything.stdout and result.stdout.strip(), (result.stdout, everything.stdout)


def test_sizes_past_the_tree_are_refused_naming_the_size(cli, ledger):
    for args in (("consistency", HUGE), ("consistency", "0", HUGE)):
        result = cli(*args)
        assert result.returncode == 2 and HUGE in result.stderr and "unexpected" not in result.stderr, result.stderr
