"""A cached result whose output a later run of the workflow rewrote, reused when a parameter
goes back.

A group runs ``make(tag) -> src.txt -> process -> out.txt`` with ``tag="a"``, then ``"b"``,
then ``"a"`` again (a parameter reverted, in a separate Python process each time, Parsl's
checkpoint on). On the third run Parsl's checkpoint holds ``make("a")``, so it is a cache
hit; but ``src.txt`` on disk is what ``make("b")`` wrote. The ledger's last record of
``src.txt`` is ``make("b")``'s, so the check "disk equals the last record" passes, and
before, ``strict`` reused ``make("a")``'s result with ``b``'s file: ``process`` then hit its
own checkpoint for ``b``'s content and the run ended with ``out.txt == "SOURCE B"``, silently.

A cached result is only reused when each of its outputs on disk is one that a try with the
same memo key recorded (``extra["memo_hash"]``): ``strict`` refuses it naming the file,
``rerun`` runs the task again (and the run ends with ``a``'s results), ``warn`` says so and
reuses it, its ``cached`` record not listing the file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("parsl", reason="the Parsl plugin needs parsl (make install installs it)")
pytest.importorskip("lineage_ledger_parsl", reason="make install installs plugins/parsl")

from lineage_ledger import open_ledger  # noqa: E402
from tests.support import parsl as support  # noqa: E402

PROGRAM = """
    import os, sys
    sys.path.insert(0, {example!r})
    import parsl, pipeline
    from parsl.app.app import python_app
    from parsl.data_provider.files import File
    from lineage_ledger_parsl import ParslLedger

    def make(tag, outputs=()):
        with open(outputs[0].filepath, "w") as handle:
            handle.write("source " + tag + "\\n")
        return tag

    def process(inputs=(), outputs=()):
        with open(inputs[0].filepath) as src:
            text = src.read()
        with open(outputs[0].filepath, "w") as handle:
            handle.write(text.upper())
        return text.strip()

    tag, policy = sys.argv[1], sys.argv[2]
    ledger = ParslLedger({url!r}, policy=policy)
    dfk = parsl.load(pipeline.make_config({workdir!r}, "threads", ledger))
    made = python_app(make, cache=True)(tag, outputs=[File({src!r})])
    done = python_app(process, cache=True)(inputs=[made.outputs[0]], outputs=[File({out!r})])
    try:
        print(dfk.run_id, made.result(), done.result(), sep="|", flush=True)
    except Exception as error:
        print(dfk.run_id, "refused", type(error).__name__ + ": " + str(error), sep="|", flush=True)
    dfk.cleanup()
"""


def _program(workdir):
    url = f"sqlite:///{workdir / 'ledger.db'}"
    (workdir / "run.py").write_text(textwrap.dedent(PROGRAM.format(
        example=str(support.EXAMPLE_DIR), url=url, workdir=str(workdir), src=str(workdir / "src.txt"),
        out=str(workdir / "out.txt"))))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
    env["LINEAGE_STATE_DIR"] = str(workdir / "state")

    def run(tag: str, policy: str) -> tuple[str, list[str], str]:
        done = subprocess.run([sys.executable, str(workdir / "run.py"), tag, policy], cwd=workdir, env=env,
                              capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]
        run_id, *rest = done.stdout.strip().splitlines()[-1].split("|")
        return run_id, rest, done.stderr

    return url, run


def _tries(url: str, run_id: str) -> dict[str, list]:
    with open_ledger(url) as ledger:
        found: dict[str, list] = {}
        for entry in ledger.run(run_id):
            found.setdefault(entry.record.task_name, []).append(entry.record)
        return found


@pytest.mark.parametrize("policy", ["strict", "rerun", "warn"])
def test_a_cached_result_is_not_reused_with_an_output_a_later_run_rewrote(workdir, policy):
    url, run = _program(workdir)
    assert run("a", policy)[1] == ["a", "source a"]
    again, result, _ = run("a", policy)  # the ordinary reuse still hits
    assert result == ["a", "source a"]
    assert {name: [r.status for r in tries] for name, tries in _tries(url, again).items()} == {
        "make": ["cached"], "process": ["cached"]}
    assert run("b", policy)[1] == ["b", "source b"]
    reverted, result, stderr = run("a", policy)
    tries = _tries(url, reverted)
    src = str(workdir / "src.txt")
    if policy == "strict":
        assert result[0] == "refused" and "src.txt" in result[1], result
        assert [r.status for r in tries["make"]] == ["failed"]
        assert tries["make"][0].extra["refused_by"] == "strict" and src not in tries["make"][0].outputs
    elif policy == "rerun":
        assert result == ["a", "source a"]
        assert (workdir / "out.txt").read_text() == "SOURCE A\n"
        assert [r.status for r in tries["make"]] == ["succeeded"]
    else:
        assert result == ["a", "source b"]  # reused, as warn does, but said
        assert "src.txt" in stderr and "rewrote" in stderr
        (cached,) = tries["make"]
        assert cached.status == "cached" and src not in cached.outputs
        assert cached.extra["modified_outside_workflow"] == [src]
