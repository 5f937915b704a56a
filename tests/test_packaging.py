"""What each distribution ships: the licence, py.typed, metadata that PyPI and the Snakemake
plugin catalog read, and ``twine check``. The core and every plugin (each
``plugins/*/pyproject.toml``) are built, from a copy of the checkout, as a wheel and an sdist."""

from __future__ import annotations

import email
import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LICENSE = (ROOT / "LICENSE").read_bytes()
PLUGINS = sorted(p.parent for p in (ROOT / "plugins").glob("*/pyproject.toml"))
NOT_SOURCES = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".lineage",
                                     ".pytest_cache", ".hypothesis", ".mypy_cache", ".ruff_cache", ".demo", "tour")


def test_the_licence_is_apache_2_in_the_repository_and_beside_every_plugin():
    assert b"Apache License" in LICENSE and b"Version 2.0, January 2004" in LICENSE
    for plugin in PLUGINS:  # license-files cannot reach above a project's own directory
        assert (plugin / "LICENSE").read_bytes() == LICENSE, plugin


def builder(scratch: Path) -> str:
    """An interpreter with setuptools >= 77 and build: this one (the dev extra has both), or
    else a scratch venv that gets them from the package index."""
    probe = "import build, setuptools, sys; sys.exit(int(setuptools.__version__.split('.')[0]) < 77)"
    if subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=60).returncode == 0:
        return sys.executable
    subprocess.run([sys.executable, "-m", "venv", str(scratch)], check=True, timeout=300)
    pip = subprocess.run([scratch / "bin" / "python", "-m", "pip", "install", "--quiet", "setuptools>=77", "build>=1.2"],
                         capture_output=True, text=True, timeout=600)
    if pip.returncode != 0:
        pytest.skip(f"could not install setuptools>=77 and build into a scratch venv (no package index?): {pip.stderr[-500:]}")
    return str(scratch / "bin" / "python")


#: What ``python -m build --no-isolation`` does for one project, with every hook called in this
#: one interpreter: ``build`` runs each hook (the requirements of the sdist, the sdist, the
#: requirements of the wheel, the wheel) in a fresh process of its own, which imports setuptools
#: each time: 3.3 s of CPU a project here against 1.2 s. As ``build`` does, the build system's
#: requirements must be installed, and the wheel is built from the unpacked sdist (a file the
#: sdist leaves out fails the wheel).
BUILD = textwrap.dedent("""
    import importlib, os, sys, tarfile, tempfile
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    from build import check_dependency

    project, outdir = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    with open(os.path.join(project, "pyproject.toml"), "rb") as handle:
        system = tomllib.load(handle)["build-system"]
    module, _, attribute = system["build-backend"].partition(":")
    backend = importlib.import_module(module)
    for name in filter(None, attribute.split(".")):
        backend = getattr(backend, name)

    def require(requirements):
        missing = [chain for requirement in requirements for chain in check_dependency(requirement)]
        if missing:
            sys.exit(f"missing build dependencies: {missing}")

    require(system["requires"])
    os.chdir(project)
    require(backend.get_requires_for_build_sdist({}))
    sdist = backend.build_sdist(outdir, {})
    with tempfile.TemporaryDirectory() as unpacked:
        with tarfile.open(os.path.join(outdir, sdist)) as archive:
            archive.extractall(unpacked, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        os.chdir(os.path.join(unpacked, sdist[: -len(".tar.gz")]))
        require(backend.get_requires_for_build_wheel({}))
        backend.build_wheel(outdir, {})
""")


@pytest.fixture(scope="module")
def distributions(tmp_path_factory):
    """Wheels and sdists of the core and every plugin, built with setuptools >= 77 from a
    copy of the checkout (one build environment for all, so it stays quick)."""
    base = tmp_path_factory.mktemp("packaging")
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCES, symlinks=True)
    python = builder(base / "tools")
    dist = base / "dist"
    dist.mkdir()
    for project in [source, *(source / "plugins" / p.name for p in PLUGINS)]:
        built = subprocess.run([python, "-c", BUILD, str(project), str(dist)], capture_output=True, text=True,
                               timeout=600)
        assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
        warnings = [line for line in (built.stdout + built.stderr).splitlines()
                    if "warning" in line.lower() and "byte-compiling is disabled" not in line]
        assert warnings == [], (project.name, warnings)  # e.g. a deprecated licence form
    return dist


