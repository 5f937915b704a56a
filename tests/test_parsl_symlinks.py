"""A Parsl run whose tasks name one file by two paths: through a symbolic link, and not.

Scratch space on clusters is often reached through a link (``~/scratch -> /lustre/...``),
and a workflow easily names a file both ways (one app is handed ``Path.resolve()``'s name,
another the link's). The memoizer skips the check of a file that a try of the same run
wrote, since its record may still be on its way (write-behind); it matched that file by the
path as written, so the consumer's name (the real path) was checked against the ledger's
last record of that name, from the run before, and ``strict`` refused a run in which nothing
was changed outside the workflow ("files changed outside the workflow: .../real/out.txt").

Real DataFlowKernels (ThreadPoolExecutor, the plugin's wrapper and memoizer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("parsl", reason="the Parsl plugin needs parsl (make install installs it)")
pytest.importorskip("lineage_ledger_parsl", reason="make install installs plugins/parsl")

from lineage_ledger_parsl import ParslLedger  # noqa: E402
from parsl.app.app import python_app  # noqa: E402
from parsl.data_provider.files import File  # noqa: E402

from tests.support import parsl as support  # noqa: E402

pipeline = support.load_pipeline()


def make(n: int, outputs: Any = ()) -> int:
    with open(outputs[0], "w") as handle:
        handle.write(f"{n}\n" * n)
    return n


def shout(inputs: Any = (), outputs: Any = ()) -> str:
    with open(inputs[0]) as src, open(outputs[0], "w") as dst:
        text = src.read().upper()
        dst.write(text)
    return text


def test_a_file_written_through_a_link_and_read_by_its_real_path_is_not_refused(workdir):
    real = workdir / "real"
    real.mkdir()
    (workdir / "link").symlink_to(real)
    for n in (1, 2):  # the second run makes a new out.txt (another n), then reads it
        ledger = ParslLedger(f"sqlite:///{workdir / 'ledger.db'}", policy="strict")
        with support.loaded(pipeline.make_config(str(workdir), "threads", ledger)):
            made = python_app(make)(n, outputs=[File(str(workdir / "link" / "out.txt"))])
            assert made.result() == n
            read = python_app(shout)(inputs=[File(str(real / "out.txt"))], outputs=[File(str(workdir / "b.txt"))])
            assert read.result() == f"{n}\n" * n
    assert Path(workdir / "b.txt").read_text() == "2\n2\n"
