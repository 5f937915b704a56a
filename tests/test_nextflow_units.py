"""nextflow-ledger's pieces that need no JVM: the command line, the files Nextflow writes
(a work directory's wrapper, the log, the trace file) and the check before ``-resume``.

The pre-run check is driven through the ``nextflow-ledger`` command with ``LINEAGE_NEXTFLOW``
pointing at a program that must never run: ``strict`` refuses before Nextflow would start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from lineage_ledger_nextflow import _args, _state
from lineage_ledger_nextflow._log import POLL_SECONDS, Handlers, LogFollower, last_session
from lineage_ledger_nextflow._workdir import read_workdir, staged_files

BIN = Path(sys.executable).parent
SESSION = "2f3de1ba-594f-46ec-898c-bbe042398632"


def ledger_cmd(*args: str, cwd: Path, nextflow: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LINEAGE_", "NXF_"))}
    env["LINEAGE_NEXTFLOW"] = nextflow
    return subprocess.run([str(BIN / "nextflow-ledger"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def never(tmp_path):
    """A `nextflow` that leaves a mark if it is ever started."""
    script = tmp_path / "never-nextflow"
    script.write_text(f"#!/bin/sh\ntouch {tmp_path / 'NEXTFLOW_STARTED'}\nexit 0\n")
    script.chmod(0o755)
    return str(script)


@pytest.mark.parametrize("argv, message", [
    ([], "nextflow-ledger [NEXTFLOW OPTIONS] run PIPELINE"),
    (["main.nf"], "no `run PIPELINE`"),
    (["run"], "needs the pipeline"),
    (["run", "main.nf", "--ledger-policy", "maybe"], "--ledger-policy must be one of"),
    (["run", "main.nf", "--ledger"], "--ledger needs a value"),
    (["-bg", "run", "main.nf"], "-bg is not supported"),
])
def test_bad_command_lines_exit_2(tmp_path, never, argv, message):
    result = ledger_cmd(*argv, cwd=tmp_path, nextflow=never)
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "NEXTFLOW_STARTED").exists()


def test_arguments_split_between_the_wrapper_and_nextflow():
    command = _args.parse(["-log", "my.log", "run", "main.nf", "-resume", SESSION, "--ledger", "x.db",
                           "--title", "t", "--flag", "--ledger-policy=rerun"])
    assert (command.ledger, command.policy, command.resume, command.resume_session) == ("x.db", "rerun", True, SESSION)
    assert command.log_file == "my.log" and command.params == {"title": "t", "flag": "true"}
    assert _args.nextflow_args(command, "P") == [
        "-log", "my.log", "-trace", "P", "run", "main.nf", "-resume", SESSION, "--title", "t", "--flag"]
    with_file = _args.parse(["run", "main.nf", "-params-file", "p.yaml"])
    assert with_file.params == {"-params-file": os.path.abspath("p.yaml")}
    user_trace = _args.parse(["-trace", "nextflow.Session", "run", "main.nf"])
    assert _args.nextflow_args(user_trace, "P")[:2] == ["-trace", "nextflow.Session,P"]
    assert _args.absolute_url("sqlite:///rel/l.db", "/launch") == "sqlite:////launch/rel/l.db"
    assert _args.absolute_url("rel/l.db", "/launch") == "/launch/rel/l.db"


def test_work_directory_inputs_are_the_real_files_and_outputs_what_the_task_wrote(tmp_path):
    upstream = tmp_path / "work" / "aa" / "1111"
    upstream.mkdir(parents=True)
    (upstream / "made.txt").write_text("made upstream\n")
    source = tmp_path / "data dir"
    source.mkdir()
    (source / "in put.txt").write_text("a source\n")
    work = tmp_path / "work" / "bb" / "2222"
    work.mkdir(parents=True)
    (work / ".command.sh").write_text("#!/bin/bash -ue\ncat made.txt > out.txt\n")
    (work / ".command.run").write_text(
        "#!/bin/bash\nnxf_stage() {\n    true\n    # stage input files\n    rm -f made.txt\n"
        f"    ln -s {upstream / 'made.txt'} made.txt\n"
        f"    cp -fRL {str(source / 'in put.txt').replace(' ', chr(92) + ' ')} in\\ put.txt\n"
        "}\nnxf_main() {\n  conda activate /envs/tools\n}\n")
    os.symlink(upstream / "made.txt", work / "made.txt")
    (work / "in put.txt").write_text("a source\n")  # the copy stageInMode 'copy' made
    (work / "out.txt").write_text("made upstream\n")
    (work / "sub").mkdir()
    (work / "sub" / "deep.txt").write_text("deep\n")
    (work / ".exitcode").write_text("0")
    found = read_workdir(str(work))
    assert found.inputs == [str(upstream / "made.txt"), str(source / "in put.txt")]
    # A directory the task made is an output whole (first), beside its files.
    assert found.outputs == [str(work / "sub"), str(work / "out.txt"), str(work / "sub" / "deep.txt")]
    assert found.conda == "/envs/tools" and found.exit_code == 0 and found.problems == []
    assert staged_files("no stage function") == {}


def test_a_directory_no_manifest_can_hold_or_one_holding_a_staged_input_is_recorded_file_by_file(tmp_path):
    work = tmp_path / "work" / "cc" / "3333"
    (work / "in").mkdir(parents=True)
    (work / ".command.sh").write_text("true\n")
    (work / ".command.run").write_text(f"nxf_stage() {{\n    ln -s {tmp_path / 'src.txt'} in/src.txt\n}}\n")
    os.symlink(tmp_path / "src.txt", work / "in" / "src.txt")  # the stager made in/ for it
    (work / "in" / "mine.txt").write_text("mine\n")
    (work / "pipes").mkdir()
    (work / "pipes" / "kept.txt").write_text("kept\n")
    os.mkfifo(work / "pipes" / "fifo")
    (work / "links").mkdir()
    os.symlink(tmp_path, work / "links" / "up")  # a link to a directory: in its manifest, not followed
    os.symlink(tmp_path / "nowhere", work / "links" / "dangling")
    found = read_workdir(str(work))
    assert found.outputs == [str(work / "links"), str(work / "in" / "mine.txt"), str(work / "pipes" / "kept.txt")]
    assert found.problems == [f"pipes: recorded file by file only: {os.path.join('pipes', 'fifo')} is not a "
                              "regular file"]


def _stage(work: Path, staged: dict[str, Path]) -> None:
    (work / ".command.sh").write_text("true\n")
    lines = "".join(f"    ln -s {source} {name}\n" for name, source in staged.items())
    (work / ".command.run").write_text(f"nxf_stage() {{\n{lines}}}\n")
    for name, source in staged.items():
        os.symlink(source, work / name)


def test_a_staged_directory_gives_its_own_files_and_names_its_links_out_of_it(tmp_path):
    """Links in a staged directory: to its parent, to ``/``, back into it, to the work
    directory's parent, to ``/usr``, to nothing (in it and out of it), and to a reference tree
    (which links on to another): none is followed, the directory's own files are listed once,
    and each link out of it is named by its target text; a link to a file is followed."""
    made = tmp_path / "up" / "outdir"
    (made / "v1").mkdir(parents=True)
    (made / "v1" / "made.txt").write_text("made\n")
    (tmp_path / "up" / "beside.txt").write_text("not in the directory\n")
    for name, target in (("parent", ".."), ("root", "/"), ("current", "v1"), ("self", "."), ("system", "/usr"),
                         ("later", "not-yet"), ("gone", str(tmp_path / "gone")), ("file", "v1/made.txt")):
        os.symlink(target, made / name)
    refs, more = tmp_path / "refs", tmp_path / "more"
    refs.mkdir()
    more.mkdir()
    (refs / "a.txt").write_text("a\n")
    (more / "b.txt").write_text("b\n")
    os.symlink(more, refs / "more")
    os.symlink(refs, made / "refs")
    os.symlink(tmp_path / "beside.txt", made / "beside.txt")
    (tmp_path / "beside.txt").write_text("a file elsewhere\n")
    work = tmp_path / "work" / "dd" / "4444"
    work.mkdir(parents=True)
    os.symlink(tmp_path / "work", made / "work")  # holds the task's own directory
    _stage(work, {"outdir": made})
    found = read_workdir(str(work))
    assert found.inputs == [str(made / "beside.txt"), str(made / "file"), str(made / "v1" / "made.txt")]
    assert found.not_followed == {str(made / "parent"): "..", str(made / "refs"): str(refs),
                                  str(made / "root"): "/", str(made / "system"): "/usr",
                                  str(made / "work"): str(tmp_path / "work"), str(made / "gone"): str(tmp_path / "gone")}
    assert found.problems == []


def test_a_staged_directory_that_holds_the_work_directory_is_not_listed(tmp_path):
    work = tmp_path / "work" / "ee" / "5555"
    work.mkdir(parents=True)
    (tmp_path / "data.txt").write_text("data\n")
    _stage(work, {"project": tmp_path, "everything": Path("/"), "data.txt": tmp_path / "data.txt"})
    found = read_workdir(str(work))
    assert found.inputs == [str(tmp_path / "data.txt")]
    assert found.problems == [f"project: a staged directory that holds this work directory ({tmp_path}): its files "
                              "are not listed",
                              "everything: a staged directory that holds this work directory (/): its files are "
                              "not listed"]


def test_a_link_at_the_top_that_leads_to_no_file_is_kept_by_its_target(tmp_path):
    """A link to a directory or to nothing at the top is kept by its target text, never
    followed, and the work directory is no output (Nextflow's own files are none); a link to a
    file is an output of its own, as before, and so are ``.command.out`` and ``.command.env``
    (the task's ``stdout`` and ``env`` outputs). A FIFO in a directory makes only that one
    unrecordable whole."""
    work = tmp_path / "work" / "ff" / "6666"
    work.mkdir(parents=True)
    _stage(work, {})
    for name in (".command.log", ".command.err", ".command.begin", ".exitcode", ".command.out", ".command.env"):
        (work / name).write_text("0\n")
    (tmp_path / "ref.txt").write_text("ref\n")
    os.symlink(tmp_path, work / "idx")
    os.symlink("nowhere", work / "later")
    os.symlink(tmp_path / "ref.txt", work / "ref.txt")
    (work / "out.txt").write_text("out\n")
    found = read_workdir(str(work))
    assert found.outputs == [str(work / name) for name in (".command.env", ".command.out", "out.txt", "ref.txt")]
    assert found.links == {"idx": str(tmp_path), "later": "nowhere"}
    assert found.problems == []
    (work / "pipes").mkdir()
    os.mkfifo(work / "pipes" / "fifo")
    found = read_workdir(str(work))
    assert found.links == {"idx": str(tmp_path), "later": "nowhere"}
    assert found.problems == [f"pipes: recorded file by file only: {os.path.join('pipes', 'fifo')} is not a regular file"]


def test_the_links_at_the_top_and_the_value_files_are_compared_with_the_list_that_names_them(tmp_path):
    """A list that names the task's ``.command.out`` (every list since it is recorded) has its
    links compared by target text, and a value file it does not name counts as appeared; an
    older list (the work directory recorded whole: the ledger's check of it covers both) is
    left alone, so an upgrade does not make every cached task look tampered with."""
    from lineage_ledger_nextflow._appeared import appeared

    work = tmp_path / "work" / "aa" / "7777"
    work.mkdir(parents=True)
    _stage(work, {})
    (work / ".command.out").write_text("said\n")
    (work / ".command.log").write_text("appended by the grid executor\n")
    os.symlink(tmp_path, work / "idx")
    current = {"workdir": str(work), "outputs": [str(work / ".command.out")], "links": {"idx": str(tmp_path)}}
    older = {"workdir": str(work), "outputs": [str(work)]}
    assert appeared({"t": current}) == {} and appeared({"t": older}) == {}
    (work / ".command.env").write_text("FOO=planted\n")
    os.symlink("/", work / "slipped")
    links: dict[str, str] = {}
    assert appeared({"t": current}, links) == {str(work / ".command.env"): "t", str(work / "slipped"): "t"}
    assert links == {str(work / "slipped"): "a link the task did not make, leading to '/', appeared in its work "
                                            "directory (changed outside the workflow)"}
    assert appeared({"t": older}) == {}
    os.unlink(work / "idx")
    os.symlink(tmp_path / "copy", work / "idx")
    assert str(work / "idx") in appeared({"t": current}) and appeared({"t": older}) == {}


class Collected(Handlers):
    def __init__(self):
        self.events = []

    def session(self, session):
        self.events.append(("session", session))

    def completed(self, event):
        self.events.append(("completed", event.name, event.exit, event.workdir))

    def note(self, event):
        self.events.append(("note", event.short_hash, event.action, event.retry))

    def cached(self, short_hash, name):
        self.events.append(("cached", short_hash, name))

    def published(self, event):
        self.events.append(("published", event.source, event.mode, event.target))


LOG_LINES = [
    f"Dec-04 09:30:06.380 [main] DEBUG nextflow.Session - Session UUID: {SESSION}",
    "Dec-04 09:48:31.881 [Task submitter] INFO  nextflow.Session - [df/1c15d7] Submitted process > FLAKY",
    "Dec-04 09:48:32.466 [Task monitor] DEBUG n.processor.TaskPollingMonitor - Task completed > TaskHandler[id: 2; "
    "name: FLAKY (a b); status: COMPLETED; exit: 3; error: -; workDir: /w/df/1c15d77a6d396cd6747f7a1ca8c2ae]",
    "Dec-04 09:48:32.507 [TaskFinalizer-1] INFO  nextflow.processor.TaskProcessor - [df/1c15d7] NOTE: Process "
    "`FLAKY (a b)` terminated with an error exit status (3) -- Execution is retried (1)",
    "Dec-04 09:48:32.500 [TaskFinalizer-2] INFO  nextflow.processor.TaskProcessor - [71/17e3c8] NOTE: Process "
    "`BROKEN` terminated with an error exit status (7) -- Error is ignored",
    "Dec-04 09:30:37.263 [Actor Thread 3] INFO  nextflow.Session - [47/40cbef] Cached process > SPLIT (b)",
    "Dec-04 09:30:09.201 [PublishDir-1] TRACE nextflow.processor.PublishDir - publishing file: "
    "/w/31/38/b.count -[COPY]-> /r/counts/b.count",
]


def test_log_follower_reads_only_the_new_log_and_only_whole_lines(tmp_path):
    log = tmp_path / ".nextflow.log"
    log.write_text(LOG_LINES[2] + "\n")  # the previous run's log: never read
    handlers = Collected()
    follower = LogFollower(str(log), handlers)
    follower.start()
    log.rename(tmp_path / ".nextflow.log.1")  # what Nextflow does when it starts
    with open(log, "w") as out:
        out.write("\n".join(LOG_LINES) + "\nDec-04 09:30:09.201 [PublishDir-2] TRACE nextflow.processor.PublishDir"
                  " - publishing file: /w/8f/d2/report.txt -[SYMLINK]-> /r/rep")
        out.flush()
        # The follower's thread reads every POLL_SECONDS, late on a busy machine: wait until it
        # has taken the whole lines, then let it poll a few more times with the unfinished
        # line in place, which must go on waiting for its end.
        deadline = time.monotonic() + 60
        while len(handlers.events) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(3 * POLL_SECONDS)
        assert len(handlers.events) == 6, handlers.events
        assert handlers.events[-1][0] == "published" and handlers.events[-1][1] == "/w/31/38/b.count"
        out.write("ort.txt")  # the last line, without its newline: read once Nextflow has exited
    follower.stop()
    assert handlers.events == [
        ("session", SESSION),
        ("completed", "FLAKY (a b)", 3, "/w/df/1c15d77a6d396cd6747f7a1ca8c2ae"),
        ("note", "df/1c15d7", "RETRY", 1),
        ("note", "71/17e3c8", "IGNORE", None),
        ("cached", "47/40cbef", "SPLIT (b)"),
        ("published", "/w/31/38/b.count", "COPY", "/r/counts/b.count"),
        ("published", "/w/8f/d2/report.txt", "SYMLINK", "/r/report.txt"),
    ]


def test_history_names_the_session_resume_takes(tmp_path):
    (tmp_path / ".nextflow").mkdir()
    (tmp_path / ".nextflow" / "history").write_text(
        f"2026-12-04 09:30:06\t3.8s\tdesperate_elion\tOK\t20b6d35df6\t{SESSION}\tnextflow run main.nf\n")
    assert last_session(str(tmp_path)) == SESSION
    assert last_session(str(tmp_path / "nowhere")) is None


def _recorded_session(tmp_path: Path) -> Path:
    """A launch directory whose session state and ledger say one task wrote out.txt."""
    from lineage_ledger import TaskCapture, TaskRun

    work = tmp_path / "work" / "ab" / "cdef"
    work.mkdir(parents=True)
    (work / ".exitcode").write_text("0")
    out = work / "out.txt"
    out.write_text("recorded\n")
    now = datetime.now(timezone.utc)
    with TaskCapture(str(tmp_path / ".lineage" / "ledger.db"), engine="nextflow", raise_errors=True) as capture:
        capture.submit(TaskRun("abcdef", "P", "succeeded", now, now, outputs=[str(out)])).result()
    _state.save(str(tmp_path), SESSION, {"abcdef": {
        "process": "P", "name": "P", "workdir": str(work), "status": "succeeded", "inputs": [],
        "outputs": [str(out)], "published": []}})  # the wrapper's list, where the wrapper keeps it
    return out


def test_strict_refuses_a_changed_output_before_nextflow_starts(tmp_path, never):
    out = _recorded_session(tmp_path)
    clean = ledger_cmd("run", "main.nf", "-resume", SESSION, "--ledger-policy", "strict", cwd=tmp_path,
                       nextflow=never)
    assert (tmp_path / "NEXTFLOW_STARTED").exists(), clean.stderr  # unchanged: Nextflow runs
    (tmp_path / "NEXTFLOW_STARTED").unlink()
    stat = out.stat()
    out.write_text("tampered\n")
    os.utime(out, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    refused = ledger_cmd("run", "main.nf", "-resume", SESSION, "--ledger-policy", "strict", cwd=tmp_path,
                         nextflow=never)
    assert refused.returncode == 1 and "refusing to run" in refused.stderr and str(out) in refused.stderr
    assert not (tmp_path / "NEXTFLOW_STARTED").exists()
    warned = ledger_cmd("run", "main.nf", "-resume", SESSION, cwd=tmp_path, nextflow=never)
    assert "changed outside the workflow" in warned.stderr and (tmp_path / "NEXTFLOW_STARTED").exists()
    assert out.read_text() == "tampered\n"  # warn leaves it in place


def test_strict_refuses_when_the_ledger_cannot_be_read(tmp_path, never):
    _recorded_session(tmp_path)
    (tmp_path / ".lineage" / "ledger.db").write_bytes(b"not a database at all" * 100)
    refused = ledger_cmd("run", "main.nf", "-resume", SESSION, "--ledger-policy", "strict", cwd=tmp_path,
                         nextflow=never)
    assert refused.returncode == 1 and "could not be checked against the ledger" in refused.stderr
    assert not (tmp_path / "NEXTFLOW_STARTED").exists()


def test_bad_ledger_url_exits_2_before_resume_check_and_before_recording(tmp_path, never):
    _recorded_session(tmp_path)
    resumed = ledger_cmd("run", "main.nf", "-resume", SESSION, "--ledger", "nosuch://x", cwd=tmp_path, nextflow=never)
    assert resumed.returncode == 2 and "nosuch" in resumed.stderr
    assert not (tmp_path / "NEXTFLOW_STARTED").exists()
    fresh = ledger_cmd("run", "main.nf", "--ledger", "nosuch://x", cwd=tmp_path, nextflow=never)
    assert fresh.returncode == 2 and "refusing to run" in fresh.stderr


def test_rerun_moves_the_changed_task_aside_and_keeps_its_files(tmp_path, never):
    out = _recorded_session(tmp_path)
    out.write_text("tampered\n")
    result = ledger_cmd("run", "main.nf", "-resume", SESSION, "--ledger-policy", "rerun", cwd=tmp_path,
                        nextflow=never)
    assert result.returncode == 0, result.stderr
    assert not out.parent.exists()  # Nextflow finds no work directory to reuse: it runs the task again
    [kept] = (tmp_path / ".lineage" / "nextflow" / "quarantine").glob("*/work/ab/cdef/out.txt")
    assert kept.read_text() == "tampered\n" and (tmp_path / "NEXTFLOW_STARTED").exists()


def test_failed_tries_wait_for_nextflows_note_in_either_order(tmp_path):
    from lineage_ledger_nextflow._log import Completed, Note
    from lineage_ledger_nextflow._tasks import TaskRecorder

    from lineage_ledger import TaskCapture

    def workdir(key: str, code: int) -> str:
        path = tmp_path / "work" / key[:2] / key[2:]
        path.mkdir(parents=True)
        (path / ".command.sh").write_text(f"exit {code}\n")
        (path / ".exitcode").write_text(str(code))
        return str(path)

    url = str(tmp_path / "ledger.db")
    with TaskCapture(url, engine="nextflow", raise_errors=True) as capture:
        recorder = TaskRecorder(capture, {})
        first = workdir("aa111111", 3)
        recorder.note(Note("aa/111111", "FLAKY", "RETRY", 1))  # the note first, this time
        recorder.completed(Completed("1", "FLAKY", "COMPLETED", 3, None, first))
        recorder.completed(Completed("2", "FLAKY", "COMPLETED", 0, None, workdir("bb222222", 0)))
        recorder.completed(Completed("3", "STOP", "COMPLETED", 1, None, workdir("cc333333", 1)))  # no note
        assert recorder.recorded == 2
        recorder.finish()
        assert recorder.recorded == 3
    listed = subprocess.run([str(BIN / "lineage-ledger"), "log", "-n", "0", "--json", "--ledger", url],
                            capture_output=True, text=True, timeout=60, check=True).stdout
    found = {(r["task_name"], r["attempt"], r["status"], r["extra"]["error_action"], r["extra"]["exit_status"])
             for r in map(json.loads, listed.splitlines())}
    assert found == {("FLAKY", 1, "failed", "RETRY", 3), ("FLAKY", 2, "succeeded", None, 0),
                     ("STOP", 1, "failed", None, 1)}


@pytest.mark.parametrize("listed", [True, False], ids=["with-its-list", "planned-from-the-work-directory"])
def test_a_changed_source_reruns_the_tasks_that_read_it(tmp_path, never, listed):
    """Without the session's list (lost) the same check is planned from the work directory and
    the ledger's records (``_recovered``): the readers' records name the source."""
    from lineage_ledger import TaskCapture, TaskRun

    source = tmp_path / "data" / "in.txt"
    source.parent.mkdir()
    source.write_text("source v1\n")
    readers = {}
    now = datetime.now(timezone.utc)
    with TaskCapture(str(tmp_path / ".lineage" / "ledger.db"), engine="nextflow", raise_errors=True) as capture:
        for key in ("ab1111", "cd2222"):
            work = tmp_path / "work" / key[:2] / key[2:]
            work.mkdir(parents=True)
            (work / ".exitcode").write_text("0")
            (work / "out.txt").write_text(f"made by {key}\n")
            capture.submit(TaskRun(key, "READ", "succeeded", now, now, inputs=[str(source)],
                                   outputs=[str(work / "out.txt")])).result()
            readers[key] = {"process": "READ", "name": f"READ ({key})", "workdir": str(work),
                            "status": "succeeded", "inputs": [str(source)], "outputs": [str(work / "out.txt")],
                            "published": []}
    if listed:
        _state.save(str(tmp_path), SESSION, readers)
    stat = source.stat()
    source.write_text("source v2\n")  # same size, mtime put back
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    strict = ledger_cmd("run", "main.nf", "-resume", SESSION, "--ledger-policy", "strict", cwd=tmp_path,
                        nextflow=never)
    assert strict.returncode == 1 and f"{source}: changed since the last recorded run" in strict.stderr
    assert ("planned from" in strict.stderr) is not listed
    rerun = ledger_cmd("run", "main.nf", "-resume", SESSION, "--ledger-policy", "rerun", cwd=tmp_path,
                       nextflow=never)
    assert rerun.returncode == 0, rerun.stderr
    assert not (tmp_path / "work" / "ab" / "1111").exists() and not (tmp_path / "work" / "cd" / "2222").exists()
    assert len(list((tmp_path / ".lineage" / "nextflow" / "quarantine").glob("*/work/*/*/out.txt"))) == 2
    assert source.read_text() == "source v2\n"  # a source is the user's: never moved


def test_the_check_names_links_not_followed_of_at_most_twenty_tasks_escaped():
    """The check before ``-resume`` says, one line per task, which links it could not check:
    the first three of each (a target's newline and escape sequence shown escaped, never a
    line of its own), the count with those not kept; past 20 tasks, one line counts the rest.
    A record made before the cap (every link named) is kept to 100 with the rest counted."""
    from lineage_ledger_nextflow import _not_followed

    tasks = {f"k{i:02}": {"name": f"USE ({i})", "workdir": f"/w/{i:02}", "links_not_followed": {
        f"/w/{i:02}/d/l{j}": "/" for j in range(5)}, "links_not_followed_more": 7} for i in range(25)}
    tasks["k00"]["links_not_followed"] = {"/w/00/d/evil": "/x\n\x1b[2Jfake line"}
    tasks["plain"] = {"name": "MAKE", "workdir": "/w/m"}  # no such link: not named
    lines = _not_followed.not_checked_lines(tasks)
    assert len(lines) == 21, lines
    assert lines[0].startswith("lineage-ledger: task USE (0) (/w/00): 8 symbolic link(s)"), lines[0]
    assert "/w/00/d/evil -> /x\\x0a\\x1b[2Jfake line" in lines[0] and "\n" not in "".join(lines), lines[0]
    assert "/w/01/d/l0 -> /, /w/01/d/l1 -> /, /w/01/d/l2 -> /, ... and 9 more;" in lines[1], lines[1]
    assert "12 symbolic link(s)" in lines[1] and "not checked before -resume" in lines[1], lines[1]
    assert lines[-1] == ("lineage-ledger: ... and 5 more task(s) with links not followed "
                         "(extra.links_not_followed in their records)")
    kept, more = _not_followed.capped({f"/d/l{j}": "/" for j in range(250)})
    assert list(kept) == sorted(f"/d/l{j}" for j in range(250))[:100] and more == 150


def test_a_retry_of_one_of_several_tasks_of_one_name_is_matched_by_its_script(tmp_path):
    """Retries of tasks that share a name (a constant tag) wait together: the one whose
    .command.sh matches is the one retried; where nothing tells them apart, the number is
    said to be a guess (``_attempts``; the real run is tests/test_nextflow_deployed_retries.py)."""
    from lineage_ledger_nextflow._attempts import Attempts

    def workdir(name: str, script: str) -> str:
        path = tmp_path / name
        path.mkdir()
        (path / ".command.sh").write_text(script)
        return str(path)

    attempts = Attempts()
    for short, retry in (("aa/000001", False), ("aa/000002", False), ("bb/000003", True), ("cc/000004", True),
                         ("dd/000005", True), ("ee/000006", False)):
        attempts.submitted(short, retry)
    assert attempts.of("aa/000001", "S (t)", workdir("x1", "x")) == (1, False)
    assert attempts.of("aa/000002", "S (t)", workdir("y1", "y")) == (1, False)
    attempts.retried("S (t)", 1, str(tmp_path / "x1"))
    attempts.retried("S (t)", 1, str(tmp_path / "y1"))
    assert attempts.of("bb/000003", "S (t)", workdir("x2", "x")) == (2, False)  # both waited at N = 1
    attempts.retried("S (t)", 2, str(tmp_path / "x2"))  # x failed again: y's retry (N=1) and x's (N=2) wait
    assert attempts.of("cc/000004", "S (t)", workdir("x3", "x")) == (3, False)  # x's script: x's retry
    attempts.retried("S (t)", 3, str(tmp_path / "x3"))
    assert attempts.of("dd/000005", "S (t)", workdir("z", "other")) == (2, True)  # no script matches: a guess
    assert attempts.of("ee/000006", "S (t)", workdir("w", "w")) == (1, False)  # a first try stays 1
    assert attempts.of("ff/000007", "T", workdir("t", "t")) == (1, False)  # no submission line seen: by name
