"""Record values reach the terminal escaped (issue 15, item 5): a task name, run id,
parameter and file name carrying ESC sequences, an OSC window title, U+009B (a one-byte
CSI), U+202E (right-to-left override) and a newline, fed through every command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lineage_ledger._terminal import json_text, printable

#: What an attacker puts in every value: clear screen, set the window title, C1 CSI (red),
#: a right-to-left override, and a newline that would fake a line of output.
EVIL = "x\x1b[2J\x1b]0;pwned\x07\x9b31m\u202eevil\nFAKE LINE"
NAME = "task" + EVIL
RUN_ID = "run" + EVIL
PARAM = "key=value" + EVIL
OUTPUT = "out" + EVIL + ".txt"

BIDI = {0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)}


def _raw_controls(text: str) -> list[str]:
    """Characters that must never reach a terminal raw (a newline between lines is fine)."""
    return sorted({
        repr(c) for c in text
        if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F or ord(c) in BIDI
    })


def _cli(*args, cwd, program="lineage-ledger"):
    """Run a command; stdout and stderr decoded as UTF-8 from the bytes themselves."""
    script = Path(sys.executable).parent / program
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
    env["PYTHONIOENCODING"] = "utf-8"
    result = subprocess.run([str(script), *map(str, args)], cwd=cwd, env=env, capture_output=True, timeout=120)
    out = result.stdout.decode("utf-8", "surrogateescape")
    err = result.stderr.decode("utf-8", "surrogateescape")
    assert not _raw_controls(out), (args, _raw_controls(out), out)
    assert not _raw_controls(err), (args, _raw_controls(err), err)
    assert not any(line.startswith("FAKE LINE") for line in (out + err).splitlines()), (args, out, err)
    return result.returncode, out, err


ESCAPED = ("\\x1b[2J", "\\x1b]0;pwned\\x07", "\\x9b31m", "\\u202e", "\\x0aFAKE LINE")
IN_JSON = ("\\u001b[2J", "\\u001b]0;pwned\\u0007", "\\u009b31m", "\\u202e", "\\nFAKE LINE")


def _escaped(text: str, forms=ESCAPED) -> bool:
    return all(form in text for form in forms)


# -- the functions ---------------------------------------------------------------------------
def test_printable_escapes_controls_bidi_and_backslashes_and_nothing_else():
    assert printable("plain/path-1.txt ünï 名前") == "plain/path-1.txt ünï 名前"
    assert printable("a\nb\tc\rd\x00e\x7f") == "a\\x0ab\\x09c\\x0dd\\x00e\\x7f"
    assert printable("\x1b[2J\x9b\x80\x9f") == "\\x1b[2J\\x9b\\x80\\x9f"
    for code in sorted(BIDI):
        assert printable(chr(code)) == f"\\u{code:04x}"
    assert printable("\\x1b") == "\\\\x1b"  # a typed backslash cannot pass for an escape
    # A non-UTF-8 byte of a file name: shown as the byte, as records keep it (\xNN).
    assert printable("caf\udce9") == "caf\\xe9" and printable("\udcff") == "\\xff"
    assert printable("\ud800") == "\\ud800"  # a lone surrogate no byte gives
    assert not _raw_controls(printable("".join(chr(c) for c in range(0x3000))))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec=None, min_codepoint=0, max_codepoint=0x3000) | st.sampled_from(
    [chr(c) for c in (0x061C, 0x200E, 0x2028, 0x2029, 0x202E, 0x2066, 0xDC80, 0x5C, 0x7F, 0x9B)])))
def test_the_fast_path_escapes_exactly_what_the_table_does(text):
    """Text that str.isprintable() accepts and that holds no backslash is returned as it is:
    the same answer as translating it through the table."""
    from lineage_ledger._terminal import _TABLE

    assert printable(text) == text.translate(_TABLE)


def test_json_text_escapes_c1_bidi_and_del():
    text = json_text({"k": "\x1b\x7f\x85\x9b\u202e\u2066é"})
    assert _raw_controls(text) == [] and text.isascii()
    assert "\\u007f" in text and "\\u009b" in text and "\\u202e" in text
    assert json.loads(text) == {"k": "\x1b\x7f\x85\x9b\u202e\u2066é"}


# -- every command ---------------------------------------------------------------------------
@pytest.fixture
def recorded(workdir):
    (workdir / "raw.txt").write_text("pear\napple\n")
    code, out, err = _cli("run", "-i", "raw.txt", "-o", OUTPUT, "-n", NAME, "--run-id", RUN_ID, "-p", PARAM,
                          "--", "sh", "-c", 'sort raw.txt > "$1"', "sh", OUTPUT, cwd=workdir)
    assert code == 0, (out, err)
    assert (workdir / OUTPUT).exists()
    return workdir


def test_log_and_log_json(recorded):
    code, out, _ = _cli("log", cwd=recorded)
    assert code == 0 and _escaped(out)
    assert "task" in out and "run" in out and "out" in out
    code, out, _ = _cli("log", "--json", cwd=recorded)
    assert code == 0 and _escaped(out, IN_JSON)
    entry = json.loads(out.splitlines()[0])
    assert entry["task_name"] == NAME and entry["run_id"] == RUN_ID


def test_show(recorded):
    _, out, _ = _cli("log", "--json", cwd=recorded)
    record_id = json.loads(out.splitlines()[0])["id"]
    code, out, _ = _cli("show", record_id, cwd=recorded)
    assert code == 0 and _escaped(out, IN_JSON)
    body = json.loads(out)["record"]
    assert body["task_name"] == NAME and body["parameters"] == {"key": PARAM.partition("=")[2]}
    assert any(path.endswith(OUTPUT) for path in body["outputs"])


def test_why_and_why_json(recorded):
    code, out, _ = _cli("why", OUTPUT, cwd=recorded)
    assert code == 0 and _escaped(out)
    code, out, _ = _cli("why", "--json", OUTPUT, cwd=recorded)
    assert code == 0 and _escaped(out, IN_JSON)
    code, _, err = _cli("why", "never" + EVIL, cwd=recorded)  # an error message quoting the path
    assert code == 2 and _escaped(err)


def test_depends(recorded):
    code, out, _ = _cli("depends", "raw.txt", cwd=recorded)
    assert code == 0 and _escaped(out)  # the consumer's name and run id, its output's name
    assert out.count("\\x0aFAKE LINE") >= 3
    code, out, _ = _cli("depends", OUTPUT, cwd=recorded)  # the header line names the path
    assert code == 0 and _escaped(out)


def test_verify_lineage_text_and_json_with_a_tampered_output(recorded):
    code, out, _ = _cli(OUTPUT, cwd=recorded, program="verify-lineage")
    assert code == 0 and _escaped(out)
    (recorded / OUTPUT).write_text("tampered\n")
    code, out, err = _cli(OUTPUT, cwd=recorded, program="verify-lineage")
    assert code == 1 and _escaped(out) and "MODIFIED" in out
    code, out, _ = _cli(cwd=recorded, program="verify-lineage")  # the whole-ledger audit's failures
    assert code == 1 and _escaped(out)
    failures = [line for line in out.splitlines() if line.startswith("  ")]
    assert failures and any(_escaped(line) for line in failures)
    code, out, _ = _cli("--json", OUTPUT, cwd=recorded, program="verify-lineage")
    assert code == 1 and _escaped(out, IN_JSON)
    code, out, _ = _cli("--json", cwd=recorded, program="verify-lineage")
    assert code == 1 and _escaped(out, IN_JSON)
    assert any(f["path"].endswith(OUTPUT) for f in json.loads(out)["failures"])


def test_hash(recorded):
    code, out, _ = _cli("hash", OUTPUT, "raw.txt", cwd=recorded)
    assert code == 0 and _escaped(out) and len(out.splitlines()) == 2
    code, out, _ = _cli("hash", "--json", OUTPUT, cwd=recorded)
    assert code == 0 and _escaped(out, IN_JSON)
    assert json.loads(out)["path"].endswith(OUTPUT)


_NAMES = st.sampled_from(["a", "b", "ab", "a.b", ".x", "..", ".", "c d", "é"])
_PATHS = st.lists(_NAMES, max_size=4).map(lambda parts: "/" + "/".join(parts))


@settings(max_examples=500, deadline=None)
@given(path=_PATHS, here=_PATHS)
def test_paths_are_shown_as_relpath_shows_them(path, here):
    """The shortcuts of ``_short`` (a path under the working directory, or outside its
    parent) show what ``os.path.relpath`` would: relative when near, whole when "../.." away."""
    from lineage_ledger._cli.render import _short

    here = os.path.normpath(here)
    relative = os.path.relpath(path, here)
    expected = printable(path if relative.startswith("../..") else relative)
    real_getcwd = os.getcwd
    os.getcwd = lambda: here  # relpath's own reference point, for the path not taking a shortcut
    try:
        assert _short(path, here) == expected
    finally:
        os.getcwd = real_getcwd
