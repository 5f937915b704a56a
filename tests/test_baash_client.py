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
from lineage_ledger.backends.baash._wire import WireError, block_from_wire, block_to_wire
from tests.backend_conformance import chain_of
from tests.conftest import run_cli
from tests.support.factories import make_records


def test_scheme_is_registered_and_malformed_urls_are_config_errors():
    assert backend_class("baash") is BaashBackend
    for url in ("baash://nohost", "baash://relative/path.sock", "baash://"):
        with pytest.raises(ConfigError, match="baash:///path/to/baash.sock"):
            open_backend(url)
    for url in ("baash://127.0.0.1:7411", "baash://[::1]:7411/x"):  # TCP only with mutual TLS (baash+tls://)
        with pytest.raises(ConfigError, match="takes TCP clients only with mutual TLS: baash\\+tls://host:port"):
            open_backend(url)
    assert open_backend("baash:///run/ledger/../ledger/baash.sock").identity == "baash:///run/ledger/baash.sock"
    assert open_backend("baash+unix:///run/ledger/baash.sock").identity == "baash:///run/ledger/baash.sock"


def test_unreachable_service_is_backend_unavailable(tmp_path):
    with pytest.raises(BackendUnavailable, match="cannot reach the BAASH service"):
        open_backend(f"baash://{tmp_path}/nobody-listens.sock").head()
    with socket.socket(socket.AF_UNIX) as bound:  # bound, never listening: refused
        bound.bind(str(tmp_path / "bound.sock"))
        with pytest.raises(BackendUnavailable, match="cannot reach the BAASH service"):
            open_backend(f"baash://{tmp_path}/bound.sock").head()


def test_blocks_cross_the_wire_byte_for_byte():
    blocks = chain_of(make_records(7), 3)
    tampered = blocks[0].records[0].body + b"\xff\x00\xe9"  # bytes that are not UTF-8 survive too
    blocks[0] = type(blocks[0])(blocks[0].height, blocks[0].id, blocks[0].header,
                                (type(blocks[0].records[0])(blocks[0].records[0].id, tampered),
                                 *blocks[0].records[1:]))
    assert [block_from_wire(json.loads(json.dumps(block_to_wire(b)))) for b in blocks] == blocks
    with pytest.raises(ValueError, match="malformed block"):
        block_from_wire([0, "id", "header", [["only two", "fields"]]])
    with pytest.raises(WireError, match="malformed block"):
        block_from_wire([0, "id", "h\u20ac", []])  # not latin-1: not bytes we sent


def test_cli_lists_the_service_without_importing_mpi(workdir):
    result = run_cli("baash", "serve", "--help", cwd=workdir, check_rc=0)
    assert "--ranks" in result.stdout and "--storage" in result.stdout and "--socket" in result.stdout
    assert "with mutual TLS only" in result.stdout and "loopback" in result.stdout  # --listen never goes bare
    code = ("import sys, lineage_ledger._cli\nfrom lineage_ledger.backends import open_backend\n"
            "open_backend('baash:///tmp/none.sock')\nprint('mpi4py' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
