"""A real Hyperledger Fabric 2.5 network as local processes, for the `fabric` tests.

One Raft orderer (OrdererMSP) and one peer for each of two organisations (Org1MSP,
Org2MSP), all on loopback ports with TLS; a channel created through the orderer's channel
participation API (osnadmin, no system channel); the provenance chaincode running as a
service (chaincode-as-a-service, our own ccaas builder scripts), one server per org reached
over mutually authenticated TLS, and deployed with the full lifecycle: package, install on
both peers, approve for both orgs, commit.

The binaries come from ``ledger_backends/fabric/tools/install-fabric.sh`` (``make
install-fabric``); without them :func:`fabric_binaries` returns ``None`` and the tests skip.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FABRIC_DIR = ROOT / "ledger_backends" / "fabric"
CHAINCODE_SRC = FABRIC_DIR / "chaincode"
BUILDER_DIR = FABRIC_DIR / "tools" / "ccaas-builder"
FABRIC_RELEASE = "2.5.9"
CHANNEL = "lineage"
CHAINCODE = "lineage"
TOOLS = ("peer", "orderer", "configtxgen", "cryptogen", "osnadmin")


def cache_root() -> Path:
    explicit = os.environ.get("LINEAGE_LEDGER_FABRIC_CACHE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lineage-ledger"


def fabric_binaries() -> Path | None:
    """The bin directory holding every Fabric tool, or ``None``."""
    bin_dir = cache_root() / f"fabric-{FABRIC_RELEASE}" / "bin"
    if all((bin_dir / tool).is_file() for tool in TOOLS) and (bin_dir.parent / "config" / "core.yaml").is_file():
        return bin_dir
    return None


def free_ports(count: int) -> list[int]:
    sockets, ports = [], []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
        ports.append(s.getsockname()[1])
    for s in sockets:
        s.close()
    return ports


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}; log:\n{log.read_text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s; log:\n{log.read_text()[-3000:]}")


def go_binary() -> str | None:
    found = shutil.which("go")
    if found is None and os.access("/usr/local/go/bin/go", os.X_OK):
        found = "/usr/local/go/bin/go"
    return found


def build_chaincode(source: Path = CHAINCODE_SRC) -> Path:
    """Compile the chaincode once per source version into the cache (Go caches stay outside)."""
    digest = hashlib.sha256()
    for path in sorted(source.glob("*.go")) + [source / "go.mod", source / "go.sum"]:
        if not path.name.endswith("_test.go"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    binary = cache_root() / "chaincode" / digest.hexdigest()[:16] / "lineage-chaincode"
    if not binary.exists():
        binary.parent.mkdir(parents=True, exist_ok=True)
        partial = binary.with_suffix(".partial")
        env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-buildvcs=false", "CGO_ENABLED": "0"}
        subprocess.run([go_binary() or "go", "build", "-trimpath", "-o", str(partial), "."], cwd=source, env=env,
                       check=True, capture_output=True, timeout=600)
        partial.rename(binary)
    return binary


def append_to(url: str, spool: Path, records, block_size: int) -> None:
    """Append ``records`` (Record objects) to the ledger at ``url`` in blocks of ``block_size``."""
    from lineage_ledger import open_ledger

    ledger = open_ledger(url, spool=str(spool))
    try:
        ledger.append_records([r.stored() for r in records], block_size=block_size)
    finally:
        ledger.close()


#: The last commit whose chaincode kept no log tree (the tests and the benchmark deploy it
#: to show the upgrade of an existing ledger and what the tree costs an append).
PRE_TREE_CHAINCODE_COMMIT = "6dbf6a9"


def chaincode_source_at(commit: str, directory: Path) -> tuple[Path | None, str]:
    """The chaincode's sources as of ``commit``, from this repository's history, extracted
    under ``directory``: (path, "") or (None, why not: e.g. a shallow clone without it)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "ledger_backends/fabric/chaincode"],
                             capture_output=True, timeout=60)
    if archive.returncode != 0:
        return None, archive.stderr.decode(errors="replace").strip()[:200]
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive.stdout, check=True, timeout=60)
    return directory / "ledger_backends" / "fabric" / "chaincode", ""


