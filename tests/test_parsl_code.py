"""The code digest of a Parsl app is its code: the function from its ``def`` line (issue 17).

Where an app runs and how Parsl caches it (``@python_app(executors=[...], cache=True)``)
are settings of the run, not code; the arguments and the try are parameters and
``attempt``. Real DataFlowKernels on a ThreadPoolExecutor.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import textwrap
import threading
from pathlib import Path

import pytest

pytest.importorskip("parsl", reason="the Parsl plugin needs parsl (make install installs it)")
pytest.importorskip("lineage_ledger_parsl", reason="make install installs plugins/parsl")

from lineage_ledger_parsl import ParslLedger  # noqa: E402
from parsl.app.app import python_app  # noqa: E402
from parsl.config import Config  # noqa: E402
from parsl.data_provider.files import File  # noqa: E402
from parsl.executors import ThreadPoolExecutor  # noqa: E402

from lineage_ledger import ArtifactMismatch, code_digest, open_ledger  # noqa: E402
from tests.conftest import run_cli  # noqa: E402
from tests.support import parsl as support  # noqa: E402

BODY = '''
def scale(factor, tries_file, outputs=()):
    """Writes factor * 21; fails on its first try (leaving tries_file)."""
    import os

    if not os.path.exists(tries_file):
        open(tries_file, "w").close()
        raise RuntimeError("first try fails on purpose")
    with open(outputs[0], "w") as handle:
        handle.write(str(factor * 21))
    return factor
'''

VARIANTS = {
    # The same function under other decorators: other executors, caching on.
    "plain": "from parsl.app.app import python_app\n\n@python_app(executors=['one'])" + BODY,
    "moved": "from parsl.app.app import python_app\n\n@python_app(\n    executors=['two'],\n    cache=True,\n)"
             + BODY,
    # Changed code: must get another digest.
    "edited": "from parsl.app.app import python_app\n\n@python_app(executors=['one'])"
              + BODY.replace("factor * 21", "factor * 22"),
}


def load_module(directory: Path, name: str, source: str):
    path = directory / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"parsl_code_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_variant(workdir: Path, url: str, name: str) -> list:
    module = load_module(workdir, name, VARIANTS[name])
    ledger = ParslLedger(url)
    executors = [ledger.wrap(ThreadPoolExecutor(label=label, max_threads=2)) for label in ("one", "two")]
    config = Config(executors=executors, memoizer=ledger.memoizer(), retries=1, usage_tracking=0,
                    run_dir=str(workdir / "runinfo"))
    with support.loaded(config) as dfk:
        futures = [module.scale(factor, str(workdir / f"{name}-{factor}.tried"),
                                outputs=[File(str(workdir / f"{name}-{factor}.txt"))]) for factor in (1, 2)]
        assert [f.result() for f in futures] == [1, 2]
        run_id = dfk.run_id
    with open_ledger(url) as opened:
        return [entry.record for entry in opened.run(run_id)]


def test_an_apps_code_digest_ignores_decorators_arguments_and_tries(workdir):
    url = f"sqlite:///{workdir / 'ledger.db'}"
    digests = {}
    for name in VARIANTS:
        tries = run_variant(workdir, url, name)
        # two tasks (other arguments), two tries each (the first fails): one code digest
        assert sorted((r.parameters["args"][0], r.attempt, r.status) for r in tries) == [
            (1, 1, "failed"), (1, 2, "succeeded"), (2, 1, "failed"), (2, 2, "succeeded")]
        assert len({r.code_digest for r in tries}) == 1, [r.code_digest for r in tries]
        digests[name] = tries[0].code_digest
    # The function from its def line, dedented: the code, without where it runs.
    assert digests["plain"] == code_digest(textwrap.dedent(BODY).lstrip("\n"))
    assert digests["moved"] == digests["plain"]
    assert digests["edited"] != digests["plain"]


# -- a failed try is recorded as that try, and Parsl retries only once the record is made --

RETRY_GRACE_S = 3


class _Steps:
    """The order this test forces on one task's first try, its record and its retry."""

    def __init__(self) -> None:
        self.launch_logged = threading.Event()  # the DFK logged try 0 launched: our callback is queued
        self.recording = threading.Event()  # the ledger's done callback of try 0 is running
        self.retry_running = threading.Event()  # try 1 runs: the DFK moved its task record on
        self.retried_first = False  # try 1 ran while the ledger was recording try 0

    def __repr__(self) -> str:  # a parameter of the app: one stable spelling in the record
        return "steps"


