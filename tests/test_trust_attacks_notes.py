"""Signed checkpoints that bend the format, read through ``verify-lineage --against`` (helper-122).

docs/verification.md section 5: a checkpoint's time line is ``time YYYY-MM-DDTHH:MM:SS[.ffffff]Z``
in ASCII digits, as lineage-ledger writes it, and "a reader holds a writer to that". The
parser's pattern used ``\\d``, which in Python matches any Unicode decimal digit, and ``int``
reads those too: a time line in Arabic-Indic or full-width digits passed (exit 0, "extends
checkpoint"), where Go writes and a spec-following verifier refuses it. Such a checkpoint is
now invalid (exit 2), as the size line's digits already were (they were matched ``[0-9]``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lineage_ledger._log.checkpoint import parse_signer, sign_note


@pytest.fixture
def signed(cli, workdir):
    """A ledger, the owner's key, and a function that signs any body with that key into a file."""
    (workdir / "in.txt").write_text("data\n")
    cli("run", "-i", "in.txt", "-o", "out.txt", "--", "cp", "in.txt", "out.txt", check_rc=0)
    cli("keygen", "lab.key", "--name", "lab/key", check_rc=0)
    cli("checkpoint", "--key", "lab.key", "-o", "good.cp", check_rc=0)
    body = (workdir / "good.cp").read_text().split("\n\n")[0] + "\n"
    signer = parse_signer((workdir / "lab.key").read_text())

    def write(text: str, name: str = "bent.cp") -> str:
        (workdir / name).write_text(sign_note(text, signer), encoding="utf-8")
        return name

    return body, write


ARABIC_INDIC = "\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669"
FULL_WIDTH = "\uff10\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18\uff19"


def _bent(body: str, digits: str, year_only: bool) -> str:
    """``body`` with the digits of its time line (or of its year alone) written in ``digits``."""
    lines = body.split("\n")
    assert lines[3].startswith("time 20"), lines
    cut = 9 if year_only else len(lines[3])
    lines[3] = "time " + lines[3][5:cut].translate(str.maketrans("0123456789", digits)) + lines[3][cut:]
    return "\n".join(lines)


@pytest.mark.parametrize(("digits", "year_only"), [(ARABIC_INDIC, False), (FULL_WIDTH, False), (ARABIC_INDIC, True)])
def test_a_time_line_in_digits_other_than_ascii_is_refused(cli, signed, digits, year_only):
    body, write = signed
    result = cli("verify", "--against", write(_bent(body, digits, year_only)), "--pubkey", "lab.key.pub")
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "extension line is not 'time" in result.stderr, result.stderr
    # the neighbour that holds: the same body in ASCII digits, signed the same way
    cli("verify", "--against", write(body, "ascii.cp"), "--pubkey", "lab.key.pub", check_rc=0)


def test_the_independent_verifier_refuses_it_too(signed):
    """It refused other digits in the month, day and time (strptime reads those in ASCII
    only), but not in the year."""
    from tests.independent import verifier

    body, write = signed
    name = write(_bent(body, ARABIC_INDIC, True))
    with pytest.raises(verifier.Invalid):
        verifier.parse_checkpoint(Path(name).read_bytes())


def test_a_checkpoint_with_crlf_line_ends_says_so(cli, signed, workdir):
    """A checkpoint kept in a git repository and checked out with core.autocrlf (Windows) has
    CRLF line ends: refused, as Go's note.Open refuses it (exit 2), with 'no control characters
    other than newlines', which names neither the cause nor the cure."""
    body, write = signed
    name = write(body)
    (workdir / name).write_bytes((workdir / name).read_bytes().replace(b"\n", b"\r\n"))
    result = cli("verify", "--against", name, "--pubkey", "lab.key.pub")
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "CRLF" in result.stderr and "dos2unix" in result.stderr, result.stderr
