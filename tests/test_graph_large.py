"""``lineage-ledger graph`` of a large selection: DOT is streamed (core/exports/_graph_dot.py),
its memory bounded whatever the run; HTML and SVG, which lay out every node here, refuse a
selection past ``MAX_DRAWN`` nodes before loading it, saying what to use instead, except an
SVG folded by rule or run, made from the run read a page at a time. (About 8 s:
one ledger of 500 tasks writing 40 versions each, made with the Python API; the memory test
runs a fresh interpreter.)"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from blake3 import blake3

from lineage_ledger import Record, open_ledger
from lineage_ledger.exports._graph import MAX_DRAWN

from .conftest import run_cli

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
TASKS, OUTPUTS = 500, 40  # 20,000 file versions of 40 paths: few paths to check on disk


def _record(i: int, run: str = "wide") -> Record:
    outputs = {f"/nonexistent/wide/{k}.txt": {"blake3": blake3(f"{i}-{k}".encode()).hexdigest(), "size": 10}
               for k in range(OUTPUTS)}
    return Record(engine="cli", run_id=run, task_id=f"t{i}", task_name=f"step{i % 3}", status="succeeded",
                  started=T0 + timedelta(seconds=i), ended=T0 + timedelta(seconds=i + 1), inputs={},
                  outputs=outputs, parameters={}, environment={"host": "h"})


@pytest.fixture(scope="module")
def wide(tmp_path_factory) -> Path:
    """A ledger holding run "wide" (20,500 nodes) and run "tiny" (one task)."""
    directory = tmp_path_factory.mktemp("wide")
    with open_ledger(f"sqlite:///{directory}/ledger.db", spool=str(directory / "spool"),
                     state_dir=str(directory / "state")) as ledger:
        records = [_record(i).stored() for i in range(TASKS)]
        records.append(Record(engine="cli", run_id="tiny", task_id="t", task_name="t", status="succeeded",
                              started=T0, ended=T0, inputs={}, parameters={}, environment={},
                              outputs={"/nonexistent/t": {"blake3": "0" * 64, "size": 1}}).stored())
        ledger.append_records(records, block_size=1000)
        ledger.tree_head()
    return directory


# A fresh process: the ledger opened and every module loaded (a graph of run "tiny"), then
# the peak resident set's growth over `graph --run wide -f dot`, the command itself.
_CHILD = """
import sys

def kib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))

from lineage_ledger._cli.export import graph
url, out = sys.argv[1:]
graph.main(["--ledger", url, "--run", "tiny", "-f", "dot", "-o", out], standalone_mode=False)
with open("/proc/self/clear_refs", "w") as refs:
    refs.write("5")  # the peak (VmHWM) starts again from the resident set now
