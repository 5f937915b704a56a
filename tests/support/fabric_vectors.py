"""Cross-language test vectors: what the Python core computes, for the Go chaincode to match.

``python -m tests.support.fabric_vectors`` rewrites
``ledger_backends/fabric/chaincode/testdata/vectors.json``; ``tests/test_fabric_vectors.py``
checks that the file still equals what the core computes and runs the chaincode's
``go test`` against it. Its ``log_tree`` section is the repository's shared tree vectors
(``tests/vectors/tree_blake3.json``: record ids and the root of every size), copied so that
the chaincode's module tests need nothing outside it.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from lineage_ledger import Record, build_block, merkle_root
from tests.support.factories import BASE_TIME, artifact

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "ledger_backends" / "fabric" / "chaincode" / "testdata" / "vectors.json"
TREE_VECTORS = ROOT / "tests" / "vectors" / "tree_blake3.json"


def vector_records() -> list[Record]:
    """Records that exercise the canonical encoding: non-ASCII, escapes, nesting, nulls."""
    paths = ["/data/plain.txt", "/données/été ☃.csv", '/odd "quoted"\\path\ttab', "/emoji/\U0001f9ec.fa"]
    records = []
    for i in range(9):
        records.append(Record(
            engine="vector", run_id=f"run-{i % 2}", task_id=f"t{i}", task_name="naïve step",
            status=("succeeded", "failed", "cached")[i % 3],
            started=BASE_TIME + timedelta(microseconds=i), ended=BASE_TIME + timedelta(seconds=i, microseconds=7),
            inputs=[artifact(paths[i % 4], f"in{i}")], outputs=[artifact(paths[(i + 1) % 4] + f".{i}", f"out{i}")],
            code_digest=None if i % 2 else "ab" * 32, parameters={"n": i, "f": 0.5 * i, "l": [1, None, "x"]},
            environment={"host": "h", "unicode": "Ωμέγα"}, extra={"note": "line\nbreak"} if i == 3 else {},
        ))
    return records


def build_vectors() -> dict:
    records = vector_records()
    stored = [r.stored() for r in records]
    ids = [s.id for s in stored]
    block = build_block(stored, None, time=BASE_TIME).stored()
    return {
        "records": [{"id": s.id, "body": s.body.decode("utf-8")} for s in stored],
        "merkle": [{"ids": ids[:n], "root": merkle_root(ids[:n])} for n in range(len(ids) + 1)],
        "block": {"height": block.height, "id": block.id, "header": block.header.decode("utf-8")},
        "log_tree": log_tree_vectors(),
    }


def log_tree_vectors() -> dict:
    """The shared vectors' record ids and the root of every tree size, for the chaincode's
    log tree (tree.go); the tests check them against ``lineage_ledger._log.tree`` too."""
    shared = json.loads(TREE_VECTORS.read_text(encoding="utf-8"))
    return {"source": "tests/vectors/tree_blake3.json", "ids": [r["id"] for r in shared["records"]],
            "roots": [shared["roots"][str(n)] for n in range(len(shared["records"]) + 1)]}


def render() -> str:
    return json.dumps(build_vectors(), indent=1, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    VECTORS.write_text(render(), encoding="utf-8")
    print(f"wrote {VECTORS}")
