"""Messages name a path whose name is not UTF-8 by its bytes, ``\\xNN``, as records keep such
text (docs/guide.md), not by Python's stand-in for the byte (``\\udcNN``, which no user typed
and no tool prints): the refusal of a default ledger in such a directory, through the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def test_a_ledger_in_a_directory_not_utf8_is_named_by_its_bytes(tmp_path: Path) -> None:
    odd = os.path.join(os.fsencode(tmp_path), b"wd-\xff")
    os.mkdir(odd)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
    result = subprocess.run([str(BIN / "lineage-ledger"), "log"], cwd=odd, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "wd-\\xff/.lineage/ledger.db" in result.stderr, result.stderr
    assert "\\udc" not in result.stderr and "Traceback" not in result.stderr
    assert os.listdir(odd) == []  # refused before anything was made