@dataclass
class Org:
    name: str  # Org1
    msp_id: str  # Org1MSP
    domain: str  # org1.example.com
    port: int
    chaincode_port: int  # where the peer listens for chaincode (unused with ccaas)
    operations_port: int
    base: Path = field(default=Path())
    chaincode_server_port: int = 0  # where this org's chaincode server listens

    @property
    def crypto(self) -> Path:
        return self.base / "crypto" / "peerOrganizations" / self.domain

    @property
    def peer_dir(self) -> Path:
        return self.crypto / "peers" / f"peer0.{self.domain}"

    @property
    def tls_ca(self) -> Path:
        return self.peer_dir / "tls" / "ca.crt"

    def user_msp(self, user: str) -> Path:
        return self.crypto / "users" / f"{user}@{self.domain}" / "msp"

    @property
    def ca_cert(self) -> Path:
        return self.crypto / "ca" / f"ca.{self.domain}-cert.pem"

    @property
    def ca_key(self) -> Path:
        return self.crypto / "ca" / "priv_sk"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def _crypto_config(orgs: list[Org]) -> dict:
    sans = ["localhost", "127.0.0.1"]
    return {
        "OrdererOrgs": [{"Name": "Orderer", "Domain": "example.com", "EnableNodeOUs": True,
                         "Specs": [{"Hostname": "orderer", "SANS": sans}]}],
        "PeerOrgs": [{"Name": org.name, "Domain": org.domain, "EnableNodeOUs": True,
                      "Template": {"Count": 1, "SANS": sans}, "Users": {"Count": 1}} for org in orgs],
    }


def _signature(rule: str) -> dict:
    return {"Type": "Signature", "Rule": rule}


def _implicit(rule: str) -> dict:
    return {"Type": "ImplicitMeta", "Rule": rule}


def _configtx(base: Path, orgs: list[Org], orderer_port: int) -> dict:
    """Our channel: Raft with one consenter, V2_5 application capabilities, fast batches."""
    orderer_tls = base / "crypto" / "ordererOrganizations" / "example.com" / "orderers" / "orderer.example.com" / "tls"
    orderer_org = {
        "Name": "OrdererOrg", "ID": "OrdererMSP",
        "MSPDir": str(base / "crypto" / "ordererOrganizations" / "example.com" / "msp"),
        "Policies": {"Readers": _signature("OR('OrdererMSP.member')"),
                     "Writers": _signature("OR('OrdererMSP.member')"),
                     "Admins": _signature("OR('OrdererMSP.admin')")},
        "OrdererEndpoints": [f"127.0.0.1:{orderer_port}"],
    }
    peer_orgs = [{
        "Name": org.msp_id, "ID": org.msp_id, "MSPDir": str(org.crypto / "msp"),
        "Policies": {
            "Readers": _signature(f"OR('{org.msp_id}.admin','{org.msp_id}.peer','{org.msp_id}.client')"),
            "Writers": _signature(f"OR('{org.msp_id}.admin','{org.msp_id}.client')"),
            "Admins": _signature(f"OR('{org.msp_id}.admin')"),
            "Endorsement": _signature(f"OR('{org.msp_id}.peer')"),
        },
        "AnchorPeers": [{"Host": "127.0.0.1", "Port": org.port}],
    } for org in orgs]
    standard = {"Readers": _implicit("ANY Readers"), "Writers": _implicit("ANY Writers"),
                "Admins": _implicit("MAJORITY Admins")}
    return {"Profiles": {"LineageChannel": {
        "Policies": standard,
        "Capabilities": {"V2_0": True},
        "Orderer": {
            "OrdererType": "etcdraft",
            "EtcdRaft": {"Consenters": [{"Host": "127.0.0.1", "Port": orderer_port,
                                         "ClientTLSCert": str(orderer_tls / "server.crt"),
                                         "ServerTLSCert": str(orderer_tls / "server.crt")}]},
            # Small batches cut quickly: a test or a recorder waits for each commit.
            "BatchTimeout": "10ms",
            "BatchSize": {"MaxMessageCount": 500, "AbsoluteMaxBytes": "64 MB", "PreferredMaxBytes": "8 MB"},
            "Organizations": [orderer_org],
            "Policies": {**standard, "BlockValidation": _implicit("ANY Writers")},
            "Capabilities": {"V2_0": True},
        },
        "Application": {
            "Organizations": peer_orgs,
            "Policies": {**standard, "LifecycleEndorsement": _implicit("MAJORITY Endorsement"),
                         "Endorsement": _implicit("MAJORITY Endorsement")},
            "Capabilities": {"V2_5": True},
        },
    }}}


