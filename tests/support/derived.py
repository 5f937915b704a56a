"""A ledger in which every file of a results directory was derived from one source file
(reads, a reference genome): one record a file, each reading the source and writing that
file, as a scatter step of a workflow records them. What verify-lineage of the directory
reads and proves, file by file (tests/test_hash_ahead.py, tests/test_verify_shared_source.py).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from lineage_ledger import Hasher, Record, open_ledger

__all__ = ["results_from_one_source"]


def results_from_one_source(
    tmp_path: Path, count: int, *, results: str = "results", file_name: str = "sample-{:05d}.vcf",
    file_text: str = "##fileformat=VCFv4.2\n#{}\n", source: str = "reads.fq",
    source_text: str = "@r1\nACGT\n+\nIIII\n",
) -> tuple[str, Path, Path]:
    """``count`` files in ``tmp_path/results`` (file ``i`` named ``file_name.format(i)``,
    holding ``file_text.format(i)``), the source ``tmp_path/source``, and an SQLite ledger
    ``tmp_path/ledger.db`` (spool ``spool``, state ``state`` beside it) holding task
    ``call{i}``, which read the source and wrote file ``i``. Returns the ledger's URL, the
    results directory and the source's path."""
    out = tmp_path / results
    out.mkdir()
    for i in range(count):
        (out / file_name.format(i)).write_text(file_text.format(i))
    source_path = tmp_path / source
    source_path.write_text(source_text)
    files = Hasher().hash_many([str(p) for p in sorted(out.iterdir())] + [str(source_path)])
    now = datetime.now(timezone.utc)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with open_ledger(url, spool=str(tmp_path / "spool"), state_dir=str(tmp_path / "state")) as ledger:
        ledger.append_records([
            Record(engine="test", run_id="r", task_id=f"call{i}", task_name="call", status="succeeded",
                   started=now, ended=now, inputs=files[-1:], outputs=[f]).stored()
            for i, f in enumerate(files[:-1])])
    return url, out, source_path