class _SaidLate(RuntimeError):
    """Try 0's failure. The ledger's done callback formats it before it reads the task's
    try; its message is ready only once Parsl has started the retry."""

    def __init__(self, steps: _Steps) -> None:
        super().__init__("first try fails on purpose")
        self.steps = steps

    def __str__(self) -> str:
        self.steps.recording.set()
        # Parsl sees the try end only once its report is handed over, so no retry can start
        # here; were it to, it would within this grace (a thread switch, unless the machine is
        # very busy, when the check can only pass, never fail wrongly).
        self.steps.retried_first = self.steps.retry_running.wait(RETRY_GRACE_S)
        return "first try fails on purpose"


def _fails_first(steps, tries_file, outputs=()):
    if not os.path.exists(tries_file):
        open(tries_file, "w").close()
        steps.launch_logged.wait(30)  # finish once Parsl's launch_task has logged, before it adds its callback
        raise _SaidLate(steps)
    steps.retry_running.set()
    with open(outputs[0], "w") as handle:
        handle.write("second try\n")
    return "done"


class _HoldLaunch(logging.Handler):
    """Parsl logs "task N try 0 launched" between ``executor.submit`` returning (the ledger
    has added its done callback) and adding its own. Held there until the try has ended and
    the ledger's callback is running, Parsl adds its callback to a finished future, which
    calls it at once, on the launch thread, beside the ledger's: the schedule that a busy
    machine makes now and then, made every time."""

    def __init__(self, steps: _Steps) -> None:
        super().__init__(logging.INFO)
        self.steps = steps

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "parsl.executor", None) and getattr(record, "parsl.try", None) == 0:
            self.steps.launch_logged.set()
            self.steps.recording.wait(30)


def test_a_failed_try_is_recorded_as_its_own_try_before_parsl_retries(workdir):
    """A try's record says which try it was (a failed first try was once recorded as attempt
    2, a rare failure of the test above), and on the schedule that caused it (the try ends
    between the executor's submit and Parsl's watching it) Parsl no longer sees the try end,
    nor retries it, before the ledger has its report: the future it watches is the ledger's
    relay (``_Try.relayed``). Before, the retry ran while try 0 was being recorded."""
    url = f"sqlite:///{workdir / 'ledger.db'}"
    steps = _Steps()
    ledger = ParslLedger(url)
    config = Config(executors=[ledger.wrap(ThreadPoolExecutor(label="one", max_threads=2))],
                    memoizer=ledger.memoizer(), retries=1, usage_tracking=0, run_dir=str(workdir / "runinfo"))
    hold = _HoldLaunch(steps)
    dflow_log = logging.getLogger("parsl.dataflow.dflow")
    dflow_log.addHandler(hold)
    try:
        with support.loaded(config) as dfk:
            future = python_app(_fails_first, executors=["one"])(
                steps, str(workdir / "tried"), outputs=[File(str(workdir / "out.txt"))])
            assert future.result(timeout=120) == "done"
            run_id = dfk.run_id
    finally:
        dflow_log.removeHandler(hold)
    # The schedule was forced (the launch held until try 0 was being recorded), and the retry
    # waited for the record.
    assert steps.launch_logged.is_set() and steps.recording.is_set() and not steps.retried_first
    with open_ledger(url) as opened:
        tries = sorted((e.record.attempt, e.record.status) for e in opened.run(run_id))
    assert tries == [(1, "failed"), (2, "succeeded")]


# -- a cached result made by other code than the app has now --

CACHED_BODY = '''
def weigh(x, note="", outputs=()):
    with open(outputs[0], "w") as handle:
        handle.write(str(x * {factor}))
    return x * {factor}
'''
CACHED_APP = "from parsl.app.app import python_app\n\n@python_app(cache=True, ignore_for_cache=['note'])" + CACHED_BODY


