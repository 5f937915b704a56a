"""The ``baash://`` client and CLI wiring, without a service (no MPI needed)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from lineage_ledger import BackendUnavailable, ConfigError
from lineage_ledger.backends import backend_class, open_backend
from lineage_ledger.backends.baash import BaashBackend
from lineage_ledger.backends.baash._wire import block_from_wire, block_to_wire
from tests.backend_conformance import chain_of
from tests.conftest import run_cli
from tests.support.factories import make_records


def test_scheme_is_registered_and_malformed_urls_are_config_errors():
    assert backend_class("baash") is BaashBackend
    for url in ("baash://nohost", "baash://host:port", "baash://:7411"):
        with pytest.raises(ConfigError):
            open_backend(url)
    assert open_backend("baash://127.0.0.1:7411/ignored").identity == "baash://127.0.0.1:7411"


def test_unreachable_service_is_backend_unavailable():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(BackendUnavailable, match="cannot reach the BAASH service"):
        open_backend(f"baash://127.0.0.1:{port}").head()


def test_blocks_cross_the_wire_byte_for_byte():
    blocks = chain_of(make_records(7), 3)
    tampered = blocks[0].records[0].body + b"\xff\x00\xe9"  # bytes that are not UTF-8 survive too
    blocks[0] = type(blocks[0])(blocks[0].height, blocks[0].id, blocks[0].header,
                                (type(blocks[0].records[0])(blocks[0].records[0].id, tampered),
                                 *blocks[0].records[1:]))
    assert [block_from_wire(json.loads(json.dumps(block_to_wire(b)))) for b in blocks] == blocks
    with pytest.raises(ValueError, match="malformed block"):
        block_from_wire([0, "id", "header", [["only two", "fields"]]])


def test_cli_lists_the_service_without_importing_mpi(workdir):
    result = run_cli("baash", "serve", "--help", cwd=workdir, check_rc=0)
    assert "--ranks" in result.stdout and "--storage" in result.stdout
    code = ("import sys, lineage_ledger._cli\nfrom lineage_ledger.backends import open_backend\n"
            "open_backend('baash://127.0.0.1:1')\nprint('mpi4py' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
