"""Running the real ``nextflow-ledger`` (and ``nextflow``) in tests.

Nextflow comes from ``plugins/nextflow/tools/install-nextflow.sh`` (``make install-nextflow``),
cached outside the checkout; without it :func:`require_nextflow` skips the test with the
reason. Each run gets its own ``NXF_HOME`` under the test's directory, never the real home.

Each ``nextflow`` run starts a JVM that loads some 5,000 classes from Nextflow's jars. The
runs share a class-data archive (:func:`class_data_archive`), made once in the Nextflow
cache, which the JVM maps instead of loading and verifying those classes again: about 0.7 s
of CPU less a run, of about 3.5 s.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLE = ROOT / "examples" / "nextflow"
BIN = Path(sys.executable).parent
NXF_RELEASE = "25.04.4"

#: A pipeline with a task that fails for good (errorStrategy 'ignore', so the run goes on)
#: and one that fails on its first attempt and succeeds on its retry, whose output is published
#: in publishDir's default mode (a symbolic link into the work directory).
FAILING_PIPELINE = """
process BROKEN {
  errorStrategy 'ignore'
  output: path 'never.txt'
  script: "echo 'broken on purpose' >&2; exit 7"
}
process FLAKY {
  errorStrategy 'retry'
  maxRetries 1
  publishDir 'results'
  output: path 'flaky.txt'
  script:
  \"\"\"
  if [ ${task.attempt} -eq 1 ]; then echo 'first try fails' >&2; exit 3; fi
  echo 'second try works' > flaky.txt
  \"\"\"
}
workflow {
  BROKEN()
  FLAKY()
}
"""


def launcher() -> Path | None:
    """The launcher install-nextflow.sh builds, or ``None``."""
    explicit = os.environ.get("LINEAGE_LEDGER_NEXTFLOW_CACHE")
    cache = Path(explicit) if explicit else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lineage-ledger"
    path = cache / f"nextflow-{NXF_RELEASE}" / "bin" / "nextflow"
    return path if os.access(path, os.X_OK) else None


def require_nextflow() -> Path:
    path = launcher()
    if path is None:
        pytest.skip(f"Nextflow {NXF_RELEASE} is not built; `make install-nextflow` assembles it from Maven Central "
                    "(needs mvn and Java 17..24)")
    if not (BIN / "nextflow-ledger").exists():
        pytest.skip("nextflow-ledger is not installed; `make install` installs plugins/nextflow")
    return path


def env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a run: no LINEAGE_ settings of the caller, a private NXF_HOME, and
    the JVM option that maps the shared class-data archive where there is one."""
    launcher_path = require_nextflow()
    result = {k: v for k, v in os.environ.items() if not k.startswith(("LINEAGE_", "NXF_"))}
    result.update(NXF_HOME=str(home / ".nxf-home"), NXF_ANSI_LOG="false", NXF_OFFLINE="true",
                  LINEAGE_NEXTFLOW=str(launcher_path), PATH=f"{BIN}{os.pathsep}{result.get('PATH', '')}")
    archive = class_data_archive(launcher_path)
    if archive is not None:
        result["NXF_OPTS"] = " ".join(_using(archive))
    result.update(extra)
    return result


def _using(archive: Path) -> list[str]:
    # An archive the JVM cannot use (another Java build, say) is skipped with a warning on
    # stdout, where Nextflow's own output goes: the tests read that, so the warning is off.
    return [f"-XX:SharedArchiveFile={archive}", "-Xlog:cds=off", "-Xlog:cds+dynamic=off"]


#: The archive of this test session, once looked for: ``[path or None]``.
_archive: list[Path | None] = []


