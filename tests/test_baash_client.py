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
    code = ("import sys, lineage_ledger._cli.main\nfrom lineage_ledger.backends import open_backend\n"
            "open_backend('baash:///tmp/none.sock')\nprint('mpi4py' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_listen_addresses_and_tls_urls_parse():
    from lineage_ledger.backends.baash.client import parse_url
    from lineage_ledger.backends.baash.tls import parse_listen

    assert parse_listen("7411") == ("127.0.0.1", 7411)  # loopback unless a host is named
    assert parse_listen("0.0.0.0:7411") == ("0.0.0.0", 7411)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("ledger01:http", "70000", ":-1"):
        with pytest.raises(ConfigError, match="expected PORT or HOST:PORT"):
            parse_listen(bad)
    address = parse_url("baash+tls://[::1]:7411?ca=ca.pem&cert=/c/me.pem&key=/c/me.key&server_name=ledger01")
    assert (address.host, address.port, address.where, address.server_name) == ("::1", 7411, "[::1]:7411", "ledger01")
    assert address.cert == "/c/me.pem" and address.ca.endswith("/ca.pem") and address.ca.startswith("/")
    for bad in ("baash+tls://ledger01?ca=a&cert=b&key=c", "baash+tls://ledger01:7411/x?ca=a&cert=b&key=c",
                "baash+tls://ledger01:7411?ca=a&ca=b&cert=b&key=c"):
        with pytest.raises(ConfigError, match="expected baash\\+tls://host:port"):
            parse_url(bad)