_SHARED: FabricNetwork | None = None


def shared_network(request, tmp_path_factory) -> FabricNetwork:
    """One network for the whole test session, whichever test module asks first (each
    module's ``fabric_network`` fixture calls this); it stops when the session ends.
    Skips, saying what to install, without the extra, the binaries or Go."""
    import pytest

    global _SHARED
    if _SHARED is None:
        pytest.importorskip("fabric_protos", reason="the fabric extra is not installed: make install-fabric")
        bin_dir = fabric_binaries()
        if bin_dir is None:
            pytest.skip("no Fabric 2.5 binaries in the cache: run `make install-fabric` (Go module proxy build)")
        if go_binary() is None:
            pytest.skip("no Go toolchain to build the chaincode")
        network = FabricNetwork(tmp_path_factory.mktemp("fabric"), bin_dir)
        request.session.addfinalizer(network.stop)
        network.start()
        _SHARED = network
    return _SHARED


class FabricNetwork:
    """Start with :meth:`start`; :meth:`stop` kills every process it started."""

    def __init__(self, base: Path, bin_dir: Path, *, signature_policy: str | None = None) -> None:
        """``signature_policy`` replaces the channel's default endorsement policy (MAJORITY of
        the orgs, here both) for the chaincode, e.g. "OR('Org1MSP.peer','Org2MSP.peer')"."""
        self.base = base
        self.signature_policy = signature_policy
        self.bin_dir = bin_dir
        ports = free_ports(12)
        self.orderer_port, self.orderer_admin_port, self.orderer_ops_port = ports[:3]
        self.orgs = [
            Org("Org1", "Org1MSP", "org1.example.com", *ports[4:7], base=base, chaincode_server_port=ports[10]),
            Org("Org2", "Org2MSP", "org2.example.com", *ports[7:10], base=base, chaincode_server_port=ports[11]),
        ]
        self.processes: dict[str, subprocess.Popen] = {}
        self.config_dir = base / "config"
        self.package_ids: dict[str, str] = {}  # org name -> its installed package

    # -- helpers ----------------------------------------------------------------------------
    @property
    def orderer_dir(self) -> Path:
        return self.base / "crypto" / "ordererOrganizations" / "example.com"

    @property
    def orderer_tls_ca(self) -> Path:
        return self.orderer_dir / "orderers" / "orderer.example.com" / "tls" / "ca.crt"

    def _env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CORE_", "ORDERER_", "FABRIC_"))}
        env.update(FABRIC_CFG_PATH=str(self.config_dir), FABRIC_LOGGING_SPEC="WARNING", **extra)
        return env

    def _run(self, tool: str, *args: str, env: dict[str, str], timeout: float = 120) -> str:
        result = subprocess.run([str(self.bin_dir / tool), *args], env=env, capture_output=True, text=True,
                                timeout=timeout, cwd=self.base)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args[:3])} failed ({result.returncode}):\n"
                               f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
        return result.stdout + result.stderr

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = self.base / "logs" / f"{name}.log"
        log.parent.mkdir(exist_ok=True)
        with open(log, "ab") as out:
            # Own process group: teardown signals the group, never anything by name.
            process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                       cwd=self.base, start_new_session=True, preexec_fn=_die_with_parent)
        self.processes[name] = process
        return process

    def admin_env(self, org: Org) -> dict[str, str]:
        return self._env(CORE_PEER_LOCALMSPID=org.msp_id, CORE_PEER_MSPCONFIGPATH=str(org.user_msp("Admin")),
                         CORE_PEER_ADDRESS=org.address, CORE_PEER_TLS_ENABLED="true",
                         CORE_PEER_TLS_ROOTCERT_FILE=str(org.tls_ca))

    # -- bring-up ---------------------------------------------------------------------------
    def start(self) -> FabricNetwork:
        started = time.monotonic()
        self._write_config()
        self._start_orderer()
        for org in self.orgs:
            self.start_peer(org)
        self._create_channel()
        self._deploy_chaincode()
        self.startup_seconds = time.monotonic() - started
        return self

    def _write_config(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        sample = self.bin_dir.parent / "config"
        # Fabric's sample core.yaml names the ccaas builder at its container path; point it at ours.
        core = (sample / "core.yaml").read_text().replace("/opt/hyperledger/ccaas_builder", str(BUILDER_DIR))
        (self.config_dir / "core.yaml").write_text(core)
        shutil.copy(sample / "orderer.yaml", self.config_dir / "orderer.yaml")
        (self.base / "crypto-config.yaml").write_text(json.dumps(_crypto_config(self.orgs)))
        self._run("cryptogen", "generate", "--config", str(self.base / "crypto-config.yaml"),
                  "--output", str(self.base / "crypto"), env=self._env())
        (self.config_dir / "configtx.yaml").write_text(json.dumps(_configtx(self.base, self.orgs, self.orderer_port)))
        self._run("configtxgen", "-profile", "LineageChannel", "-channelID", CHANNEL,
                  "-outputBlock", str(self.base / "channel.block"), "-configPath", str(self.config_dir),
                  env=self._env())

    def _start_orderer(self) -> None:
        node = self.orderer_dir / "orderers" / "orderer.example.com"
        tls = node / "tls"
        data = self.base / "orderer"
        env = self._env(
            ORDERER_GENERAL_LISTENADDRESS="127.0.0.1", ORDERER_GENERAL_LISTENPORT=str(self.orderer_port),
            ORDERER_GENERAL_LOCALMSPID="OrdererMSP", ORDERER_GENERAL_LOCALMSPDIR=str(node / "msp"),
            ORDERER_GENERAL_TLS_ENABLED="true", ORDERER_GENERAL_TLS_PRIVATEKEY=str(tls / "server.key"),
            ORDERER_GENERAL_TLS_CERTIFICATE=str(tls / "server.crt"), ORDERER_GENERAL_TLS_ROOTCAS=f"[{tls / 'ca.crt'}]",
            ORDERER_GENERAL_CLUSTER_CLIENTCERTIFICATE=str(tls / "server.crt"),
            ORDERER_GENERAL_CLUSTER_CLIENTPRIVATEKEY=str(tls / "server.key"),
            ORDERER_GENERAL_CLUSTER_ROOTCAS=f"[{tls / 'ca.crt'}]",
            ORDERER_GENERAL_BOOTSTRAPMETHOD="none", ORDERER_CHANNELPARTICIPATION_ENABLED="true",
            ORDERER_ADMIN_LISTENADDRESS=f"127.0.0.1:{self.orderer_admin_port}", ORDERER_ADMIN_TLS_ENABLED="true",
            ORDERER_ADMIN_TLS_CERTIFICATE=str(tls / "server.crt"), ORDERER_ADMIN_TLS_PRIVATEKEY=str(tls / "server.key"),
            ORDERER_ADMIN_TLS_ROOTCAS=f"[{tls / 'ca.crt'}]", ORDERER_ADMIN_TLS_CLIENTAUTHREQUIRED="true",
            ORDERER_ADMIN_TLS_CLIENTROOTCAS=f"[{tls / 'ca.crt'}]",
            ORDERER_OPERATIONS_LISTENADDRESS=f"127.0.0.1:{self.orderer_ops_port}", ORDERER_METRICS_PROVIDER="disabled",
            ORDERER_FILELEDGER_LOCATION=str(data / "ledger"), ORDERER_CONSENSUS_WALDIR=str(data / "wal"),
            ORDERER_CONSENSUS_SNAPDIR=str(data / "snap"),
        )
        process = self._spawn("orderer", [str(self.bin_dir / "orderer")], env)
        wait_for_port(self.orderer_admin_port, process, self.base / "logs" / "orderer.log")

    def peer_env(self, org: Org) -> dict[str, str]:
        tls = org.peer_dir / "tls"
        data = self.base / f"peer-{org.name}"
        return self._env(
            CORE_PEER_ID=f"peer0.{org.domain}", CORE_PEER_LISTENADDRESS=org.address, CORE_PEER_ADDRESS=org.address,
            CORE_PEER_CHAINCODELISTENADDRESS=f"127.0.0.1:{org.chaincode_port}",
            CORE_PEER_CHAINCODEADDRESS=f"127.0.0.1:{org.chaincode_port}",
            CORE_PEER_GOSSIP_BOOTSTRAP=org.address, CORE_PEER_GOSSIP_EXTERNALENDPOINT=org.address,
            CORE_PEER_LOCALMSPID=org.msp_id, CORE_PEER_MSPCONFIGPATH=str(org.peer_dir / "msp"),
            CORE_PEER_TLS_ENABLED="true", CORE_PEER_TLS_CERT_FILE=str(tls / "server.crt"),
            CORE_PEER_TLS_KEY_FILE=str(tls / "server.key"), CORE_PEER_TLS_ROOTCERT_FILE=str(tls / "ca.crt"),
            CORE_PEER_FILESYSTEMPATH=str(data / "data"), CORE_LEDGER_SNAPSHOTS_ROOTDIR=str(data / "snapshots"),
            CORE_OPERATIONS_LISTENADDRESS=f"127.0.0.1:{org.operations_port}", CORE_METRICS_PROVIDER="disabled",
            CORE_VM_ENDPOINT="",  # no Docker: chaincode runs as a service
            CORE_PEER_GATEWAY_ENABLED="true",
            # Gossip is how one org's gateway learns the other org's peer (needed for MAJORITY
            # endorsement). Its defaults retry a failed connection after 25 s; on loopback,
            # short intervals make the network ready in seconds and notice a restarted peer.
            CORE_PEER_GOSSIP_RECONNECTINTERVAL="1s", CORE_PEER_GOSSIP_ALIVETIMEINTERVAL="1s",
            CORE_PEER_GOSSIP_ALIVEEXPIRATIONTIMEOUT="5s",
            # The chaincode keeps its own history (blocks are append-only); Fabric's per-key
            # history index would only add a write for every key at every commit.
            CORE_LEDGER_HISTORY_ENABLEHISTORYDATABASE="false",
        )

    def start_peer(self, org: Org, *, ready: bool = False, settings: dict[str, str] | None = None) -> None:
        """Start ``org``'s peer; with ``ready``, wait until its gateway can get endorsements.
        ``settings`` are core.yaml overrides as environment (``CORE_LEDGER_STATE_...``)."""
        name = f"peer-{org.name}"
        env = self.peer_env(org)
        env.update(settings or {})
        process = self._spawn(name, [str(self.bin_dir / "peer"), "node", "start"], env)
        wait_for_port(org.port, process, self.base / "logs" / f"{name}.log")
        if ready:
            self.wait_until_endorsing(org)

    def restart_peer(self, org: Org, settings: dict[str, str] | None = None) -> None:
        """Stop ``org``'s peer as an operator would (SIGTERM) and start it again with
        ``settings`` (none: as :meth:`start` did), ready to endorse. A peer that is not
        running (a restart that failed) is only started."""
        process = self.processes.pop(f"peer-{org.name}", None)
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
        self.start_peer(org, ready=True, settings=settings)

    def kill_peer(self, org: Org) -> None:
        """``kill -9`` the peer's process group, as a crash would."""
        process = self.processes.pop(f"peer-{org.name}")
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def _create_channel(self) -> None:
        admin_tls = self.orderer_dir / "users" / "Admin@example.com" / "tls"
        self._run("osnadmin", "channel", "join", "--channelID", CHANNEL, "--config-block",
                  str(self.base / "channel.block"), "-o", f"127.0.0.1:{self.orderer_admin_port}",
                  "--ca-file", str(self.orderer_tls_ca), "--client-cert", str(admin_tls / "client.crt"),
                  "--client-key", str(admin_tls / "client.key"), env=self._env())
        for org in self.orgs:
            self._retry(lambda org=org: self._run("peer", "channel", "join", "-b", str(self.base / "channel.block"),
                                                  env=self.admin_env(org)))

    def _retry(self, action, attempts: int = 40, pause: float = 0.5):
        for attempt in range(attempts):
            try:
                return action()
            except RuntimeError:
                if attempt == attempts - 1:
                    raise
                time.sleep(pause)
        return None

    def _package(self, org: Org, label: str, port: int) -> Path:
        """The org's ccaas package: where its own chaincode server listens, and TLS. Peer and
        chaincode server authenticate each other (the server's certificate from our own
        chaincode CA, and the client certificate the peer presents)."""
        tls = self.chaincode_tls
        connection = {"address": f"127.0.0.1:{port}", "dial_timeout": "10s",
                      "tls_required": True, "client_auth_required": True,
                      "root_cert": (tls / "ca.crt").read_text(), "client_cert": (tls / "client.crt").read_text(),
                      "client_key": (tls / "client.key").read_text()}
        code = io.BytesIO()
        with tarfile.open(fileobj=code, mode="w:gz") as tar:
            _add_bytes(tar, "connection.json", json.dumps(connection).encode())
        package = self.base / f"{label}-ccaas-{org.name}.tgz"
        with tarfile.open(package, mode="w:gz") as tar:
            _add_bytes(tar, "metadata.json", json.dumps({"type": "ccaas", "label": label}).encode())
            _add_bytes(tar, "code.tar.gz", code.getvalue())
        return package

    def _deploy_chaincode(self) -> None:
        self.chaincode_tls = issue_chaincode_tls(self.base / "chaincode-tls")
        self.package_ids = self.deploy_chaincode(
            CHAINCODE, build_chaincode(), ports={org.name: org.chaincode_server_port for org in self.orgs})

    def deploy_chaincode(self, name: str, binary: Path, *, sequence: int = 1,
                         ports: dict[str, int] | None = None) -> dict[str, str]:
        """Each org runs its own chaincode server, as each institution would, and installs a
        package naming it; the orgs approve one definition with their own package ids, and it
        is committed. A later ``sequence`` of the same name upgrades the chaincode: the peers
        switch to the new servers, the world state stays. Returns org name -> package id."""
        label = "lineage_1" if name == CHAINCODE and sequence == 1 else f"{name}_{sequence}"
        ports = ports or dict(zip([org.name for org in self.orgs], free_ports(len(self.orgs)), strict=True))
        packages, package_ids = {}, {}
        for org in self.orgs:
            packages[org.name] = package = self._package(org, label, ports[org.name])
            package_ids[org.name] = package_id = f"{label}:" + hashlib.sha256(package.read_bytes()).hexdigest()
            server = "chaincode-" + org.name if label == "lineage_1" else f"chaincode-{label}-{org.name}"
            chaincode = self._spawn(server, [str(binary)], {
                **os.environ, "CHAINCODE_ID": package_id,
                "CHAINCODE_SERVER_ADDRESS": f"127.0.0.1:{ports[org.name]}",
                "CHAINCODE_TLS_CERT_FILE": str(self.chaincode_tls / "server.crt"),
                "CHAINCODE_TLS_KEY_FILE": str(self.chaincode_tls / "server.key"),
                "CHAINCODE_TLS_CLIENT_CA_FILE": str(self.chaincode_tls / "ca.crt"),
                # A transaction's state calls run one after the other, so more threads buy the
                # chaincode nothing; on one, a message from the peer wakes no other OS thread.
                # That saved about a third of its CPU on the 2-core test machine.
                "GOMAXPROCS": os.environ.get("LINEAGE_LEDGER_CHAINCODE_GOMAXPROCS", "1")})
            wait_for_port(ports[org.name], chaincode, self.base / "logs" / f"{server}.log")
        orderer = ["-o", f"127.0.0.1:{self.orderer_port}", "--tls", "--cafile", str(self.orderer_tls_ca)]
        definition = ["--channelID", CHANNEL, "--name", name, "--version", f"{sequence}.0",
                      "--sequence", str(sequence)]
        if self.signature_policy:
            definition += ["--signature-policy", self.signature_policy]
        for org in self.orgs:
            self._run("peer", "lifecycle", "chaincode", "install", str(packages[org.name]), env=self.admin_env(org))
        for org in self.orgs:
            self._retry(lambda org=org: self._run("peer", "lifecycle", "chaincode", "approveformyorg", *orderer,
                                                  *definition, "--package-id", package_ids[org.name],
                                                  env=self.admin_env(org)))
        peers: list[str] = []
        for org in self.orgs:
            peers += ["--peerAddresses", org.address, "--tlsRootCertFiles", str(org.tls_ca)]
        self._retry(lambda: self._run("peer", "lifecycle", "chaincode", "commit", *orderer, *definition, *peers,
                                      env=self.admin_env(self.orgs[0])))
        for org in self.orgs:
            self.wait_until_endorsing(org, chaincode=name)
        return package_ids

    def wait_until_endorsing(self, org: Org, timeout: float = 90, *, chaincode: str = CHAINCODE) -> None:
        """Until gossip has told ``org``'s gateway about the other orgs' peers, it cannot
        gather the endorsements the policy asks for; wait for a proposal to be endorsed."""
        from lineage_ledger.backends.fabric._gateway import GatewayCallError, GatewayClient, Signer

        msp = org.user_msp("Admin")
        signer = Signer(org.msp_id, (msp / "signcerts" / f"Admin@{org.domain}-cert.pem").read_bytes(),
                        (msp / "keystore" / "priv_sk").read_bytes())
        client = GatewayClient(org.address, org.tls_ca.read_bytes(), signer, CHANNEL, chaincode, timeout=10)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    client.endorse("lineage:WhoAmI")  # endorsed, never submitted
                    return
                except GatewayCallError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.3)
        finally:
            client.close()

    # -- identities and connection profiles -------------------------------------------------
    def profile_url(self, name: str, org: Org, certificate: Path, key: Path, ledger: str, **extra: object) -> str:
        """A connection profile's URL; ``extra`` adds or replaces fields (``endorsers``, ...)."""
        profile = {"endpoint": org.address, "tls_ca": str(org.tls_ca), "msp_id": org.msp_id,
                   "certificate": str(certificate), "private_key": str(key), "channel": CHANNEL,
                   "chaincode": CHAINCODE, "ledger": ledger, "timeout": 30, **extra}
        path = self.base / "profiles" / f"{name}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(profile, indent=1))
        return f"fabric://{path}"

    def cryptogen_url(self, org: Org, user: str, ledger: str) -> str:
        """A profile for a user cryptogen made (``Admin`` is the MSP admin, ``User1`` a plain client)."""
        msp = org.user_msp(user)
        certificate = msp / "signcerts" / f"{user}@{org.domain}-cert.pem"
        return self.profile_url(f"{user}-{org.name}", org, certificate, msp / "keystore" / "priv_sk", ledger)

    def client_url(self, org: Org, name: str, role: str | None, ledger: str, **extra: object) -> str:
        """A client enrolled by the org's CA with ``lineage.role`` = role (none if None)."""
        certificate, key = issue_client_certificate(org, name, role, self.base / "clients")
        return self.profile_url(f"{name}-{org.name}", org, certificate, key, ledger, **extra)

    def endorsers(self) -> dict[str, str]:
        """The profile field that pins each member org's root CA for endorsed answers."""
        return {org.msp_id: str(org.ca_cert) for org in self.orgs}

    # -- teardown ---------------------------------------------------------------------------
    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        self.processes.clear()