def class_data_archive(launcher_path: Path) -> Path | None:
    """A JVM class-data-sharing archive of the classes one Nextflow run loads, or ``None``.

    It lives beside the Nextflow build (``cds/``, which a rebuild removes), named by a digest
    of the Java build and the jars, so another Java or other jars get an archive of their
    own: an archive is bound to the JVM and class path that made it. The first session
    without one makes it (about 6 s, a run of the example pipeline with
    ``-XX:ArchiveClassesAtExit``), checks that a JVM starts with it, and renames it into
    place, so a session beside it never maps a half-written file (that crashes the JVM).
    Without an archive, or if making one fails, the runs load their classes as before."""
    if _archive:
        return _archive[0]
    _archive.append(None)
    home = launcher_path.parent.parent
    java = Path((home / "java").read_text().strip()) if (home / "java").is_file() else None
    if java is None or not os.access(java, os.X_OK):
        return None
    try:
        version = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=60).stderr
        jars = sorted((entry.name, entry.stat().st_size) for entry in os.scandir(home / "lib"))
    except (OSError, subprocess.SubprocessError):
        return None
    key = hashlib.sha256(json.dumps([os.path.realpath(java), version, jars]).encode()).hexdigest()[:16]
    archive = home / "cds" / f"{key}.jsa"
    if not archive.is_file():
        _make_archive(launcher_path, archive)
    _archive[0] = archive if archive.is_file() else None
    return _archive[0]


def _make_archive(launcher_path: Path, archive: Path) -> None:
    try:
        archive.parent.mkdir(exist_ok=True)
    except OSError:
        return  # a cache this user cannot write: no archive
    with tempfile.TemporaryDirectory(prefix="ll-nextflow-cds-") as scratch:
        work = copy_example(Path(scratch) / "example")
        partial = archive.parent / f".{archive.name}.{os.getpid()}.partial"
        base = {k: v for k, v in os.environ.items() if not k.startswith("NXF_")}
        base.update(NXF_HOME=str(work / ".nxf-home"), NXF_ANSI_LOG="false", NXF_OFFLINE="true")
        try:
            # The options nextflow-ledger adds (``-trace``), so that the classes it makes
            # Nextflow load are in the archive too.
            made = subprocess.run(
                [str(launcher_path), "-trace", "nextflow.processor.PublishDir", "run", "main.nf"], cwd=work,
                env={**base, "NXF_OPTS": f"-XX:ArchiveClassesAtExit={partial}"},
                capture_output=True, text=True, timeout=300)
            if made.returncode != 0 or not partial.is_file():
                return
            # The archive must map without a word: the version alone on stdout, nothing on stderr.
            check = subprocess.run([str(launcher_path), "-version"], cwd=work, capture_output=True, text=True,
                                   env={**base, "NXF_OPTS": " ".join(_using(partial)) + " -Xshare:on"}, timeout=120)
            if check.returncode == 0 and f"version {NXF_RELEASE}" in check.stdout and not check.stderr.strip():
                os.replace(partial, archive)
        except (OSError, subprocess.SubprocessError):
            pass
        finally:
            partial.unlink(missing_ok=True)