before = kib("VmRSS")
graph.main(["--ledger", url, "--run", "wide", "-f", "dot", "-o", out], standalone_mode=False)
print((kib("VmHWM") - before) / 1024)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads and resets /proc/self's peak RSS")
def test_a_dot_graph_holds_no_more_than_a_page(wide, tmp_path):
    """The model of 20,500 nodes, its DOT text held whole beside it, added about 70 MiB;
    streamed, about 25 (the ledger's cache of the 500 records decoded, the index rows of a
    window of paths read ahead, the scratch stores' caches). The bound is generous; a held
    model is past it."""
    out = tmp_path / "wide.dot"
    child = subprocess.run([sys.executable, "-c", _CHILD, f"sqlite:///{wide}/ledger.db", str(out)],
                           capture_output=True, text=True, timeout=300,
                           env={**{k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")},
                                "XDG_STATE_HOME": str(tmp_path / "state")})
    assert child.returncode == 0, child.stderr
    grown = float(child.stdout.split()[-1])
    text = out.read_text(encoding="utf-8")
    assert text.startswith("digraph lineage {") and text.endswith("}\n")
    assert text.count(" [shape=note,") == TASKS * OUTPUTS and text.count(" [shape=box,") == TASKS
    assert text.count(" -> ") == TASKS * OUTPUTS
    assert grown < 40, grown


@pytest.mark.parametrize(("fmt", "group"), [("html", "rule"), ("svg", "none")])
def test_a_graph_too_big_to_draw_is_refused_before_it_is_loaded(wide, tmp_path, fmt, group):
    assert TASKS + TASKS * OUTPUTS > MAX_DRAWN
    out = tmp_path / f"wide.{fmt}"
    result = run_cli("graph", "--ledger", f"sqlite:///{wide}/ledger.db", "--run", "wide", "-f", fmt,
                     "-o", out, "--group", group, cwd=tmp_path, env={"XDG_STATE_HOME": str(tmp_path / "state")})
    assert result.returncode == 2, (result.returncode, result.stderr)
    message = " ".join(result.stderr.split())  # as one line, however it is wrapped
    assert "500 task(s) and 20,000 file version(s)" in message and f"{MAX_DRAWN:,}" in message, message
    assert "-f dot" in message and "-f svg --group rule" in message and "TARGET" in message, message
    assert "Traceback" not in result.stderr and not out.exists()
    # A small run of the same ledger is drawn as before.
    small = run_cli("graph", "--ledger", f"sqlite:///{wide}/ledger.db", "--run", "tiny", "-f", fmt,
                    "-o", out, cwd=tmp_path, env={"XDG_STATE_HOME": str(tmp_path / "state")})
    assert small.returncode == 0 and out.exists(), small.stderr


@pytest.mark.parametrize(("group", "boxes"), [("auto", 6), ("run", 2)])
def test_a_large_svg_is_drawn_folded(wide, tmp_path, group, boxes):
    """auto folds by rule (three rules: three boxes of tasks, three of the files they wrote),
    as it does past 300 nodes; by run, one box of tasks and one of their files."""
    out = tmp_path / "wide.svg"
    run_cli("graph", "--ledger", f"sqlite:///{wide}/ledger.db", "--run", "wide", "-f", "svg", "-o", out,
            "--group", group, cwd=tmp_path, env={"XDG_STATE_HOME": str(tmp_path / "state")}, check_rc=0)
    svg = ET.parse(out).getroot()
    titles = [g.findtext("{http://www.w3.org/2000/svg}title") or "" for g in svg.iter("{http://www.w3.org/2000/svg}g")]
    assert len(titles) == boxes, titles
    if group == "run":
        assert sorted(titles) == ["20000 files: outputs of run wide [MISSING]", "wide ×500 [succeeded]"], titles
    else:
        assert "cli:step2 ×166 [succeeded]" in titles and "6680 files: cli:step1 [MISSING]" in titles, titles


def test_a_fold_of_more_boxes_than_drawn_is_refused(wide):
    """A run per task folded by run is as many boxes as nodes: the fold gives up past the bound
    (here 1 box: the wide run is two, its tasks and their files) instead of laying them out."""
    from lineage_ledger.exports._graph_fold import folded_view
    from lineage_ledger.exports._select import select

    with open_ledger(f"sqlite:///{wide}/ledger.db", spool=str(wide / "spool"),
                     state_dir=str(wide / "state")) as ledger, select(ledger, (), "wide") as selection:
        assert folded_view(ledger, selection, "run", 1) is None
        view = folded_view(ledger, selection, "run", 2)
    assert view is not None and [n["kind"] for n in view["nodes"]] == ["group", "group"]
    assert view["edges"] == [{"from": "g:t|wide", "to": "g:f|outputs of run wide", "count": TASKS * OUTPUTS}]


def test_broken_versions_are_found_alike_read_ahead_or_one_by_one(tmp_path, monkeypatch):
    """The versions a run read that none of its records wrote are looked up a window at a
    time, their index rows read ahead together: a version read after its file changed
    (produced, but never in that version) is "broken", a source is not, either way."""
    from lineage_ledger.exports import _select

    t0 = datetime(2025, 1, 1, tzinfo=timezone.utc)

    def entry(text: str) -> dict:
        return {"blake3": blake3(text.encode()).hexdigest(), "size": len(text)}

    sources = {str(tmp_path / f"src-{i:02d}.txt"): entry(f"s{i}") for i in range(20)}
    made = str(tmp_path / "made.txt")
    writer = Record(engine="test", run_id="first", task_id="w", task_name="write", status="succeeded",
                    started=t0, ended=t0, outputs={made: entry("as written")})
    reader = Record(engine="test", run_id="second", task_id="r", task_name="read", status="succeeded",
                    started=t0 + timedelta(minutes=1), ended=t0 + timedelta(minutes=2),
                    inputs={**sources, made: entry("edited by hand")},
                    outputs={str(tmp_path / "out.txt"): entry("out")})
    url = f"sqlite:///{tmp_path}/ledger.db"
    with open_ledger(url, spool=str(tmp_path / "spool"), state_dir=str(tmp_path / "state")) as ledger:
        ledger.append_records([writer.stored(), reader.stored()])
    found = {}
    for ahead in (True, False):
        monkeypatch.setattr(_select, "_LOOK_AHEAD", 16 if ahead else 10**9)
        with open_ledger(url, read_only=True, state_dir=str(tmp_path / "state")) as ledger:
            with _select.select(ledger, [], "second") as selection:
                found[ahead] = set(selection.broken)
    assert found[True] == found[False] == {(made, entry("edited by hand")["blake3"])}
