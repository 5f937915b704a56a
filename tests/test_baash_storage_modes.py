"""Files private by default, also inside BAASH's storage directory: block files, chain.log,
the job's logs and every folder under the storage are readable by their owner alone, not
only kept private by the storage directory's own 0700 (a directory made 0755 by an admin, or
copied with its modes to a shared file system, must not expose the records)."""

from __future__ import annotations

import os
import stat

import pytest

from tests.conftest import run_cli
from tests.support.baash import BaashService

pytestmark = pytest.mark.mpi


def test_every_file_under_the_storage_is_private(tmp_path):
    service = BaashService(tmp_path, 2)
    try:
        (tmp_path / "in.txt").write_text("source\n")
        for i in range(2):
            run_cli("run", "--ledger", service.url, "-i", "in.txt", "-o", f"out{i}.txt", "--",
                    "cp", "in.txt", f"out{i}.txt", cwd=tmp_path, check_rc=0)
    finally:
        service.stop()
    shared = []
    for root, dirs, files in os.walk(service.storage):
        for name in dirs + files:
            path = os.path.join(root, name)
            mode = stat.S_IMODE(os.lstat(path).st_mode)
            if mode & 0o077:
                shared.append(f"{os.path.relpath(path, service.storage)} {mode:04o}")
    assert (service.storage / "chain.log").exists()
    assert shared == [], shared