def run(program: str, *args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``nextflow-ledger``, ``verify-lineage`` or ``lineage-ledger``; ``nextflow`` is the launcher."""
    command = str(require_nextflow()) if program == "nextflow" else str(BIN / program)
    return subprocess.run([command, *args], cwd=cwd, env=env(cwd), capture_output=True, text=True,
                          timeout=timeout)


def first_run(tmp_path: Path, pipeline: str) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """``pipeline`` (a main.nf's text) in ``tmp_path/pipeline``, run once through
    ``nextflow-ledger``, which must exit 0: (its directory, the run)."""
    require_nextflow()
    here = tmp_path / "pipeline"
    here.mkdir()
    (here / "main.nf").write_text(pipeline)
    first = run("nextflow-ledger", "run", "main.nf", cwd=here)
    assert first.returncode == 0, first.stdout + first.stderr
    return here, first


def copy_example(dest: Path) -> Path:
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns(".nextflow*", ".lineage", "results", "work"))
    return dest


def records(cwd: Path) -> list[dict[str, Any]]:
    """Every record of the ledger in ``cwd/.lineage``, through ``lineage-ledger log --json``."""
    result = run("lineage-ledger", "log", "-n", "0", "--json", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def pipeline_staging_a_directory(make: str, use: str, *, params: str = "") -> str:
    """A pipeline whose MAKE makes ``outdir`` (``outdir/made.txt`` in it, then the shell lines
    ``make``) and whose USE stages it as ``d`` and writes ``used.txt`` from what the shell
    command ``use`` prints (``${d}`` names the staged directory). ``params``: lines before."""
    return f"""{params}
process MAKE {{
  output: path 'outdir'
  script:
  \"\"\"
  mkdir -p outdir
  echo made > outdir/made.txt
  {make}
  \"\"\"
}}
process USE {{
  input: path d
  output: path 'used.txt'
  script: "{use} > used.txt"
}}
workflow {{ USE(MAKE()) }}
"""


def keep_mtime(path: Path, change: Callable[[], object]) -> None:
    """``change()``, then ``path``'s times put back (Nextflow's cache looks at the mtime)."""
    before = os.lstat(path)
    change()
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns), follow_symlinks=False)


def relink(link: Path, target: str | Path) -> None:
    """Point ``link`` at ``target``, its directory's mtime put back (Nextflow reuses the task)."""
    def swap() -> None:
        link.unlink()
        link.symlink_to(target)

    keep_mtime(link.parent, swap)


def refused(cwd: Path, command: tuple[str, ...], *named: str, timeout: float = 180) -> None:
    """``command`` (a strict ``-resume``) refuses, naming each of ``named``, Nextflow not started."""
    strict = run(*command, cwd=cwd, timeout=timeout)
    assert strict.returncode == 1, strict.stdout + strict.stderr  # 0: the change went unseen
    assert "Launching" not in strict.stdout
    for text in named:
        assert text in strict.stderr, strict.stderr


def manifest_entries(cwd: Path, digest: str) -> list[list[Any]]:
    """The entries of the manifest of directory digest ``digest``, from its manifest record."""
    listed = run("lineage-ledger", "log", "-n", "0", "--all", "--json", cwd=cwd)
    assert listed.returncode == 0, listed.stderr
    (found,) = [r for r in map(json.loads, listed.stdout.splitlines()) if r.get("run_id") == f"manifest:{digest}"]
    return list(found["extra"]["manifest"]["entries"])


#: Nextflow's files that hold a task's ``stdout`` and ``env`` outputs: every task's record
#: lists its ``.command.out`` (and its ``.command.env`` where it has one).
VALUE_FILES = (".command.out", ".command.env")


def files_written(record: dict[str, Any]) -> dict[str, Any]:
    """The outputs of a task's record other than its ``stdout`` and ``env`` values."""
    return {path: entry for path, entry in record["outputs"].items() if os.path.basename(path) not in VALUE_FILES}


def first_run_with_refs(tmp_path: Path, pipeline: str, *, config: str | None = None,
                        timeout: float = 180) -> tuple[Path, Path, tuple[str, ...]]:
    """``pipeline`` (and ``config``, as ``nextflow.config``) in ``tmp_path/pipeline``, run once
    through ``nextflow-ledger`` with ``--refs`` a directory holding ``a.txt``; (the launch
    directory, the references, the strict ``-resume`` command with the same ``--refs``)."""
    here = tmp_path / "pipeline"
    here.mkdir()
    (here / "main.nf").write_text(pipeline)
    if config is not None:
        (here / "nextflow.config").write_text(config)
    refs = tmp_path / "refs"
    refs.mkdir()
    (refs / "a.txt").write_text("reference one\n")
    first = run("nextflow-ledger", "run", "main.nf", "--refs", str(refs), cwd=here, timeout=timeout)
    assert first.returncode == 0, first.stdout + first.stderr
    return here, refs, ("nextflow-ledger", "run", "main.nf", "--refs", str(refs), "-resume", "--ledger-policy", "strict")
