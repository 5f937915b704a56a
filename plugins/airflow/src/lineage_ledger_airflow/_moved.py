"""Second sweeps owed on a ledger the site has moved from.

A scheduler notes a run's owed second sweep beside its ledger's try markers (``_reconcile``:
the run's sweep found a task process still alive, or could make no marker), and the
scheduler started after it does that sweep. The markers and the notes are kept per ledger,
in its spool directory. A site that moves its ledger (SQLite to PostgreSQL, or back) restarts
its scheduler on the new one, which looked for notes beside the new ledger only: a sweep owed
on the old one was never done, and a try whose task process gave it up as it ended (its
record found no durable place: the spool's disk full, the ledger locked) was lost, though
the scheduler could still record it (tests/test_airflow_s47_moved_ledger.py).

Now a starting scheduler also reads the notes beside the other ledgers of its spool root,
and does each owed sweep for the ledger it is owed on: the run's tries that no process of
this machine recorded into any ledger are recorded **into the old ledger**, where the run's
other tries went (a run is not split further across the two), marked beside it, and its
note removed. The old ledger is named by its spool directory's ``URL`` file (what ``spool
status`` shows). Where that name cannot reach it (a PostgreSQL password, which the file
never holds), or the ledger does not take the records in time, they wait in its spool
directory, and the scheduler's log says so and how to ship them: never lost, never silent.
"""

from __future__ import annotations

import logging
import os
from types import SimpleNamespace
from typing import Any

from lineage_ledger import TaskCapture

from . import _settings, _tries

log = logging.getLogger("lineage_ledger.airflow")

#: Seconds the scheduler waits for the old ledger to take what its sweep recorded.
SHIP_WAIT_S = 30.0


def site_token() -> bytes:
    """What a note of an owed sweep holds: this site's metadata database, digested (two Airflow
    sites on one machine may share a spool root, staging beside production, and run the same
    DAGs under the same run ids: a note one of them left must not send the other's tries to
    its ledger). Empty where it cannot be read."""
    try:
        from airflow.configuration import conf
        from blake3 import blake3

        return blake3(str(conf.get("database", "sql_alchemy_conn")).encode()).hexdigest()[:40].encode()
    except Exception:  # noqa: BLE001 - then the note holds nothing, and any site takes it (below)
        return b""


def _this_sites(note: str, token: bytes) -> bool:
    """Whether a note beside another ledger is this site's: it names this site, or nothing (a
    note made on a full disk, where its words could not be written; or by an older plugin)."""
    try:
        with open(note, "rb") as handle:
            said = handle.read(100)
    except OSError:  # none there (most), or unreadable: not this run's
        return False
    return not said or not token or said == token


def owed_elsewhere(dag_id: str, run_id: str) -> list[str]:
    """The spool directories of the other ledgers of this spool root beside which a scheduler
    of this site left this run's second sweep owed."""
    from ._reconcile import owed_name

    markers = _tries._marker_dir(_tries.capture())  # <root>/<this ledger's spool>/airflow-tries
    own, name = os.path.dirname(markers), owed_name(dag_id, run_id)
    try:
        others = [entry.path for entry in os.scandir(os.path.dirname(own))
                  if entry.is_dir(follow_symlinks=False) and entry.path != own]
    except OSError:
        return []
    token = site_token()
    return [other for other in others if _this_sites(os.path.join(other, "airflow-tries", name), token)]


def _ledger_named(spool_dir: str) -> str | None:
    """The ledger a spool directory belongs to, as its ``URL`` file names it (None: unreadable)."""
    try:
        with open(os.path.join(spool_dir, "URL"), encoding="utf-8") as handle:
            return handle.readline().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def sweep_owed_there(dag_id: str, run_id: str, dag: Any, spool_dir: str) -> int:
    """Do the second sweep of ``dag_id/run_id`` owed on the ledger of ``spool_dir`` (not this
    scheduler's), recording into that ledger; how many tries were recorded."""
    from ._reconcile import record_unreported

    named = _ledger_named(spool_dir)
    if named is None:
        log.warning("lineage-ledger: the second sweep of %s/%s is owed on a ledger whose spool directory %s does not "
                    "name it; not done (its tries that no process recorded are recorded nowhere)", dag_id, run_id,
                    spool_dir)
        return 0
    reachable = "***" not in named  # a password the URL file never holds: journal only, said below
    capture = TaskCapture(named, engine=_tries.ENGINE, spool=_settings.spool_root(), threads=2, ship=reachable)
    try:
        if os.path.realpath(capture.spool_dir) != os.path.realpath(spool_dir):
            log.warning("lineage-ledger: the second sweep of %s/%s is owed on ledger %s, whose spool directory is no "
                        "longer %s; not done", dag_id, run_id, named, spool_dir)
            return 0
        _tries._routed.capture = capture
        try:  # again=False: a task process still alive leaves the note for the next scheduler
            recorded = record_unreported(SimpleNamespace(dag_id=dag_id, run_id=run_id, dag=dag), again=False,
                                         ask_ledger=reachable)
        finally:
            _tries._routed.capture = None
    finally:
        shipped = capture.close(timeout=SHIP_WAIT_S if reachable else 0.0)
    if recorded and shipped and reachable:
        log.warning("lineage-ledger: the site moved its ledger: recorded %d tries of %s/%s that no task process "
                    "recorded into the ledger the run was recorded into, %s (its second sweep was owed there)",
                    recorded, dag_id, run_id, named)
    elif recorded:
        log.warning("lineage-ledger: the site moved its ledger: %d tries of %s/%s that no task process recorded, owed "
                    "to the ledger the run was recorded into (%s), wait in its spool %s; ship them with "
                    "`lineage-ledger spool ship --ledger URL --spool %s`, URL that ledger's", recorded, dag_id,
                    run_id, named, spool_dir, _settings.spool_root())
    return recorded
