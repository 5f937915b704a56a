"""The code digest of a Parsl app is its code: the function from its ``def`` line (issue 17).

Where an app runs and how Parsl caches it (``@python_app(executors=[...], cache=True)``)
are settings of the run, not code; the arguments and the try are parameters and
``attempt``. Real DataFlowKernels on a ThreadPoolExecutor.
"""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("parsl", reason="the Parsl plugin needs parsl (make install installs it)")
pytest.importorskip("lineage_ledger_parsl", reason="make install installs plugins/parsl")

from lineage_ledger_parsl import ParslLedger  # noqa: E402
from parsl.config import Config  # noqa: E402
from parsl.data_provider.files import File  # noqa: E402
from parsl.executors import ThreadPoolExecutor  # noqa: E402

from lineage_ledger import code_digest, open_ledger  # noqa: E402
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
