"""The windows ``verify-lineage DIR`` checks a directory's files in (issue #14, stop 49): a
remainder shorter than a quarter of a window is checked with the window before it (one pass
over the names kept and one hashing child fewer), and the windows still cover every path,
in order, once."""

from __future__ import annotations

import os
from datetime import datetime, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from lineage_ledger import Hasher, Record, open_ledger
from lineage_ledger._verification import verify as verify_module
from lineage_ledger._verification.checks import ArtifactStatus
from lineage_ledger._verification.verify import verify_lineage


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 200), st.integers(0, 400), st.integers(1, 50))
def test_the_windows_cover_every_path_once_in_order(start, count, window):
    """Contiguous from ``start`` to its end, each a full window but the last, which is
    shorter than a window and a quarter."""
    verify_module_window = verify_module._WINDOW
    try:
        verify_module._WINDOW = window
        windows = list(verify_module._windows(start, start + count))
    finally:
        verify_module._WINDOW = verify_module_window
    covered = [i for first, end in windows for i in range(first, end)]
    assert covered == list(range(start, start + count))
    assert all(end > first for first, end in windows)
    assert all(end - first == window for first, end in windows[:-1])
    if windows:
        assert windows[-1][1] - windows[-1][0] < window + window // 4 or window + window // 4 == window


def _ledger_of_outputs(tmp_path, count: int) -> tuple[str, list[str]]:
    """``count`` files, each the one output of its own task, all reading one source."""
    out = tmp_path / "out"
    out.mkdir()
    for i in range(count):
        (out / f"part-{i:03d}.txt").write_bytes(os.urandom(40))
    (tmp_path / "input.txt").write_text("source")
    files = Hasher().hash_many([str(p) for p in sorted(out.iterdir())] + [str(tmp_path / "input.txt")])
    now = datetime.now(timezone.utc)
    url = f"sqlite:///{tmp_path}/ledger.db"
    with open_ledger(url, spool=str(tmp_path / "spool")) as ledger:
        ledger.append_records([Record(engine="test", run_id="r", task_id=f"t{i}", task_name="split",
                                      status="succeeded", started=now, ended=now, inputs=files[-1:],
                                      outputs=[f]).stored() for i, f in enumerate(files[:-1])])
    return url, [f.path for f in files[:-1]]


def _windows_checked(monkeypatch, url: str, directory: str) -> tuple[list[int], object]:
    """The report of ``verify-lineage DIR`` in windows of 8 (read ahead from 4 paths on), and
    the sizes of the windows it checked in this process."""
    sizes: list[int] = []
    checked = verify_module._verify_window

    def counted(ledger, window, *args, **kwargs):
        sizes.append(len(window))
        return checked(ledger, window, *args, **kwargs)

    monkeypatch.setattr(verify_module, "_WINDOW", 8)
    monkeypatch.setattr(verify_module, "_LOOK_AHEAD", 4)
    monkeypatch.setattr(verify_module, "_verify_window", counted)
    with open_ledger(url, read_only=True) as ledger:
        report = verify_lineage(ledger, [directory])
    return sizes, report


def test_a_short_remainder_is_checked_with_the_window_before_it(tmp_path, monkeypatch):
    """9 files in windows of 8: one window of 9; the first file and the last (the one the
    window took in) edited: both fail, each other file verifies with its record and lineage."""
    monkeypatch.setenv("LINEAGE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LINEAGE_VERIFY_AHEAD", "never")
    url, paths = _ledger_of_outputs(tmp_path, 9)
    for edited in (paths[0], paths[-1]):
        with open(edited, "wb") as handle:
            handle.write(b"edited")
    sizes, report = _windows_checked(monkeypatch, url, str(tmp_path / "out"))
    assert sizes == [9]
    assert sorted(f.path for f in report.failures) == [paths[0], paths[-1]]
    by_path = {t.path: t for t in report.targets}
    assert sorted(by_path) == paths
    for path in paths[1:-1]:
        assert by_path[path].check.status is ArtifactStatus.OK
        assert [p.path for p in by_path[path].tree.parents] == [str(tmp_path / "input.txt")]
    assert by_path[paths[-1]].check.status is ArtifactStatus.MODIFIED


def test_a_longer_remainder_is_a_window_of_its_own(tmp_path, monkeypatch):
    """12 files in windows of 8 (a remainder of 4, half a window): two windows, 8 and 4; a file
    of the second edited fails, and every other file verifies."""
    monkeypatch.setenv("LINEAGE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LINEAGE_VERIFY_AHEAD", "never")
    url, paths = _ledger_of_outputs(tmp_path, 12)
    with open(paths[10], "wb") as handle:
        handle.write(b"edited")
    sizes, report = _windows_checked(monkeypatch, url, str(tmp_path / "out"))
    assert sizes == [8, 4]
    assert [f.path for f in report.failures] == [paths[10]]
    assert sorted(t.path for t in report.targets) == paths
    assert all(t.check.status is ArtifactStatus.OK for t in report.targets if t.path != paths[10])
