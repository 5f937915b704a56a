"""``ignore_for_cache`` as deployed: an ignored input directory within one run, and
``ignore_for_cache=["outputs"]``.

1. A group runs ``write(text) -> refdir/ -> use(ref=File(refdir)) -> out.txt`` where ``use`` is
   declared ``@python_app(cache=True, ignore_for_cache=["ref"])``, then, in the same run,
   rewrites ``refdir/`` and calls ``use`` again: a hit in Parsl's table (``ref`` is not part of
   its key) on the value made from the first text. The value's record may still be on its way
   to the ledger (write-behind), so the memoizer keeps the bytes each value of the run was made
   from; before, it kept them for files only (a directory is not hashed as the try is handed
   it), and ``strict`` reused the result made from the old directory without a word.
2. ``ignore_for_cache=["outputs"]`` fails inside Parsl itself: ``make_hash`` deletes the
   ``outputs`` keyword once as ignored and once more as the outputs (``KeyError: 'outputs'``),
   with or without the ledger. The plugin refuses it with a message that says so and what to do.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

pytest.importorskip("parsl", reason="the Parsl plugin needs parsl (make install installs it)")
pytest.importorskip("lineage_ledger_parsl", reason="make install installs plugins/parsl")

from lineage_ledger import open_ledger  # noqa: E402
from tests.support import parsl as support  # noqa: E402

DIRECTORY_IN_ONE_RUN = """
    import sys
    sys.path.insert(0, {example!r})
    import parsl, pipeline
    from parsl.app.app import python_app
    from parsl.data_provider.files import File
    from lineage_ledger_parsl import ParslLedger

    def write(text, after=None, outputs=()):
        import os  # a worker process of the HighThroughputExecutor has only the function
        os.makedirs(outputs[0].filepath, exist_ok=True)
        with open(os.path.join(outputs[0].filepath, "part.txt"), "w") as handle:
            handle.write(text)
        return text

    def use(ref=None, outputs=()):
        import os
        with open(os.path.join(ref.filepath, "part.txt")) as source:
            text = source.read()
        with open(outputs[0].filepath, "w") as handle:
            handle.write(text.upper())
        return text

    ledger = ParslLedger({url!r}, policy=sys.argv[1])
    dfk = parsl.load(pipeline.make_config({workdir!r}, sys.argv[2], ledger, checkpoint=False))
    try:  # cleaned up whatever happens: a HighThroughputExecutor's interchange outlives a dead program
        write_app, use_app = python_app(write, cache=True), python_app(use, cache=True, ignore_for_cache=["ref"])
        first = write_app("first", outputs=[File({ref!r})])
        used = use_app(ref=first.outputs[0], outputs=[File({out!r})])
        second = write_app("second", after=used, outputs=[File({ref!r})])  # once the first use has read it
        again = use_app(ref=second.outputs[0], outputs=[File({out!r})])
        print(used.result(), flush=True)
        try:
            print(again.result(), flush=True)
        except Exception as error:
            print("refused: " + type(error).__name__ + ": " + str(error), flush=True)
        print(dfk.run_id, flush=True)
    finally:
        dfk.cleanup()
"""


def _environment(workdir) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
    env["LINEAGE_STATE_DIR"] = str(workdir / "state")
    return env


def _run(workdir, *args: str) -> list[str]:
    done = subprocess.run([sys.executable, str(workdir / "run.py"), *args], cwd=workdir, env=_environment(workdir),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()


def _refused_tries(url: str, run_id: str, name: str) -> list:
    """``name``'s failed tries in ``run_id``, once there is one: the DataFlowKernel's cleanup
    waits a bounded time for the recording process, and under load the records may land a
    little later (they are on their way through the spool)."""
    deadline = time.monotonic() + 120
    while True:
        with open_ledger(url) as ledger:
            found = [entry.record for entry in ledger.run(run_id)
                     if entry.record.task_name == name and entry.record.status == "failed"]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


@pytest.mark.parametrize(("policy", "executor"), [("strict", "threads"), ("rerun", "threads"), ("strict", "htex")])
def test_an_ignored_directory_rewritten_within_the_run_is_not_reused(workdir, monkeypatch, policy, executor):
    if executor == "htex":
        support.worker_environment(monkeypatch)
    url = f"sqlite:///{workdir / 'ledger.db'}"
    ref, out = workdir / "refdir", workdir / "out.txt"
    (workdir / "run.py").write_text(textwrap.dedent(DIRECTORY_IN_ONE_RUN.format(
        example=str(support.EXAMPLE_DIR), url=url, workdir=str(workdir), ref=str(ref), out=str(out))))
    used, again, _run_id = _run(workdir, policy, executor)[-3:]
    assert used == "first"
    assert (ref / "part.txt").read_text() == "second"
    if policy == "strict":
        assert again.startswith("refused: ArtifactMismatch") and "ignore_for_cache" in again and str(ref) in again, again
        assert out.read_text() == "FIRST"
    else:
        assert again == "second"  # run again on the rewritten directory, not the first text reused
        assert out.read_text() == "SECOND"


IGNORED_OUTPUTS = """
    import sys
    sys.path.insert(0, {example!r})
    import parsl, pipeline
    from parsl.app.app import python_app
    from parsl.data_provider.files import File
    from lineage_ledger_parsl import ParslLedger

    def make(text, outputs=()):
        with open(outputs[0].filepath, "w") as handle:
            handle.write(text)
        return text

    ledger = ParslLedger({url!r}, policy=sys.argv[1])
    dfk = parsl.load(pipeline.make_config({workdir!r}, "threads", ledger, checkpoint=False))
    made = python_app(make, cache=True, ignore_for_cache=["outputs"])("text", outputs=[File({out!r})])
    plain = python_app(make, cache=True)("text", outputs=[File({other!r})])
    try:
        print(made.result(), flush=True)
    except Exception as error:
        print("refused: " + type(error).__name__ + ": " + str(error), flush=True)
    print(plain.result(), flush=True)
    print(dfk.run_id, flush=True)
    dfk.cleanup()