@pytest.mark.slow
def test_every_wheel_and_sdist_carries_the_licence_and_metadata(distributions):
    wheels = sorted(distributions.glob("*.whl"))
    sdists = sorted(distributions.glob("*.tar.gz"))
    assert len(wheels) == len(sdists) == 1 + len(PLUGINS)
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            names = archive.namelist()
            licences = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
            assert licences and archive.read(licences[0]) == LICENSE, wheel.name
            assert any(n.endswith("/py.typed") for n in names), wheel.name
            meta = email.message_from_bytes(archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))))
        assert meta["License-Expression"] == "Apache-2.0", wheel.name
        urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
        assert {"Homepage", "Repository", "Documentation", "Issues"} <= set(urls), wheel.name
        assert meta.get_all("Classifier") and meta["Description-Content-Type"] == "text/markdown", wheel.name
        assert "../" not in meta.get_payload(), f"{wheel.name}: a relative link is dead on PyPI"
    core = next(w for w in wheels if w.name.startswith("lineage_ledger-"))
    assert "lineage_ledger/testing/conformance.py" in zipfile.ZipFile(core).namelist()
    for sdist in sdists:
        with tarfile.open(sdist) as archive:
            top = archive.getnames()[0].split("/")[0]
            member = archive.extractfile(f"{top}/LICENSE")
            assert member is not None and member.read() == LICENSE, sdist.name


@pytest.mark.slow
def test_twine_check_passes_for_every_distribution(distributions):
    pytest.importorskip("twine", reason="twine comes with the dev extra")
    files = sorted(str(p) for p in distributions.iterdir())
    result = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *files],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "NO_COLOR": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASSED") == len(files)


@pytest.mark.slow
def test_fabric_extra_after_airflow_keeps_protobuf_consistent(tmp_path):
    """Issue 18: with Airflow's OpenTelemetry exporter installed, googleapis-common-protos 1.76
    (code generated for protobuf >= 6.33.5) came along; installing the `fabric` extra then put
    protobuf 5 under it, and the exporter's import failed with a protobuf VersionError. pip's
    plan for the extra must now bring googleapis-common-protos down with protobuf."""
    venv = tmp_path / "venv"
    # An environment with no pip of its own, which this environment's pip installs into and plans
    # for (--python): a venv with pip took 9 s of CPU to make (ensurepip), the rest of the test 7.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    before = subprocess.run([*pip, "install", "--quiet", "googleapis-common-protos==1.76.0"],
                            capture_output=True, text=True, timeout=600)
    if before.returncode != 0:
        pytest.skip(f"no package index reachable: {before.stderr[-300:]}")
    with open(ROOT / "pyproject.toml", "rb") as handle:
        extra = tomllib.load(handle)["project"]["optional-dependencies"]["fabric"]
    report = tmp_path / "plan.json"
    plan = subprocess.run([*pip, "install", "--quiet", "--dry-run", "--report", str(report), *extra],
                          capture_output=True, text=True, timeout=600)
    assert plan.returncode == 0, plan.stderr[-3000:]
    versions = {item["metadata"]["name"].lower(): item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]}
    assert versions["protobuf"].split(".")[0] == "5"
    assert "googleapis-common-protos" in versions, "the plan leaves googleapis-common-protos 1.76 on protobuf 5"
    assert tuple(int(x) for x in versions["googleapis-common-protos"].split(".")[:2]) < (1, 76)


def test_the_snakemake_catalog_finds_the_plugins_docs_where_it_looks():
    # The catalog (snakemake-plugin-catalog, collect_plugins.py) fetches
    # {Repository}/blob/{main|master}/docs/intro.md: the root of the repository that the
    # plugin's metadata names, not the plugin's own folder in it.
    meta = tomllib.loads((ROOT / "plugins" / "snakemake" / "pyproject.toml").read_text())
    repository = meta["project"]["urls"]["Repository"]
    assert repository.startswith("https://github.com/") and repository.rstrip("/").count("/") == 4, repository
    intro = (ROOT / "docs" / "intro.md").read_text()
    assert "--logger ledger" in intro and "--logger-ledger-policy" in intro
