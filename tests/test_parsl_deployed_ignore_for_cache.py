"""A cache hit whose input ``File`` the app leaves out of its memo key (``ignore_for_cache``),
rewritten since the cached result was made.

A group runs ``write(text) -> ref.txt -> use(ref=...) -> out.txt`` where ``use`` is declared
``@python_app(cache=True, ignore_for_cache=["ref"])`` (Parsl's checkpoint on, each run a
separate Python process). The second run writes other text into ``ref.txt``: ``use`` is a hit,
since ``ref`` is not part of its key, and the rewrite is recorded, so the pre-run check (disk
equals the last record) passes. Before, every policy reused the result made from the first
text and recorded the ``cached`` try as having read the new one: ``verify-lineage out.txt``
passed, vouching for a derivation that never happened.

Now the bytes a hit's ignored input has are compared with those the key's recorded tries read:
``strict`` refuses the reuse naming the file, ``rerun`` runs the task again, ``warn`` says so
and reuses it, its ``cached`` record not listing the file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("parsl", reason="the Parsl plugin needs parsl (make install installs it)")
pytest.importorskip("lineage_ledger_parsl", reason="make install installs plugins/parsl")

from blake3 import blake3  # noqa: E402

from lineage_ledger import hash_file, open_ledger  # noqa: E402
from tests.support import parsl as support  # noqa: E402

PROGRAM = """
    import sys
    sys.path.insert(0, {example!r})
    import parsl, pipeline
    from parsl.app.app import python_app
    from parsl.data_provider.files import File
    from lineage_ledger_parsl import ParslLedger

    def write(text, outputs=()):
        with open(outputs[0].filepath, "w") as handle:
            handle.write(text)
        return text

    def use(ref=None, outputs=()):
        with open(ref.filepath) as source:
            text = source.read()
        with open(outputs[0].filepath, "w") as handle:
            handle.write(text.upper())
        return text

    text, policy = sys.argv[1], sys.argv[2]
    ledger = ParslLedger({url!r}, policy=policy)
    dfk = parsl.load(pipeline.make_config({workdir!r}, "threads", ledger))
    python_app(write, cache=True)(text, outputs=[File({ref!r})]).result()
    used = python_app(use, cache=True, ignore_for_cache=["ref"])(ref=File({ref!r}), outputs=[File({out!r})])
    try:
        print(dfk.run_id, used.result(), sep="|", flush=True)
    except Exception as error:
        print(dfk.run_id, "refused: " + type(error).__name__ + ": " + str(error), sep="|", flush=True)
    dfk.cleanup()
"""


def _tries(url: str, run_id: str, name: str) -> list:
    with open_ledger(url) as ledger:
        return [entry.record for entry in ledger.run(run_id) if entry.record.task_name == name]


@pytest.mark.parametrize("policy", ["strict", "rerun", "warn"])
def test_a_cache_hit_is_not_reused_on_an_ignored_input_rewritten_since(workdir, policy):
    url = f"sqlite:///{workdir / 'ledger.db'}"
    ref, out = workdir / "ref.txt", workdir / "out.txt"
    (workdir / "run.py").write_text(textwrap.dedent(PROGRAM.format(
        example=str(support.EXAMPLE_DIR), url=url, workdir=str(workdir), ref=str(ref), out=str(out))))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
    env["LINEAGE_STATE_DIR"] = str(workdir / "state")

    def run(text: str) -> tuple[str, str, str]:
        done = subprocess.run([sys.executable, str(workdir / "run.py"), text, policy], cwd=workdir, env=env,
                              capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]
        run_id, result = done.stdout.strip().splitlines()[-1].split("|", 1)
        return run_id, result, done.stderr

    assert run("first")[1] == "first"
    assert out.read_text() == "FIRST"
    run_id, result, stderr = run("second")
    assert ref.read_text() == "second"
    tries = _tries(url, run_id, "use")
    verify = subprocess.run([sys.executable, "-m", "lineage_ledger", "verify", "--ledger", str(workdir / "ledger.db"),
                             str(out)], cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    if policy == "strict":
        assert result.startswith("refused: ArtifactMismatch") and "ignore_for_cache" in result, result
        assert str(ref) in result
        (refused,) = tries
        assert refused.status == "failed" and refused.extra["refused_by"] == "strict"
        assert str(out) not in refused.outputs
        assert out.read_text() == "FIRST"
    elif policy == "rerun":
        assert result == "second"
        assert out.read_text() == "SECOND"
        (again,) = tries
        assert again.status == "succeeded" and again.outputs[str(out)]
        assert verify.returncode == 0, verify.stdout + verify.stderr
    else:
        assert result == "first"  # reused, as warn does, but said and not recorded as read
        assert "memo key" in stderr and "ref.txt" in stderr
        (cached,) = tries
        assert cached.status == "cached" and str(ref) not in cached.inputs
        assert cached.extra["modified_outside_workflow"] == [str(ref)]
    # Whatever the policy, no record says out.txt "FIRST" was made from the second text.
    second, first_out = hash_file(str(ref)).blake3, blake3(b"FIRST").hexdigest()
    with open_ledger(url) as ledger:
        lies = [entry.record.id for entry in ledger.consumers(str(ref), second)
                if (entry.record.outputs.get(str(out)) or {}).get("blake3") == first_out]
    assert lies == []


IN_ONE_RUN = """
    import sys
    sys.path.insert(0, {example!r})
    import parsl, pipeline
    from parsl.app.app import python_app
    from parsl.data_provider.files import File
    from lineage_ledger_parsl import ParslLedger

    def write(text, after=None, outputs=()):
        with open(outputs[0].filepath, "w") as handle:
            handle.write(text)
        return text

    def use(ref=None, outputs=()):
        with open(ref.filepath) as source:
            text = source.read()
        with open(outputs[0].filepath, "w") as handle:
            handle.write(text.upper())
        return text

    ledger = ParslLedger({url!r}, policy="strict")
    dfk = parsl.load(pipeline.make_config({workdir!r}, "threads", ledger, checkpoint=False))
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
    dfk.cleanup()
"""


def test_a_hit_in_the_same_run_on_an_ignored_input_rewritten_since_is_refused_under_strict(workdir):
    """The same, within one run: ``use`` runs on the first text, ``ref.txt`` is rewritten, and
    ``use`` is called again, a hit in Parsl's table on the value made seconds ago, whose record
    may not be in the ledger yet (write-behind). Before, it was reused under strict."""
    url = f"sqlite:///{workdir / 'ledger.db'}"
    ref, out = workdir / "ref.txt", workdir / "out.txt"
    (workdir / "run.py").write_text(textwrap.dedent(IN_ONE_RUN.format(
        example=str(support.EXAMPLE_DIR), url=url, workdir=str(workdir), ref=str(ref), out=str(out))))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
    env["LINEAGE_STATE_DIR"] = str(workdir / "state")
    done = subprocess.run([sys.executable, str(workdir / "run.py")], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    used, again = done.stdout.strip().splitlines()[-2:]
    assert used == "first"
    assert again.startswith("refused: ArtifactMismatch") and "ignore_for_cache" in again and str(ref) in again, again
    assert ref.read_text() == "second" and out.read_text() == "FIRST"