def _die_with_parent() -> None:
    """In the child: if the test process dies without its teardown (kill -9), so do we."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def issue_client_certificate(org: Org, name: str, role: str | None, directory: Path) -> tuple[Path, Path]:
    """Sign a client certificate with the org's CA, as Fabric CA would on enrolment.

    The role travels in the attribute extension Fabric CA writes (OID 1.2.3.4.5.6.7.8.1, JSON
    ``{"attrs": {...}}``), which the chaincode reads through Fabric's client identity library.
    """
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_cert = x509.load_pem_x509_certificate(org.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(org.ca_key.read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    # Fabric's MSP checks the chain as of the certificate's NotBefore, and cryptogen rounds
    # its CA's NotBefore to the minute: never start before the CA does.
    not_before = max(ca_cert.not_valid_before_utc, now - datetime.timedelta(minutes=1))
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "client"),
                         x509.NameAttribute(NameOID.COMMON_NAME, f"{name}@{org.domain}")])
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
                              critical=False))
    if role is not None:
        attrs = json.dumps({"attrs": {"lineage.role": role}}).encode()
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.3.4.5.6.7.8.1"), attrs), critical=False)
    certificate = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{name}-{org.name}-cert.pem", directory / f"{name}-{org.name}-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def issue_chaincode_tls(directory: Path) -> Path:
    """A CA, the chaincode server's certificate (127.0.0.1, localhost) and the client
    certificate the peers present to it, as PEM files in ``directory``."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    directory.mkdir(parents=True, exist_ok=True)

    def write(name: str, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        (directory / f"{name}.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        (directory / f"{name}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))

    def build(subject: str, key, issuer: x509.Name, *, ca: bool) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lineage chaincode TLS CA")])
    ca = build("lineage chaincode TLS CA", ca_key, ca_name, ca=True).sign(ca_key, hashes.SHA256())
    write("ca", ca, ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (build("chaincode.lineage", server_key, ca_name, ca=False)
              .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                          x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                             critical=False)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .sign(ca_key, hashes.SHA256()))
    write("server", server, server_key)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = (build("peer.lineage", client_key, ca_name, ca=False)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
              .sign(ca_key, hashes.SHA256()))
    write("client", client, client_key)
    return directory