"""


@pytest.mark.parametrize("policy", ["warn", "strict"])
def test_ignore_for_cache_of_outputs_is_refused_saying_why(workdir, policy):
    """Before, the try failed with Parsl's bare ``KeyError: 'outputs'`` from ``make_hash`` (the
    same program without the ledger fails the same way). Now the plugin refuses
    it before Parsl's key is made, under every policy, saying why and what to do, and records
    the refused try (it wrote nothing); an app of the same run without it runs as before."""
    url = f"sqlite:///{workdir / 'ledger.db'}"
    out, other = workdir / "out.txt", workdir / "other.txt"
    (workdir / "run.py").write_text(textwrap.dedent(IGNORED_OUTPUTS.format(
        example=str(support.EXAMPLE_DIR), url=url, workdir=str(workdir), out=str(out), other=str(other))))
    made, plain, run_id = _run(workdir, policy)[-3:]
    assert made.startswith("refused: ValueError: "), made
    assert "ignore_for_cache" in made and "'outputs'" in made and "make_hash" in made, made
    assert "Remove 'outputs' from ignore_for_cache" in made, made
    assert not out.exists()
    assert plain == "text" and other.read_text() == "text"
    (refused,) = _refused_tries(url, run_id, "make")
    assert refused.extra["refused_by"] == "ignore_for_cache"
    assert "make_hash" in refused.extra["error"]
    assert str(out) not in refused.outputs and refused.extra["outputs_not_written"] == [str(out)]


DIRECTORY_ACROSS_RUNS = """
    import sys
    sys.path.insert(0, {example!r})
    import parsl, pipeline
    from parsl.app.app import python_app
    from parsl.data_provider.files import File
    from lineage_ledger_parsl import ParslLedger

    def write(text, outputs=()):
        import os
        os.makedirs(outputs[0].filepath, exist_ok=True)
        with open(os.path.join(outputs[0].filepath, "part.txt"), "w") as handle:
            handle.write(text)
        return text

    def use(ref=None, outputs=()):
        import os
        with open(os.path.join(ref.filepath, "part.txt")) as source:
            text = source.read()
        with open(outputs[0].filepath, "w") as handle:
            handle.write(text.upper())
        return text

    ledger = ParslLedger({url!r}, policy="strict")
    dfk = parsl.load(pipeline.make_config({workdir!r}, "threads", ledger))
    python_app(write, cache=True)(sys.argv[1], outputs=[File({ref!r})]).result()
    used = python_app(use, cache=True, ignore_for_cache=["ref"])(ref=File({ref!r}), outputs=[File({out!r})])
    try:
        print(used.result(), flush=True)
    except Exception as error:
        print("refused: " + type(error).__name__ + ": " + str(error), flush=True)
    dfk.cleanup()
"""


def test_an_ignored_directory_rewritten_by_a_later_run_is_refused_under_strict(workdir):
    """Across runs (Parsl's checkpoint on, a Python process each): the second run's ``write``
    rewrites ``refdir/`` (recorded, so the check of the last record passes) and ``use`` is a
    hit on the value made from the first text: compared with the directory's digest the
    key's succeeded try read, as for a file."""
    url = f"sqlite:///{workdir / 'ledger.db'}"
    ref, out = workdir / "refdir", workdir / "out.txt"
    (workdir / "run.py").write_text(textwrap.dedent(DIRECTORY_ACROSS_RUNS.format(
        example=str(support.EXAMPLE_DIR), url=url, workdir=str(workdir), ref=str(ref), out=str(out))))
    assert _run(workdir, "first")[-1] == "first"
    again = _run(workdir, "second")[-1]
    assert (ref / "part.txt").read_text() == "second"
    assert again.startswith("refused: ArtifactMismatch") and "ignore_for_cache" in again and str(ref) in again, again
    assert out.read_text() == "FIRST"
