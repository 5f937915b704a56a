"""``snakemake-ledger``'s own part: how it hands its command line to Snakemake.

The wrapper used to import Snakemake's CLI and parse the arguments (to learn the user's own
loggers), then exec a ``snakemake`` that imported and parsed them all again: about 1.5 s of
CPU of a one-rule run's 3 s (helper-160's and helper-163's measurements). Snakemake's CLI is
now imported once, in the exec'd process (the plugin's ``_run``). These tests run the real
command; the cost itself is measured by ``bench/bench_snakemake.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lineage_ledger import open_ledger
from tests.support.snakemake import clean_env, require_snakemake, run

pytestmark = pytest.mark.slow

SNAKEFILE = """
rule all:
    input: "src.txt"
    output: "out.txt"
    shell: "tr a-z A-Z < {input} > {output}"
"""

# A logger plugin of the user's own: it writes the events it heard to $WITNESS_FILE at close.
WITNESS_PLUGIN = """
import os
from snakemake_interface_logger_plugins.base import LogHandlerBase


class LogHandler(LogHandlerBase):
    writes_to_stream = writes_to_file = has_filter = has_formatter = needs_rulegraph = False

    def __post_init__(self):
        self.events = []

    def emit(self, record):
        self.events.append(str(getattr(record, "event", "")))

    def close(self):
        with open(os.environ["WITNESS_FILE"], "w") as out:
            out.write("\\n".join(self.events))
        super().close()
"""


def _workflow(tmp_path: Path) -> Path:
    workflow = tmp_path / "wf"
    workflow.mkdir()
    (workflow / "Snakefile").write_text(SNAKEFILE)
    (workflow / "src.txt").write_text("some text\n")
    return workflow


def _recorded_tasks(url: str) -> list[str]:
    with open_ledger(url, read_only=True) as ledger:
        return [r.record.task_name for r in ledger.recent(10)]


def test_targets_after_a_double_dash_are_built_and_recorded(tmp_path):
    """``snakemake-ledger --cores 1 -- all``: after ``--`` every word is a target. The wrapper
    appended ``--logger ledger`` after it, so Snakemake looked for a rule making a file named
    "ledger" (MissingRuleException, exit 1, nothing run: failed before this fix)."""
    require_snakemake()
    workflow = _workflow(tmp_path)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    result = run("snakemake-ledger", "--cores", "1", "--ledger", url, "--", "all", cwd=workflow)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (workflow / "out.txt").read_text() == "SOME TEXT\n"
    assert _recorded_tasks(url) == ["all"]


def test_the_users_own_logger_from_a_profile_runs_beside_the_ledger(tmp_path):
    """The ledger is added to the loggers the user's profile names, not put in their place:
    both hear the run (the loggers are known only once Snakemake has read the profile)."""
    require_snakemake()
    workflow = _workflow(tmp_path)
    plugins = tmp_path / "plugins" / "snakemake_logger_plugin_witness"
    plugins.mkdir(parents=True)
    (plugins / "__init__.py").write_text(WITNESS_PLUGIN)
    profile = workflow / "profiles" / "default"
    profile.mkdir(parents=True)
    (profile / "config.yaml").write_text("logger: [witness]\n")
    witness = tmp_path / "witness.txt"
    env = clean_env(PYTHONPATH=str(plugins.parent), WITNESS_FILE=str(witness))
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    result = run("snakemake-ledger", "--cores", "1", "--ledger", url, cwd=workflow, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "job_finished" in witness.read_text().split("\n"), witness.read_text()
    assert _recorded_tasks(url) == ["all"]
    # Snakemake's "Command:" line says what the run amounts to: both loggers.
    assert "--logger witness ledger" in result.stdout + result.stderr


def test_snakemakes_cli_is_imported_once_per_run(tmp_path):
    """One import of Snakemake's CLI (about 1.5 s of CPU) per ``snakemake-ledger`` run: the
    wrapper imported it too, to parse the arguments once more (2 before this change).
    ``-X importtime``'s lines of every Python process of the run (the recording process
    included) are counted."""
    require_snakemake()
    workflow = _workflow(tmp_path)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    env = clean_env(PYTHONPROFILEIMPORTTIME="1")
    result = run("snakemake-ledger", "--cores", "1", "--ledger", url, cwd=workflow, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (workflow / "out.txt").exists() and _recorded_tasks(url) == ["all"]
    imports = [line for line in result.stderr.splitlines()
               if line.startswith("import time:") and line.split("|")[-1].strip() == "snakemake.cli"]
    assert len(imports) == 1, imports


def test_the_recording_process_does_not_import_snakemakes_plugin_interface():
    """The recording process (``_sidecar``, a Python process of its own each run) imported the
    package's handler, and with it Snakemake's logger-plugin interface (about 0.04 s of CPU a
    run, for nothing); the package now reaches its handler only when Snakemake's registry asks."""
    probe = ("import json, sys, snakemake_logger_plugin_ledger._sidecar\n"
             "print(json.dumps(sorted(m for m in sys.modules if m.startswith('snakemake'))))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    loaded = json.loads(result.stdout)
    assert "snakemake_logger_plugin_ledger._sidecar" in loaded
    assert [m for m in loaded if not m.startswith("snakemake_logger_plugin_ledger")] == [], loaded
    # Snakemake's registry still finds the handler and its settings on the package.
    from snakemake_interface_logger_plugins.registry import LoggerPluginRegistry

    plugin = LoggerPluginRegistry().get_plugin("ledger")
    assert plugin.log_handler.__name__ == "LogHandler" and plugin.settings_cls is not None


def test_the_wrapper_imports_only_what_it_needs_before_its_exec():
    """``snakemake-ledger`` parses two flags and execs: it imported the pre-run check's module
    and the recording-process launcher (with subprocess and dataclasses) for a tuple and a
    string, about 0.05 s of CPU a run."""
    probe = ("import json, sys, snakemake_logger_plugin_ledger.cli\n"
             "print(json.dumps(sorted(m for m in sys.modules if m.startswith('snakemake'))))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(result.stdout) == ["snakemake_logger_plugin_ledger", "snakemake_logger_plugin_ledger._boot",
                                         "snakemake_logger_plugin_ledger.cli"]
