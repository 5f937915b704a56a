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


def test_log_tree_vectors_are_the_cores_rfc9162_roots():
    """What the chaincode's log tree is tested against (tree_test.go) is what the core's tree
    computes from the same record ids, at every size."""
    from lineage_ledger._log.tree import BLAKE3, levels_of, memory_source, root

    log_tree = build_vectors()["log_tree"]
    leaves = [BLAKE3.leaf(bytes.fromhex(record_id)) for record_id in log_tree["ids"]]
    nodes = memory_source(levels_of(leaves, BLAKE3))
    assert len(log_tree["roots"]) == len(leaves) + 1 >= 9
    for size, expected in enumerate(log_tree["roots"]):
        assert root(nodes, size, BLAKE3).hex() == expected, size


@pytest.mark.fabric
def test_chaincode_go_tests_pass_on_the_vectors():
    go = go_binary()
    if go is None:
        pytest.skip("no Go toolchain")
    # Built as build_chaincode builds the chaincode the network runs (no cgo, -trimpath): Go's
    # build cache keys on those settings, so with a cold cache (a fresh machine) the
    # dependencies compile once for both, not twice (45 s -> 13 s after the chaincode build).
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-buildvcs=false", "CGO_ENABLED": "0"}
    result = subprocess.run([go, "test", "-trimpath", "-count=1", "./..."], cwd=CHAINCODE_SRC, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok" in result.stdout
