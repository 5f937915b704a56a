"""A Parsl run whose files, or whose ledger, are at paths that are not UTF-8 text.

On Linux a directory's name is bytes: a run started in ``$'run-\\xff'`` names its files
(relative ``File``s, or the example's ``os.path.abspath``) by paths that are not UTF-8, and
the ledger names a file by its path, as text. Real DataFlowKernels from Parsl ``Config``s
(ThreadPoolExecutor, the plugin's executor wrapper and memoizer, checkpoints at task exit).

Before, each task said twice that it could not be checked or recorded ("could not check the
files of task N", "could not record task ...": 8 errors for the four-stage pipeline), strict
failed each task with the core's bare ``normalize_path`` error, an input edited between runs
was keyed by its name only (a cache hit on the stale result, under ``file_key="content"``),
and a default ledger in such a directory started a recording process that could not open
it. Now the run says once, at its start, what will not be recorded, and once, at its end,
how many tries were not; tasks whose files are at UTF-8 paths are recorded as usual.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("parsl", reason="the Parsl plugin needs parsl (make install installs it)")
pytest.importorskip("lineage_ledger_parsl", reason="make install installs plugins/parsl")

from lineage_ledger_parsl import ParslLedger  # noqa: E402
from parsl.app.app import python_app  # noqa: E402
from parsl.data_provider.files import File  # noqa: E402

from lineage_ledger import ConfigError, LedgerError, open_ledger  # noqa: E402
from tests.support import parsl as support  # noqa: E402

pipeline = support.load_pipeline()
BYTE = "\udcff"  # the byte 0xff, as Python reads it from the OS (surrogateescape)
SAID = "nothing of this run can be recorded"


def copy_text(inputs: Any = (), outputs: Any = ()) -> str:
    with open(inputs[0]) as src, open(outputs[0], "w") as dst:
        text = src.read()
        dst.write(text)
    return text


def _ours(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("lineage_ledger")]


def _not_utf8_dir(tmp_path: Path, monkeypatch) -> Path:
    here = tmp_path / ("run-" + BYTE)
    here.mkdir()
    monkeypatch.chdir(here)
    for name in ("LINEAGE_LEDGER_URL", "LINEAGE_SPOOL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LINEAGE_STATE_DIR", str(tmp_path / "state"))
    return here


def _records(url: str, run_id: str) -> list:
    with open_ledger(url) as ledger:
        return [entry.record for entry in ledger.run(run_id)]


def test_a_run_in_a_directory_that_is_not_utf8_says_once_what_goes_unrecorded(tmp_path, monkeypatch, caplog):
    here = _not_utf8_dir(tmp_path, monkeypatch)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    elsewhere = tmp_path / "plain"
    elsewhere.mkdir()
    (elsewhere / "src.txt").write_text("kept\n")
    caplog.set_level(logging.INFO, logger="lineage_ledger")
    ledger = ParslLedger(url, policy="warn")
    with support.loaded(pipeline.make_config(".", "threads", ledger)) as dfk:
        summary = pipeline.run_pipeline(".", 5)  # its files: os.path.abspath(".")/raw.txt, ...
        copied = python_app(copy_text, cache=True)(inputs=[File(str(elsewhere / "src.txt"))],
                                                   outputs=[File(str(elsewhere / "out.txt"))])
        assert copied.result() == "kept\n"
        run_id = dfk.run_id
    assert summary == {"count": 5, "sum_of_squares": 55}  # the workflow ran, uncrashed
    assert (here / "report.json").exists()
    said = _ours(caplog)
    assert not [m for m in said if "could not" in m], said  # no task by task errors
    start = [m for m in said if "working directory" in m]
    assert len(start) == 1 and "run-\\xff" in start[0] and "not valid UTF-8" in start[0], said
    end = [m for m in said if "not recorded" in m and "tries" in m]
    assert len(end) == 1 and "4 tries" in end[0] and "run-\\xff" in end[0], said
    assert ledger.unrecorded == 4
    assert ledger.capture.failures == 0  # nothing was handed to the capture to fail there
    # The task whose files are at UTF-8 paths is recorded, with them.
    (record,) = _records(url, run_id)
    assert record.task_name == "copy_text" and list(record.outputs) == [str(elsewhere / "out.txt")]


def test_strict_refuses_a_task_whose_files_are_not_utf8_naming_it(tmp_path, monkeypatch, caplog):
    _not_utf8_dir(tmp_path, monkeypatch)
    caplog.set_level(logging.INFO, logger="lineage_ledger")
    ledger = ParslLedger(f"sqlite:///{tmp_path / 'ledger.db'}", policy="strict")
    with support.loaded(pipeline.make_config(".", "threads", ledger)):
        futures = pipeline.submit_pipeline(".", 5)
        with pytest.raises(LedgerError) as refused:
            futures["generate"].result()
    message = str(refused.value)
    assert "refuses to run task 0 (generate)" in message and "run-\\xff/raw.txt" in message, message
    assert "not valid UTF-8" in message
    assert not os.path.exists("raw.txt")  # it did not run
    said = _ours(caplog)
    assert not [m for m in said if "could not" in m], said
    assert len([m for m in said if "refuses to run task" in m]) == 1, said  # logged once, not per task
    assert ledger.unrecorded == 1 and any("1 try of this run not recorded" in m for m in said), said


def test_an_input_edited_between_runs_is_a_cache_miss_though_its_path_is_not_utf8(tmp_path, monkeypatch):
    _not_utf8_dir(tmp_path, monkeypatch)
    Path("src.txt").write_text("first\n")
    results = []
    for text in (None, "second\n"):
        if text is not None:
            Path("src.txt").write_text(text)
        ledger = ParslLedger(f"sqlite:///{tmp_path / 'ledger.db'}", policy="warn")
        with support.loaded(pipeline.make_config(".", "threads", ledger)):
            future = python_app(copy_text, cache=True)(inputs=[File("src.txt")], outputs=[File("out.txt")])
            results.append((future.result(), future.task_record["from_memo"]))
    assert results == [("first\n", False), ("second\n", False)]
    assert Path("out.txt").read_text() == "second\n"


@pytest.mark.parametrize("where", ["default", "named"])
def test_a_ledger_whose_path_is_not_utf8_records_nothing_and_says_so_once(tmp_path, monkeypatch, caplog, where):
    if where == "default":  # .lineage/ledger.db in the working directory
        here, url = _not_utf8_dir(tmp_path, monkeypatch), None
    else:
        here = tmp_path / "plain"
        here.mkdir()
        monkeypatch.chdir(here)
        (tmp_path / ("l" + BYTE)).mkdir()
        url = f"sqlite:///{tmp_path / ('l' + BYTE) / 'l.db'}"
    caplog.set_level(logging.INFO, logger="lineage_ledger")
    ledger = ParslLedger(url, policy="warn")
    with support.loaded(pipeline.make_config(str(tmp_path / "files"), "threads", ledger)):
        os.makedirs(tmp_path / "files", exist_ok=True)
        assert pipeline.run_pipeline(str(tmp_path / "files"), 5) == {"count": 5, "sum_of_squares": 55}
    said = _ours(caplog)
    assert len([m for m in said if SAID in m]) == 1, said
    assert any("\\xff" in m and "not valid UTF-8" in m for m in said if SAID in m), said
    assert not [m for m in said if "could not" in m or "cannot open" in m], said
    assert ledger.unrecorded == 4 and ledger.capture.failures == 0
    assert getattr(ledger.capture, "child_pid", None) is None  # no recording process was started
    assert not (here / ".lineage").exists()  # no spool, no ledger made


def test_strict_refuses_to_start_with_a_ledger_whose_path_is_not_utf8(tmp_path, monkeypatch):
    here = _not_utf8_dir(tmp_path, monkeypatch)
    with pytest.raises(ConfigError) as refused:
        ParslLedger(policy="strict")  # the default ledger: .lineage/ledger.db here
    message = str(refused.value)
    assert "refusing to run" in message and SAID in message and "run-\\xff" in message, message
    assert not (here / ".lineage").exists()
