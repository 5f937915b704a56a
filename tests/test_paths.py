"""Paths as users have them (issue #17): relative paths in the Python API, symbolic links.

Records key a file by its real path and keep the path as given as an alias where it
differs; the API normalises paths as the CLI does.
"""

from __future__ import annotations

import contextlib
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lineage_ledger import open_ledger


def verify(cli, *args, **kw):
    return cli(*args, program="verify-lineage", **kw)


def test_the_python_api_takes_relative_paths_as_the_cli_does(cli, workdir):
    (workdir / "data").mkdir()
    (workdir / "data" / "raw.csv").write_text("a,b\n1,2\n")
    cli("run", "-i", "data/raw.csv", "-o", "data/clean.csv", "--", "sh", "-c",
        "cp data/raw.csv data/clean.csv", check_rc=0)
    with open_ledger() as ledger:
        producer = ledger.producer("data/clean.csv")
        assert producer is not None and producer.record.task_name == "sh"
        assert len(ledger.consumers("data/raw.csv")) == 1
        assert len(ledger.consumers("./data/../data/raw.csv")) == 1
        tree = ledger.lineage("data/clean.csv")
        assert tree.kind == "produced" and [p.path for p in tree.parents] == [str(workdir / "data" / "raw.csv")]
        assert ledger.last_seen("data/raw.csv") is not None
        assert ledger.derived("data/raw.csv")


def _linked_project(cli, workdir):
    """project/data -> store/v1 (an absolute link, as to a shared store); one task run through it."""
    store = workdir / "store"
    (store / "v1").mkdir(parents=True)
    (store / "v1" / "raw.csv").write_text("raw\n")
    project = workdir / "project"
    project.mkdir()
    os.symlink(store / "v1", project / "data")
    cli("run", "-i", "data/raw.csv", "-o", "data/clean.csv", "--", "sh", "-c",
        "cp data/raw.csv data/clean.csv", cwd=project, check_rc=0)
    return store, project


def _verifies(cli, project, *targets):
    for target in targets:
        result = verify(cli, "--ledger", project / ".lineage" / "ledger.db", target, cwd=project, check_rc=0)
        assert "UNRECORDED" not in result.stdout and "MISSING" not in result.stdout, result.stdout


def test_a_symlinked_path_is_recorded_by_its_real_path_and_as_given(cli, workdir):
    store, project = _linked_project(cli, workdir)
    with open_ledger(str(project / ".lineage" / "ledger.db")) as ledger:
        entry = ledger.producer(str(store / "v1" / "clean.csv"))
        assert entry is not None
        outputs = entry.record.outputs
        assert outputs[str(store / "v1" / "clean.csv")].keys() == {"blake3", "size"}
        assert outputs[str(project / "data" / "clean.csv")]["alias_of"] == str(store / "v1" / "clean.csv")
        assert ledger.producer(str(project / "data" / "clean.csv")).id == entry.id


def test_files_verify_after_the_project_and_its_link_move(cli, workdir):
    store, project = _linked_project(cli, workdir)
    os.rename(project, workdir / "moved")  # the link moves with it; the paths as given are gone
    _verifies(cli, workdir / "moved", "data/clean.csv", "data/raw.csv", str(store / "v1" / "clean.csv"))


def test_files_verify_after_the_data_moves_and_the_link_follows(cli, workdir):
    store, project = _linked_project(cli, workdir)
    os.rename(store / "v1", store / "v2")  # the real paths are gone
    os.unlink(project / "data")
    os.symlink(store / "v2", project / "data")
    _verifies(cli, project, "data/clean.csv", "data/raw.csv")
    (store / "v2" / "clean.csv").write_text("tampered\n")
    verify(cli, "--ledger", project / ".lineage" / "ledger.db", "data/clean.csv", cwd=project, check_rc=1)


def test_lineage_through_a_moved_link_finds_the_producer(cli, workdir):
    store = workdir / "store"
    (store / "v1").mkdir(parents=True)
    (workdir / "seed.txt").write_text("seed\n")
    os.symlink(store / "v1", workdir / "data")
    cli("run", "-i", "seed.txt", "-o", "data/mid.txt", "--", "sh", "-c", "cp seed.txt data/mid.txt", check_rc=0)
    os.rename(store / "v1", store / "v2")
    os.unlink(workdir / "data")
    os.symlink(store / "v2", workdir / "data")
    cli("run", "-i", "data/mid.txt", "-o", "final.txt", "--", "sh", "-c", "cp data/mid.txt final.txt", check_rc=0)
    with open_ledger() as ledger:
        tree = ledger.lineage("final.txt")
        [mid] = tree.parents
        assert mid.kind == "produced", mid
        assert [p.path for p in mid.parents] == [str(workdir / "seed.txt")]
    result = verify(cli, "final.txt", check_rc=0)
    assert "BROKEN" not in result.stdout and "MISSING" not in result.stdout


# -- the kernel's resolution of a path against os.path.realpath's ---------------------------
_NAMES = ["a", "b", "c"]
# "/ABSENT" is an absolute target that leads nowhere, made inside the test's own directory: a
# file written through a link to a real "/nonexistent" was created there (as root, the suite
# left /nonexistent on the machine, and later tests that take it for missing saw a file).
_LINK_TARGETS = st.sampled_from(["a", "b", "../a", "../../c", "/ABSENT", "a/b", ".", "..", "loop", "c/../a"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=st.lists(st.tuples(st.lists(st.sampled_from(_NAMES), min_size=1, max_size=3),
                                 st.sampled_from(["dir", "file", "link"]), _LINK_TARGETS), max_size=8),
       query=st.lists(st.sampled_from(_NAMES + ["loop", "missing"]), min_size=1, max_size=4))
def test_resolved_paths_are_realpaths(tmp_path_factory, layout, query):
    """Directories, files and symbolic links (relative, absolute, chained, dangling, loops):
    the fast resolution gives what ``os.path.realpath`` gives, for paths that exist or not."""
    from lineage_ledger._files.hashing import _resolved, lookup_paths

    root = tmp_path_factory.mktemp("resolve")
    for parts, kind, target in layout:
        path = root.joinpath(*parts)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if kind == "dir":
                path.mkdir(exist_ok=True)
            elif kind == "file":
                path.write_text("x")
            else:
                os.symlink(str(root / "absent" / "nowhere") if target == "/ABSENT" else target, path)
        except OSError:
            continue  # a name taken by something else, or under a file: skip it
    with contextlib.suppress(OSError):
        os.symlink("loop", root / "loop")
    path = os.path.join(str(root), *query)
    assert _resolved(path) == os.path.realpath(path)
    assert lookup_paths(path)[-1] == os.path.realpath(path)
