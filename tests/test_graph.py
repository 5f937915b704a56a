"""lineage-ledger graph: the HTML page in headless Chromium, and the SVG and DOT forms.

The browser is Debian's ``chromium`` (``.ci/run`` installs it), driven over the Chrome
DevTools Protocol with ``websockets``: the page is loaded from a file, its DOM is counted,
nodes are clicked, every console error and uncaught exception is collected, and a
screenshot is kept under ``build/test-artifacts/`` (and the test's tmp dir).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "build" / "test-artifacts"


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Browser:
    """One headless Chromium page over the DevTools protocol."""

    def __init__(self, binary: str, profile: Path) -> None:
        from websockets.sync.client import connect

        self.proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
             "--disable-background-networking", "--disable-component-update", "--remote-debugging-port=0",
             "--remote-allow-origins=*", f"--user-data-dir={profile}", "--window-size=1400,900", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        url, deadline = None, time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                break
            found = re.search(r"DevTools listening on (ws://\S+)", line)
            url = found.group(1) if found else None
        if url is None:
            self.proc.kill()
            raise RuntimeError("chromium did not start its DevTools endpoint")
        port = url.split(":")[2].split("/")[0]
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=20).read())
        page = next(t for t in targets if t["type"] == "page")
        self._connection = connect(page["webSocketDebuggerUrl"], max_size=1 << 27, open_timeout=20)
        self.ws = self._connection.__enter__()
        self.sequence, self.events = 0, []
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")

    def call(self, method: str, **params):
        self.sequence += 1
        mine = self.sequence
        self.ws.send(json.dumps({"id": mine, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == mine:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    def open(self, path: Path) -> None:
        self.events.clear()
        self.call("Page.navigate", url=path.resolve().as_uri())
        deadline = time.monotonic() + 60
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            assert time.monotonic() < deadline, "the page did not load"
            self.events.append(json.loads(self.ws.recv(timeout=60)))

    def eval(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def errors(self) -> list[str]:
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(json.dumps(params["exceptionDetails"])[:500])
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert", "warning"):
                found.append(json.dumps(params["args"])[:500])
            elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
                found.append(params["entry"]["text"][:500])
        return found

    def screenshot(self, *places: Path) -> None:
        png = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        assert png.startswith(b"\x89PNG")
        for place in places:
            place.parent.mkdir(parents=True, exist_ok=True)
            place.write_bytes(png)

    def close(self) -> None:
        try:
            self._connection.__exit__(None, None, None)
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    binary = _chromium()
    if binary is None:
        pytest.skip("no chromium on this machine: `apt-get install chromium` (.ci/run installs it)")
    pytest.importorskip("websockets", reason="the graph tests drive chromium with websockets (dev extra)")
    page = Browser(binary, tmp_path_factory.mktemp("chromium-profile"))
    yield page
    page.close()


def _click(browser: Browser, selector: str) -> str:
    browser.eval(f"document.querySelector({json.dumps(selector)})"
                 ".dispatchEvent(new MouseEvent('click', {bubbles: true}))")
    return browser.eval("document.getElementById('details').textContent")


@pytest.fixture
def statuses(cli, workdir):
    """Four tasks whose files end up OK, MODIFIED, MISSING, broken and superseded."""
    (workdir / "raw.txt").write_text("pear\napple\nfig\n")
    steps = [
        ("sort", "raw.txt", "sorted.txt", "sort raw.txt > sorted.txt"),
        ("head", "sorted.txt", "top.txt", "head -n 1 sorted.txt > top.txt"),
        ("count", "sorted.txt", "count.txt", "wc -l < sorted.txt > count.txt"),
    ]
    for name, src, dst, script in steps:
        cli("run", "-n", name, "-i", src, "-o", dst, "--run-id", "g1", "--", "sh", "-c", script, check_rc=0)
    (workdir / "top.txt").write_text("edited\n")  # MODIFIED
    (workdir / "count.txt").unlink()  # MISSING
    (workdir / "sorted.txt").write_text("changed by hand\n")  # read next in a version nobody made: broken
    cli("run", "-n", "reverse", "-i", "sorted.txt", "-o", "rev.txt", "--run-id", "g1",
        "--", "sh", "-c", "rev sorted.txt > rev.txt", check_rc=0)
    return workdir


def test_html_graph_in_headless_chromium(browser, statuses, cli, tmp_path):
    cli("graph", "--run", "g1", "-o", "graph.html", check_rc=0)
    page = statuses / "graph.html"
    text = page.read_text()
    assert "http://" not in text.split("<script")[0] and "src=" not in text  # nothing fetched
    browser.open(page)
    assert browser.eval("document.body.getAttribute('data-ready')") == "1"
    assert browser.eval("document.querySelectorAll('g.node').length") == 10  # 4 tasks + 6 file versions
    assert browser.eval("document.querySelectorAll('g.node[data-kind=task]').length") == 4
    found = browser.eval("Array.from(document.querySelectorAll('g.node[data-kind=file]'))"
                         ".map(g => g.textContent.split(' ')[0].replace(/[^\\x20-\\x7e]/g, '') + '=' "
                         "+ g.getAttribute('data-status')).sort()")
    assert sorted(found) == sorted(["raw.txtOK=OK", "sorted.txtsuperseded=superseded", "sorted.txtbroken=broken",
                                    "top.txtMODIFIED=MODIFIED", "count.txtMISSING=MISSING", "rev.txtOK=OK"]), found
    assert browser.eval("document.querySelectorAll('path.edge').length") == 8
    details = _click(browser, "g.node[data-kind=task]")
    assert '"record"' not in details and '"run_id": "g1"' in details and "cli:" in details
    details = _click(browser, "g.node[data-status=MODIFIED]")
    assert "top.txt" in details and "made by" in details
    browser.screenshot(tmp_path / "graph.png", ARTIFACTS / "graph-statuses.png")
    # Folded by rule: every box (a group of one is its member) opens without an error.
    browser.eval("const v = document.getElementById('view'); v.value = 'rule'; v.dispatchEvent(new Event('change'))")
    boxes = browser.eval("document.querySelectorAll('g.node').length")
    assert boxes == 10  # each rule ran once here: every box is a group of one
    for index in range(boxes):
        shown = _click(browser, f"g.node:nth-of-type({index + 1})")
        assert shown.strip() and "status:" in shown, shown
    assert browser.errors() == []

    # The same model as SVG (one view, laid out here) and DOT (for Graphviz).
    cli("graph", "--run", "g1", "-f", "svg", "-o", "graph.svg", check_rc=0)
    svg = ET.parse(statuses / "graph.svg").getroot()
    groups = [g for g in svg.iter("{http://www.w3.org/2000/svg}g") if "node" in g.get("class", "")]
    assert len(groups) == 10
    cli("graph", "sorted.txt", "rev.txt", "-f", "dot", "-o", "graph.dot", check_rc=0)
    dot = (statuses / "graph.dot").read_text()
    assert dot.startswith("digraph lineage {") and dot.count(" -> ") >= 4 and "broken" in dot


def test_a_thousand_nodes_open_grouped_and_expand(browser, cli, workdir, tmp_path):
    from lineage_ledger import Record, hash_file, open_ledger

    (workdir / "data").mkdir()
    shared = workdir / "data" / "reference.txt"
    shared.write_text("reference\n")
    reference = hash_file(str(shared))
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    records = []
    for i in range(600):
        out = workdir / "data" / f"sample-{i:04d}.txt"
        out.write_text(f"sample {i}\n")
        made = hash_file(str(out))
        records.append(Record(
            engine="snakemake", run_id="big", task_id=str(i), task_name=("align", "call", "plot")[i % 3],
            status="succeeded", started=start + timedelta(seconds=i), ended=start + timedelta(seconds=i + 1),
            inputs=[reference], outputs=[made]).stored())
    with open_ledger(f"sqlite:///{workdir}/.lineage/ledger.db") as ledger:
        ledger.append_records(records)
    cli("graph", "--run", "big", "-o", "big.html", check_rc=0)
    browser.open(workdir / "big.html")
    grouped = browser.eval("document.querySelectorAll('g.node').length")
    assert browser.eval("document.getElementById('view').value") == "rule" and 3 < grouped <= 10
    details = _click(browser, "g.node[data-kind=group]")
    assert "200 tasks" in details or "200 files" in details
    browser.screenshot(tmp_path / "big-grouped.png", ARTIFACTS / "graph-1200-grouped.png")
    browser.eval("const s = document.getElementById('view'); s.value = 'all'; "
                 "s.dispatchEvent(new Event('change'))")
    assert browser.eval("document.querySelectorAll('g.node').length") == 600 + 600 + 1
    assert browser.eval("document.querySelectorAll('path.edge').length") == 1200
    browser.eval("const q = document.getElementById('search'); q.value = 'sample-0042'; "
                 "q.dispatchEvent(new Event('input'))")
    assert browser.eval("document.querySelectorAll('g.node.hit').length") == 1
    browser.eval("const r = document.getElementById('view'); r.value = 'run'; r.dispatchEvent(new Event('change'))")
    assert browser.eval("document.querySelectorAll('g.node').length") <= 4
    browser.screenshot(tmp_path / "big-run.png", ARTIFACTS / "graph-1200-by-run.png")
    assert browser.errors() == []


def test_graph_text_from_records_is_never_markup(browser, cli, workdir):
    evil = "<img src=x onerror=alert(1)>"
    (workdir / "in.txt").write_text("x\n")
    cli("run", "-n", evil, "-i", "in.txt", "-o", "out.txt", "--run-id", "</script><b>", "-p", f"k={evil}",
        "--", "sh", "-c", "cp in.txt out.txt", check_rc=0)
    cli("graph", "out.txt", "-o", "evil.html", check_rc=0)
    browser.open(workdir / "evil.html")
    assert browser.eval("document.body.getAttribute('data-ready')") == "1"
    assert browser.eval("document.querySelectorAll('img, b').length") == 0
    details = _click(browser, "g.node[data-kind=task]")
    assert evil in details
    assert browser.errors() == []


def test_graph_usage_errors(cli, workdir):
    (workdir / "in.txt").write_text("x\n")
    cli("run", "-i", "in.txt", "-o", "out.txt", "--", "cp", "in.txt", "out.txt", check_rc=0)
    assert cli("graph", "-o", "x.html").returncode == 2
    assert "no record" in cli("graph", "--run", "none", "-o", "x.html").stderr
    assert not os.path.exists(workdir / "x.html")
