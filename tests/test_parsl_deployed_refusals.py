"""What the record of a try refused under ``strict`` says about the outputs it never wrote.

A task writes ``a.txt`` and ``b.txt``; someone edits ``b.txt``; the next ``strict`` run refuses
the task (its cached result, or a run over the edit). The refused try wrote nothing. Before,
its record listed ``a.txt`` among its outputs (only the edited file was left out), so the
ledger named a failed try as ``a.txt``'s latest producer, and ``verify-lineage a.txt`` failed
with "produced by a failed task; its contents are not a result", although ``a.txt`` is what
the first run's successful try made. A refused try now lists no outputs; it names them
under ``extra["outputs_not_written"]``.
"""

from __future__ import annotations

import pytest

pytest.importorskip("parsl", reason="the Parsl plugin needs parsl (make install installs it)")
pytest.importorskip("lineage_ledger_parsl", reason="make install installs plugins/parsl")

from lineage_ledger_parsl import ParslLedger  # noqa: E402
from parsl.app.app import python_app  # noqa: E402
from parsl.data_provider.files import File  # noqa: E402

from lineage_ledger import ArtifactMismatch, open_ledger  # noqa: E402
from tests.conftest import run_cli  # noqa: E402
from tests.support import parsl as support  # noqa: E402

pipeline = support.load_pipeline()


def two(outputs=()) -> int:
    for output in outputs:
        with open(output.filepath, "w") as handle:
            handle.write(f"{output.filename}\n")
    return len(outputs)


@pytest.mark.parametrize("cache", [True, False])
def test_a_refused_try_lists_no_outputs_and_the_untouched_sibling_verifies(workdir, cache):
    url = f"sqlite:///{workdir / 'ledger.db'}"
    a, b = workdir / "a.txt", workdir / "b.txt"
    for edited in (False, True):
        if edited:
            b.write_text("edited by hand\n")
        with support.loaded(pipeline.make_config(str(workdir), "threads", ParslLedger(url, policy="strict"))) as dfk:
            future = python_app(two, cache=cache)(outputs=[File(str(a)), File(str(b))])
            if edited:
                with pytest.raises(ArtifactMismatch, match="b.txt"):
                    future.result()
            else:
                assert future.result() == 2
            run_id = dfk.run_id
    with open_ledger(url) as ledger:
        (refused,) = [e.record for e in ledger.run(run_id)]
    assert refused.status == "failed" and refused.extra["refused_by"] == "strict"
    assert refused.outputs == {}
    assert refused.extra["outputs_not_written"] == [str(a)]
    assert refused.extra["modified_outside_workflow"] == [str(b)]
    run_cli("--ledger", url, str(a), program="verify-lineage", cwd=workdir, check_rc=0)
