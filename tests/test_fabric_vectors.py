"""The Go chaincode hashes exactly as the Python core: shared vectors, checked on both sides."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.support.fabric import CHAINCODE_SRC, go_binary
from tests.support.fabric_vectors import VECTORS, build_vectors, render


def test_vector_file_matches_the_core():
    assert VECTORS.read_text(encoding="utf-8") == render(), (
        "the core's hashing changed: run `python -m tests.support.fabric_vectors` and re-run the Go tests")
    vectors = build_vectors()
    roots = {m["root"] for m in vectors["merkle"]}
    assert len(roots) == len(vectors["merkle"])  # every tree size gives its own root
    assert any("\\n" in r["body"] for r in vectors["records"])  # an escaped newline is covered


@pytest.mark.fabric
def test_chaincode_go_tests_pass_on_the_vectors():
    go = go_binary()
    if go is None:
        pytest.skip("no Go toolchain")
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-buildvcs=false"}
    result = subprocess.run([go, "test", "-count=1", "./..."], cwd=CHAINCODE_SRC, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok" in result.stdout
