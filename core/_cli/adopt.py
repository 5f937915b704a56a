"""`lineage-ledger adopt`: accept the current content of files as a new, recorded version.

A user who replaces a raw input on purpose (a corrected sample sheet, a re-downloaded
reference) needs a way through ``strict`` that leaves a trace of who accepted what, when
and why. An adoption is a record whose outputs are the adopted paths as they are now:

* the pre-run checks compare a file with its last producer, which is now the adoption,
  so ``strict`` lets the workflow run; an edit after it is caught against the adopted digest;
* ``why PATH`` shows the adoption as the producer, with the user, the host and the note;
* ``extra.previous`` keeps the digest the ledger held for each path before.

Records of adoptions are ordinary records (engine ``lineage-ledger``, task ``adopt``), so
they are in the tree, verified and audited like any task's.
"""

from __future__ import annotations

import getpass
import os
import socket
import uuid
from collections.abc import Sequence
from typing import Any

from .._canonical import utcnow
from .._capture.files import entries_of, manifest_records_of
from .._environment import ESCAPED, current_environment, escape_fields
from .._files.hashing import hash_file
from .._ledger.ledger import Ledger, LedgerRecord
from .._ledger.seen import seen_values
from .._model import Record

__all__ = ["adopt"]


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container): say which uid
        user = f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def adopt(ledger: Ledger, paths: Sequence[str], note: str | None = None) -> tuple[LedgerRecord, dict[str, Any]]:
    """Record ``paths`` (files or directories) as they are now, as adopted by this user.

    Returns the adoption's record and, per real path, the digest the ledger held for it
    before (None where no record named it). Raises :class:`ArtifactError` for a path that
    cannot be hashed (nothing is recorded then).
    """
    artifacts = [hash_file(path) for path in paths]  # all or nothing: a bad path records none
    outputs = entries_of(artifacts)
    previous: dict[str, Any] = {}
    for artifact in artifacts:
        real = os.path.realpath(artifact.path)
        seen = ledger.last_seen(real, ("out",)) or ledger.last_seen(real)
        previous[real] = None if seen is None else seen[2]["blake3"]
    now = utcnow()
    extra: dict[str, Any] = {"adopted_by": _who(), "previous": previous}
    if escape_fields(extra, ("adopted_by",)):  # a user or host name that is not UTF-8 (docs/guide.md)
        extra[ESCAPED] = ["adopted_by"]
    if note:
        extra["note"] = note
    # Later than every record the look-ups above verified, whatever their hosts' clocks said:
    # an adoption from a clock behind one of theirs must still be the latest (.._order).
    extra.update(seen_values(ledger.backend.identity, now))
    record = Record(
        engine="lineage-ledger", run_id=uuid.uuid4().hex, task_id=uuid.uuid4().hex, task_name="adopt",
        status="succeeded", started=now, ended=now, outputs=outputs, environment=current_environment(),
        extra=extra,
    )
    ledger.append_records([r.stored() for r in [*manifest_records_of(artifacts), record]])
    return ledger.get(record.id), previous
