"""An outside review (session 38) of the exports, the BAASH service and the Fabric back-end, as
an attacker and as a new user would meet them: the real CLI, real ``mpiexec`` ranks.

Each test names one bug found; a bug not fixed yet is a strict xfail whose reason says where
the fix lies. The whole file takes about 27 s on this 2-core machine: the BAASH tests (marked
``mpi``) start a real service each (2-5 s), the Fabric one uses the session's shared two-org
network (``fabric``), the tests that act as another user (``nobody``) need root and skip
otherwise.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.support.recorded import one_task_recorded

SINGLE_FILE_EXPORTS = [
    ("export", "prov-json"), ("export", "prov-n"), ("export", "openlineage"),
    ("graph", "html"), ("graph", "svg"), ("graph", "dot"),
]


@pytest.mark.parametrize(("command", "fmt"), SINGLE_FILE_EXPORTS)
def test_an_export_never_writes_through_a_planted_link(tmp_path, command, fmt):
    """Bug: every single-file export (``export -f prov-json|prov-n|openlineage``, ``graph -f
    html|svg|dot``) opened ``-o PATH`` with a plain ``open(path, "w")``, which follows a
    symbolic link. Setup: another user of a shared (group-writable) project directory plants
    ``lineage.html -> ~/.bashrc`` (here: a link to a 'victim' file); the owner runs
    ``lineage-ledger graph out.txt -o lineage.html``. Impact: the victim file was truncated
    and overwritten with the export (exit 0, nothing said). Now the export is written to a new
    private file beside PATH and renamed onto it: the link is replaced, its target untouched."""
    env = one_task_recorded(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "planted").symlink_to(victim)
    result = run_cli(command, "out.txt", "-f", fmt, "-o", "planted", cwd=tmp_path, env=env)
    assert victim.read_text() == "precious\n", "the export wrote through the planted link"
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "planted").is_symlink() and (tmp_path / "planted").stat().st_size > 0


@pytest.mark.parametrize(("command", "fmt"), SINGLE_FILE_EXPORTS)
def test_an_export_is_as_private_as_the_ledger(tmp_path, command, fmt):
    """Bug: the ledger is created 0600 whatever the umask (it holds every task's command
    line, parameters, user and host), but an export of it, which carries the same, was created
    under the umask: 0644 with the usual 022, readable by every local user. Setup: a task
    recorded, exported with umask 022. Impact: another user of the machine reads the records
    (argv, parameters, paths) that the ledger's mode kept from them. Now every export file is
    created 0600 (the owner widens it to share it)."""
    env = one_task_recorded(tmp_path)
    out = tmp_path / f"export.{fmt}"
    result = run_cli(command, "out.txt", "-f", fmt, "-o", out, cwd=tmp_path, env=env,
                     preexec_fn=lambda: os.umask(0o022))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(os.stat(tmp_path / "ledger.db").st_mode) == 0o600
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_a_crate_is_private_and_never_written_through_a_planted_link(tmp_path):
    """Bug: ``export -f ro-crate -o DIR`` accepted a symbolic link to an empty directory as
    DIR and wrote the crate into the link's target, and made a new crate directory (and a
    ``.zip`` crate) under the umask (0755/0644) though it holds every record's body. Setup:
    ``crate -> /elsewhere/empty`` planted; a second export to a new ``crate2/`` and
    ``crate.zip`` with umask 022. Impact: files appear in a directory the owner never named;
    the records are readable by every local user. Now a link is refused (exit 2, nothing
    written), a new crate directory is 0700 and a zip 0600."""
    env = one_task_recorded(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "crate").symlink_to(elsewhere)
    linked = run_cli("export", "out.txt", "-f", "ro-crate", "-o", "crate", cwd=tmp_path, env=env)
    assert list(elsewhere.iterdir()) == [], "the crate was written through the planted link"
    assert linked.returncode == 2, linked.stderr
    for name in ("crate2", "crate.zip"):
        run_cli("export", "out.txt", "-f", "ro-crate", "-o", name, cwd=tmp_path, env=env, check_rc=0,
                preexec_fn=lambda: os.umask(0o022))
    assert stat.S_IMODE((tmp_path / "crate2").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "crate.zip").stat().st_mode) == 0o600



def test_a_crate_never_copies_a_file_outside_itself(tmp_path):
    """Bug: the RO-Crate export copies each recorded file into ``data/`` under its recorded
    path, each part slugged, but a part ``..`` survived the slug: a record whose output path
    climbs (``/BASE/lnk/../../..(n)/victim.txt``, ``lnk`` a link to a directory n levels
    deep, so the path names a file of the writer's) was copied to ``crate/data/BASE/lnk/..
    (n)/victim.txt``, which ``makedirs`` and the kernel resolve to a place outside the crate.
    Setup: another writer of a shared ledger (BAASH, Fabric, PostgreSQL) appends such a
    record (the ledger takes any path text) with its file's digest; the owner runs ``export
    --run RUN -f ro-crate -o crate`` (data is copied by default) beside their own
    ``victim.txt``. Impact: the owner's file was overwritten with the writer's bytes, exit 0
    ('1 file(s) copied'); with more ``..`` any file the owner may write (``~/.bashrc``).
    Now no part of a copy's place in the crate is ``.`` or ``..``, and a copy that would
    land outside the crate is not made."""
    from lineage_ledger import open_ledger
    from tests.support.factories import artifact, make_record

    home = tmp_path / "home"
    home.mkdir()
    victim = home / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "victim.txt").write_text("pwned\n")  # the writer's file, with the recorded digest
    depth = len(Path(tmp_path).parts) - 1 + 3  # up from crate/data/<tmp_path>/lnk to home
    deep = tmp_path.joinpath(*[f"d{i}" for i in range(depth)])
    deep.mkdir(parents=True)
    (tmp_path / "lnk").symlink_to(deep)
    climbing = f"{tmp_path}/lnk" + "/.." * depth + "/victim.txt"
    assert Path(climbing).read_text() == "pwned\n"
    url = f"sqlite:///{home}/ledger.db"
    with open_ledger(url, spool=str(tmp_path / "spool")) as ledger:
        ledger.append_records([make_record(0, run_id="shared", outputs=[artifact(climbing, "pwned\n")]).stored()])
    result = run_cli("export", "--run", "shared", "-f", "ro-crate", "-o", "crate", cwd=home,
                     env={"LINEAGE_LEDGER_URL": url})
    assert victim.read_text() == "precious\n", "the crate export overwrote a file outside the crate"
    assert result.returncode == 0, result.stderr
    copied = [p for p in (home / "crate" / "data").rglob("*") if p.is_file()]
    assert all(".." not in p.relative_to(home / "crate").parts for p in copied)



def test_an_svg_graph_of_a_file_named_with_a_control_character_is_well_formed(tmp_path):
    """Bug: ``graph -f svg`` put file names into the SVG with ``html.escape`` only; a name
    holding a control character (``a\\x01b.txt``, which the ledger records) is not allowed in
    XML 1.0, so the whole picture was not well-formed: a browser showed an XML error instead
    of the graph, exit 0. Setup: a task reads ``a\\x01b.txt``; ``graph out.txt -f svg``.
    Impact: cosmetic (no picture), but for every run touching such a file. Now such
    characters are shown as ``\\x01``."""
    import xml.dom.minidom

    env = {"LINEAGE_LEDGER_URL": f"sqlite:///{tmp_path}/ledger.db"}
    (tmp_path / "a\x01b.txt").write_text("x")
    run_cli("run", "-i", "a\x01b.txt", "-o", "out.txt", "--", "sh", "-c", "cat a* > out.txt",
            cwd=tmp_path, env=env, check_rc=0)
    run_cli("graph", "out.txt", "-f", "svg", "-o", "g.svg", cwd=tmp_path, env=env, check_rc=0)
    document = xml.dom.minidom.parse(str(tmp_path / "g.svg"))
    assert any("a\\x01b.txt" in node.firstChild.data for node in document.getElementsByTagName("text"))



def test_the_cores_checkpoint_never_writes_through_a_planted_link(tmp_path):
    """Bug: ``lineage-ledger checkpoint -o FILE`` opened FILE with ``open(path, "w")``,
    following a symbolic link, as the exports and the BAASH/Fabric commands did. Setup:
    ``head.checkpoint -> victim`` planted; the owner saves a checkpoint there. Impact: the
    victim file is overwritten with the note (exit 0). Fix: in ``core/_cli/trust.py``'s
    ``checkpoint``, write with ``lineage_ledger.exports._output.open_output(output)``."""
    env = one_task_recorded(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "head.checkpoint").symlink_to(victim)
    result = run_cli("checkpoint", "-o", "head.checkpoint", cwd=tmp_path, env=env)
    assert victim.read_text() == "precious\n", "the checkpoint was written through the planted link"
    assert result.returncode == 0, result.stderr



def test_a_crate_describes_a_directory_it_cannot_copy_instead_of_failing(tmp_path):
    """Bug: a recorded directory still on disk was copied into the crate whole (``copytree``)
    and only then hashed; a named pipe in it made ``copyfile`` raise, and the whole export
    stopped: ``error: crate: None``, exit 2, no crate. Setup: a record names a directory
    output ``d/`` (any writer of a shared ledger may name any directory) that now holds a FIFO.
    Impact: no crate at all for the run, with a message that says nothing; and a record naming
    a large directory (``/home``) had it copied before the digest check, filling the disk.
    Now a directory is copied only if it holds real files and directories only, no more
    bytes than recorded; else it is described by its digest, as one no longer on disk."""
    from lineage_ledger import open_ledger
    from lineage_ledger._model import Record
    from tests.support.factories import make_record

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("hi\n")
    os.mkfifo(tmp_path / "d" / "pipe")
    fields = make_record(0, run_id="r").to_dict()
    fields["outputs"] = {str(tmp_path / "d"): {"blake3": "ab" * 32, "size": 3, "type": "dir"}}
    url = f"sqlite:///{tmp_path}/ledger.db"
    with open_ledger(url, spool=str(tmp_path / "spool")) as ledger:
        ledger.append_records([Record.from_dict(fields).stored()])
    result = run_cli("export", "--run", "r", "-f", "ro-crate", "-o", "crate", cwd=tmp_path,
                     env={"LINEAGE_LEDGER_URL": url})
    assert result.returncode == 0, result.stderr
    assert "0 file(s) copied" in result.stderr and not (tmp_path / "crate" / "data").exists()



def test_an_export_to_a_pipe_or_device_writes_into_it(tmp_path):
    """Bug (in this review's own fix, open_output): ``-o`` is written to a new file beside it
    and renamed on, which for a named pipe or a device (``-o /dev/stdout``, a common idiom)
    replaced the pipe or device's name by a regular file instead of writing into it; as
    root, ``-o /dev/stdout`` would have put a file in place of ``/dev/stdout`` for the whole
    machine. Setup: ``graph out.txt -f dot -o pipe`` with a reader on the FIFO ``pipe``.
    Impact: the reader got nothing and the FIFO was gone. Now a FIFO (links followed:
    writing into one overwrites no file) and any path under /dev or /proc are written into."""
    import threading

    env = one_task_recorded(tmp_path)
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    received: list[bytes] = []

    def read() -> None:
        fd = os.open(pipe, os.O_RDONLY)  # blocks until the export opens it
        with os.fdopen(fd, "rb") as handle:
            received.append(handle.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    result = run_cli("graph", "out.txt", "-f", "dot", "-o", "pipe", cwd=tmp_path, env=env)
    if reader.is_alive() and stat.S_ISFIFO(os.lstat(pipe).st_mode):  # nothing opened it: unblock the reader
        os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
    reader.join(timeout=5)
    assert result.returncode == 0, result.stderr
    assert stat.S_ISFIFO(os.lstat(pipe).st_mode), "the FIFO was replaced by a file"
    assert received and b"digraph" in received[0]


# -- BAASH: the service a client reaches ---------------------------------------------------

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="another local user (nobody) needs root to fork as")


def _impostor(socket_dir: Path, ready: int, report: int) -> None:  # pragma: no cover - the child
    """As ``nobody``: make ``socket_dir`` (in world-writable /tmp, as anyone can; unless it is
    there) with a socket where a BAASH service would be, take one connection and report what
    it was sent."""
    import socket as socket_module

    try:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        socket_dir.mkdir(mode=0o711, exist_ok=True)
        listener = socket_module.socket(socket_module.AF_UNIX, socket_module.SOCK_STREAM)
        listener.bind(str(socket_dir / "baash.sock"))
        os.chmod(socket_dir / "baash.sock", 0o666)
        listener.listen(1)
        listener.settimeout(20)
        os.write(ready, b"1")
        conn, _ = listener.accept()
        conn.settimeout(5)
        received = b""
        try:
            while chunk := conn.recv(1 << 16):
                received += chunk
                if len(received) > 4 and len(received) >= 4 + int.from_bytes(received[:4], "big"):
                    break
        except OSError:
            pass
        os.write(report, received[:1 << 20])
    finally:
        os._exit(0)


@needs_root
def test_a_baash_client_sends_nothing_to_a_service_another_user_planted(tmp_path):
    """Bug: the client of ``baash:///PATH`` connected to whatever listened at PATH and sent its
    request: it never asked the kernel who the service is (SO_PEERCRED), though the service
    checks every client that way. Setup: a user's URL names the default socket
    ``/tmp/lineage-ledger-baash-<uid>/baash.sock`` (no XDG_RUNTIME_DIR on an HPC node);
    before their service starts (after a reboot cleaned /tmp), another user (``nobody``)
    makes that directory in world-writable /tmp and listens there. Impact: every append sent
    that user the whole block (each record's command line, parameters, paths, user and host),
    and reads could be answered with a made-up chain. Now the client asks the kernel for the
    service's uid before sending anything and admits only its own, root's, or that of the
    owner of a socket directory that no one else could have made (every directory above it
    writable only by root, the client or that owner); else a ``BackendError`` ('is not who it
    should be'), and the records wait in the spool."""
    from lineage_ledger import BackendError
    from lineage_ledger.backends.baash.client import BaashBackend
    from tests.backend_conformance import chain_of
    from tests.support.factories import make_records

    socket_dir = Path(f"/tmp/lineage-ledger-baash-s38-{os.getpid()}-{tmp_path.name[-8:]}")
    ready_r, ready_w = os.pipe()
    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        _impostor(socket_dir, ready_w, report_w)
    os.close(ready_w)
    os.close(report_w)
    try:
        assert os.read(ready_r, 1) == b"1", "the impostor did not start"
        secret = make_records(1)[0]
        client = BaashBackend(f"baash://{socket_dir}/baash.sock", timeout=5)
        with pytest.raises(BackendError) as refused:
            client.append(chain_of([secret], 1))
        client.close()
        with os.fdopen(report_r, "rb") as report:
            received = report.read()
        report_r = -1
        assert secret.id.encode() not in received, "the client sent the record to another user's socket"
        assert received == b"", f"the client sent {len(received)} bytes to another user's socket"
        assert "not who it should be" in str(refused.value) and f"uid {NOBODY}" in str(refused.value)
    finally:
        os.waitpid(pid, 0)
        if report_r != -1:
            os.close(report_r)
        os.close(ready_r)
        import shutil

        shutil.rmtree(socket_dir, ignore_errors=True)


@pytest.mark.mpi
def test_a_torn_last_line_of_the_chain_log_is_not_glued_to_the_next_commit(tmp_path):
    """Bug: ``chain.log`` is appended a line per block, and its reader ignores an unterminated
    last line as a torn write (a crash or power loss while the line was written), but the next
    commit appended with ``O_APPEND`` after that fragment: ``1 f577...`` + ``1 <id>\\n``
    became one malformed line. Setup: a service commits a block and stops; a torn line for
    height 1 is left at the end of the log; the service is started again and a client
    appends. Impact: that commit, every later one and every later start of the service
    failed with ``CorruptStore: line for height 1 is malformed``: the ledger was stuck for
    good after one crash at the wrong moment. Now a commit first cuts the log back to its
    last whole line."""
    from lineage_ledger.backends import open_backend
    from tests.backend_conformance import chain_of
    from tests.support.baash import BaashService
    from tests.support.factories import make_records

    chain = chain_of(make_records(4), 2)
    service = BaashService(tmp_path, 3)
    try:
        open_backend(service.url).append(chain[:1])
    finally:
        service.stop()
    with open(service.storage / "chain.log", "ab") as log:
        log.write(b"1 " + chain[1].id[:20].encode())  # the line of the next block, cut short
    service = BaashService(tmp_path, 3)
    try:
        open_backend(service.url).append(chain[1:])
    finally:
        service.stop()
    service = BaashService(tmp_path, 3)
    try:
        assert open_backend(service.url).head().height == 1
    finally:
        service.stop()


@pytest.mark.mpi
def test_one_lying_rank_does_not_stop_the_quorum_endorsing_the_tree_head(tmp_path):
    """Bug: after a commit the gateway put under one note the signature line of every rank
    that *reported* the tree head it holds, without checking the line; and a note with one
    failing signature by a known key is refused whole (signed-note rules). Setup: 4 ranks
    (f=1, a quorum is 3 of 4), rank 3 a liar (``--lying-signer 3``: it reports the agreed
    head and signs another root); two appends; ``lineage-ledger baash checkpoint --keys
    ranks.pub``. Impact: exit 1 ('signature ... does not verify') at every round, though
    three honest ranks signed: one faulty rank, which BFT promises to tolerate, stopped the
    endorsed head for good (ranks restarting on that checkpoint then endorse nothing either).
    Now the gateway checks each line against the ranks' keys and leaves a failing one out."""
    from lineage_ledger.backends import open_backend
    from tests.backend_conformance import chain_of
    from tests.support.baash import BaashService
    from tests.support.factories import make_records

    chain = chain_of(make_records(4), 2)
    service = BaashService(tmp_path, 4, "--lying-signer", "3")
    try:
        backend = open_backend(service.url)
        backend.append(chain[:1])
        backend.append(chain[1:])
        keys = service.storage / "keys" / "ranks.pub"
        result = run_cli("baash", "checkpoint", "--ledger", service.url, "--keys", keys, "-o", tmp_path / "head",
                         cwd=tmp_path)
    finally:
        service.stop()
    assert result.returncode == 0, result.stderr
    assert "tree head of 4 records" in result.stderr
    assert (tmp_path / "head").read_text().count("\u2014 baash-rank-") == 3


@pytest.mark.mpi
def test_baash_checkpoint_never_writes_through_a_planted_link(tmp_path):
    """Bug: ``lineage-ledger baash checkpoint -o FILE`` opened FILE with ``open(path, "w")``,
    following a symbolic link, as the exports did. Setup: ``head.checkpoint -> victim``
    planted in a directory others may write; the owner saves the endorsed head there.
    Impact: the victim file was overwritten with the note (exit 0). Now the note is written
    to a new file beside FILE and renamed onto it: the link is replaced, its target kept."""
    from lineage_ledger.backends import open_backend
    from tests.backend_conformance import chain_of
    from tests.support.baash import BaashService
    from tests.support.factories import make_records

    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "head.checkpoint").symlink_to(victim)
    service = BaashService(tmp_path, 3)
    try:
        open_backend(service.url).append(chain_of(make_records(2), 2))
        result = run_cli("baash", "checkpoint", "--ledger", service.url, "--keys",
                         service.storage / "keys" / "ranks.pub", "-o", "head.checkpoint", cwd=tmp_path)
    finally:
        service.stop()
    assert victim.read_text() == "precious\n", "the checkpoint was written through the planted link"
    assert result.returncode == 0, result.stderr
    assert "baash-rank-" in (tmp_path / "head.checkpoint").read_text()


@pytest.mark.fabric
@pytest.mark.timeout(600)
def test_fabric_evidence_and_checkpoint_never_write_through_a_planted_link(request, tmp_path_factory, tmp_path):
    """Bug: ``python -m lineage_ledger.backends.fabric endorsed-head --save FILE`` and
    ``verify-endorsement ... -o FILE`` opened FILE with ``open(path, "w")``, following a
    symbolic link. Setup: links to a 'victim' file planted at both names; a real two-org
    network. Impact: the victim was overwritten with the evidence (the checkpoint), exit 0.
    Now both are written to a new file beside FILE and renamed onto it."""
    from tests.support.fabric import append_to, shared_network
    from tests.support.factories import make_records

    network = shared_network(request, tmp_path_factory)
    org1, org2 = network.orgs
    url = network.client_url(org1, "p1", "provider", "s38links")
    append_to(url, tmp_path / "spool", make_records(4, run_id="s38"), 2)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    for name in ("evidence.json", "endorsed.checkpoint"):
        (tmp_path / name).symlink_to(victim)
    saved = run_cli("-m", "lineage_ledger.backends.fabric", "endorsed-head", "--ledger", url, "--save",
                    "evidence.json", program="python", cwd=tmp_path)
    assert victim.read_text() == "precious\n", "--save wrote through the planted link"
    assert saved.returncode == 0, saved.stderr
    verified = run_cli("-m", "lineage_ledger.backends.fabric", "verify-endorsement", "evidence.json",
                       "--ca", f"Org1MSP={org1.ca_cert}", "--ca", f"Org2MSP={org2.ca_cert}",
                       "-o", "endorsed.checkpoint", program="python", cwd=tmp_path)
    assert victim.read_text() == "precious\n", "-o wrote through the planted link"
    assert verified.returncode == 0, verified.stderr
    assert "4 records" in verified.stdout


@needs_root
def test_a_baash_client_talks_to_another_users_service_in_a_directory_only_it_could_make(tmp_path):
    """The other side of the check above: a group's service running as its own user
    (``nobody`` here) in a directory that user owns, below directories only root may write
    (``/srv/ledger/run``; here a root-owned 0755 directory, itself in sticky /var/tmp), is
    believed, and the client sends its request."""
    import shutil
    import tempfile

    from lineage_ledger import BackendError
    from lineage_ledger.backends.baash.client import BaashBackend
    from tests.backend_conformance import chain_of
    from tests.support.factories import make_records

    base = Path(tempfile.mkdtemp(prefix="s38-", dir="/var/tmp"))
    base.chmod(0o755)
    socket_dir = base / "run"
    socket_dir.mkdir(mode=0o711)
    os.chown(socket_dir, NOBODY, NOBODY)
    ready_r, ready_w = os.pipe()
    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        _impostor(socket_dir, ready_w, report_w)
    os.close(ready_w)
    os.close(report_w)
    try:
        assert os.read(ready_r, 1) == b"1", "the service did not start"
        record = make_records(1)[0]
        client = BaashBackend(f"baash://{socket_dir}/baash.sock", timeout=5)
        with pytest.raises(BackendError) as answered:  # the stand-in closes without an answer
            client.append(chain_of([record], 1))
        client.close()
        with os.fdopen(report_r, "rb") as report:
            received = report.read()
        report_r = -1
        assert "not who it should be" not in str(answered.value)
        assert record.id.encode() in received
    finally:
        os.waitpid(pid, 0)
        if report_r != -1:
            os.close(report_r)
        os.close(ready_r)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.mpi
@needs_root
def test_a_baash_service_refuses_storage_others_can_write(tmp_path):
    """Bug: ``baash serve --storage DIR`` made DIR 0700 when it created it or owned it, but
    took a DIR owned by another user, or writable by others, as it was; the allow-list
    inside it is refused in that case, the history was not. Setup: DIR made by another user
    (``nobody``), mode 0777 (a scratch directory set up carelessly). Impact: anyone who may
    write DIR can rename ``blocks/``, ``chain.log``, ``origin`` and ``keys/`` away and put a
    history and rank keys of their own there, which the service loads as its ledger at its
    next start (and its ranks endorse), with no place on the allow-list. Now the service
    refuses to start (exit 2) on storage that is not its user's own or root's, or that
    others can write."""
    import subprocess
    import sys

    from tests.support.baash import require_mpi

    require_mpi()
    storage = tmp_path / "scratch"
    storage.mkdir()
    os.chown(storage, NOBODY, NOBODY)
    storage.chmod(0o777)
    script = Path(sys.executable).parent / "lineage-ledger"
    process = subprocess.Popen(
        [str(script), "baash", "serve", "--ranks", "2", "--storage", str(storage),
         "--socket", str(tmp_path / "run" / "baash.sock")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=10)
    except subprocess.TimeoutExpired:  # it is serving: the bug
        os.killpg(process.pid, 15)
        output, _ = process.communicate()
    assert process.returncode == 2, output
    assert "refusing to use it" in output and "belongs to uid 65534" in output
    storage.chmod(0o755)
    os.chown(storage, 0, 0)
    (tmp_path / "open").mkdir(mode=0o777)
    (tmp_path / "open").chmod(0o777)
    (tmp_path / "open" / "ledger").mkdir()  # root's own, but in a directory anyone may write
    refused = subprocess.run(
        [str(script), "baash", "serve", "--ranks", "2", "--storage", str(tmp_path / "open" / "ledger"),
         "--socket", str(tmp_path / "run2" / "baash.sock")], capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2 and "others can write" in refused.stderr, refused.stderr


def test_an_export_to_dev_stdout_redirected_to_a_file_writes_the_file(tmp_path):
    """The other form of ``-o /dev/stdout``: the shell sent standard output to a regular file
    (``graph ... -o /dev/stdout > lineage.dot``). /dev/stdout then leads to a regular file,
    and renaming a new file onto the name would (as root) have replaced ``/dev/stdout``
    itself for the whole machine; a path under /dev is written into. (Not run against the
    code before this fix, for that reason: reasoned from open_output.)"""
    import subprocess
    import sys

    env = one_task_recorded(tmp_path)
    script = Path(sys.executable).parent / "lineage-ledger"
    with open(tmp_path / "lineage.dot", "wb") as out:
        done = subprocess.run([str(script), "graph", "out.txt", "-f", "dot", "-o", "/dev/stdout"], cwd=tmp_path,
                              env={**os.environ, **env}, stdout=out, stderr=subprocess.PIPE, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "lineage.dot").read_text().startswith("digraph")
    assert os.path.islink("/dev/stdout") or stat.S_ISCHR(os.lstat("/dev/stdout").st_mode)