def load_weigh(directory: Path, factor: int):
    """``weigh`` as a user's module has it after an edit: another file each time (no stale
    line cache), one module name, as Parsl keys an app (by name and module, not its code)."""
    path = directory / f"weigh_{factor}.py"
    path.write_text(CACHED_APP.format(factor=factor))
    spec = importlib.util.spec_from_file_location("parsl_code_weigh", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.weigh


def weigh_digest(factor: int) -> str:
    return code_digest(textwrap.dedent(CACHED_BODY.format(factor=factor)).lstrip("\n"))


def run_weigh(workdir: Path, url: str, policy: str, factor: int, *, edited_to: int | None = None):
    """One DataFlowKernel (Parsl's checkpoint on) calling ``weigh(2)`` of the code with
    ``factor``; with ``edited_to``, the app is then edited in the same run (a notebook cell run
    again) and called again. Returns [(value or error, from_memo)] and the run's records."""
    ledger = ParslLedger(url, policy=policy)
    out = File(str(workdir / "weighed.txt"))
    outcomes = []
    with support.loaded(support.load_pipeline().make_config(str(workdir), "threads", ledger)) as dfk:
        for made in [factor] if edited_to is None else [factor, edited_to]:
            future = load_weigh(workdir, made)(2, note=f"policy {policy}", outputs=[out])
            error = future.exception()
            outcomes.append((error if error is not None else future.result(), future.task_record["from_memo"]))
        run_id = dfk.run_id
    with open_ledger(url) as opened:
        return outcomes, sorted((e.record for e in opened.run(run_id)), key=lambda r: int(r.task_id))


def test_a_cached_result_made_by_other_code_is_refused_rerun_or_said(workdir, caplog):
    """Parsl keys a cached result by the app's name and module, never its code: an app edited
    between runs (or within one, in a notebook) reused the old code's result, and its
    ``cached`` record named the new code as having made it, under ``strict`` too. Now the code
    that made a cached result is the one its record names, and it is compared with the app's:
    ``strict`` refuses the reuse, ``rerun`` runs the app again, ``warn`` says so and reuses it."""
    url = f"sqlite:///{workdir / 'ledger.db'}"
    old, new = weigh_digest(21), weigh_digest(22)
    # Edited within the run: the first call ran the old code; strict refuses its result to the new.
    outcomes, records = run_weigh(workdir, url, "strict", 21, edited_to=22)
    assert outcomes[0] == (42, False)
    assert isinstance(outcomes[1][0], ArtifactMismatch), f"strict reused the old code's result: {outcomes[1]!r}"
    assert "made by other code" in str(outcomes[1][0])
    assert [(r.status, r.code_digest) for r in records] == [("succeeded", old), ("failed", new)]
    assert records[1].extra["refused_by"] == "strict"
    # A later run of the new code: the result in Parsl's checkpoint is the old code's.
    outcomes, records = run_weigh(workdir, url, "strict", 22)
    assert isinstance(outcomes[0][0], ArtifactMismatch), f"strict reused the old code's result: {outcomes[0]!r}"
    assert "made by other code" in str(outcomes[0][0]) and records[0].extra["code_made_by"] == old
    caplog.set_level(logging.WARNING, logger="lineage_ledger")
    caplog.clear()
    outcomes, records = run_weigh(workdir, url, "warn", 22)
    assert outcomes == [(42, True)]
    assert any("weigh" in r.getMessage() and "code" in r.getMessage() for r in caplog.records), caplog.text
    [cached] = records
    assert cached.status == "cached" and cached.code_digest == old, "the new code is named as having made it"
    assert cached.extra["code_now"] == new
    # rerun runs the new code; its result is reused under strict after that.
    assert run_weigh(workdir, url, "rerun", 22)[0] == [(44, False)]
    outcomes, records = run_weigh(workdir, url, "strict", 22)
    assert outcomes == [(44, True)] and records[0].code_digest == new
    run_cli("--ledger", url, str(workdir / "weighed.txt"), program="verify-lineage", cwd=workdir, check_rc=0)
