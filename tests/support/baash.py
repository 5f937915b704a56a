"""Start and stop a real BAASH service (``lineage-ledger baash serve``) for the tests."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def require_mpi() -> None:
    try:
        import mpi4py  # noqa: F401
    except ModuleNotFoundError:
        pytest.skip("mpi4py is not installed: pip install 'lineage-ledger[mpi]' (make install does)")
    if not os.path.exists(os.path.join(os.path.dirname(sys.executable), "mpiexec")) and not shutil.which("mpiexec"):
        pytest.skip("no mpiexec: pip install 'lineage-ledger[mpi]' brings MPICH's")


class BaashService:
    """``lineage-ledger baash serve`` on a Unix socket in the test's directory."""

    def __init__(self, workdir: Path, ranks: int = 4, *extra: str, socket: Path | None = None,
                 launcher: tuple[str, ...] = ()) -> None:
        """``launcher``: a command the service runs under (``prlimit --nofile=1024:1024 --``)."""
        require_mpi()
        self.workdir = workdir
        self.storage = workdir / "shared-storage"
        self.socket = socket or workdir / "run" / "baash.sock"
        self.ready = workdir / "ready.json"
        self.ready.unlink(missing_ok=True)  # a service restarted on the same storage writes it anew
        self.log = open(workdir / "service.log", "w")  # noqa: SIM115 - closed in stop()
        script = Path(sys.executable).parent / "lineage-ledger"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
        self.proc = subprocess.Popen(
            [*launcher, str(script), "baash", "serve", "--ranks", str(ranks), "--storage", str(self.storage),
             "--socket", str(self.socket), "--ready-file", str(self.ready), *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + 120
        while not self.ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the BAASH service did not start:\n" + self.output())
            time.sleep(0.05)
        self.info = json.loads(self.ready.read_text())
        self.url = self.info["url"]

    def output(self) -> str:
        if not self.log.closed:  # stop() closes it, also when the service did not start
            self.log.flush()
        return (self.workdir / "service.log").read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()



class Pki:
    """Real X.509 material for the TLS listener, made with ``cryptography`` (P-256 keys):
    a CA, the service's certificate (localhost, 127.0.0.1), and client certificates whose
    OUs name their roles. Files are written 0600 under ``directory``."""

    def __init__(self, directory: Path, name: str = "lineage test CA") -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self._x509, self._hashes, self._ec, self._oid = x509, hashes, ec, NameOID
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.ca = self._write(f"{directory.name}-ca.pem", self._pem(self.cert))

    @staticmethod
    def _pem(cert) -> bytes:
        from cryptography.hazmat.primitives.serialization import Encoding

        return cert.public_bytes(Encoding.PEM)

    def _write(self, name: str, data: bytes) -> Path:
        path = self.directory / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        return path

    def issue(self, name: str, *, units: tuple[str, ...] = (), server: bool = False,
              days: tuple[int, int] = (-1, 30)) -> tuple[Path, Path]:
        """(certificate, key) for common name ``name`` with these OUs, valid for ``days``
        (from, to) around now; ``server``: for localhost and 127.0.0.1."""
        from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

        x509, oid = self._x509, self._oid
        key = self._ec.generate_private_key(self._ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(oid.COMMON_NAME, name),
                             *(x509.NameAttribute(oid.ORGANIZATIONAL_UNIT_NAME, unit) for unit in units)])
        now = datetime.datetime.now(datetime.timezone.utc)
        usage = x509.oid.ExtendedKeyUsageOID.SERVER_AUTH if server else x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(self.name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now + datetime.timedelta(days=days[0]))
                   .not_valid_after(now + datetime.timedelta(days=days[1]))
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if server:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, self._hashes.SHA256())
        key_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        return self._write(f"{name}.pem", self._pem(cert)), self._write(f"{name}.key", key_pem)


def tls_url(endpoint: str, ca: Path, cert: Path, key: Path) -> str:
    """``baash+tls://`` for a service's TLS endpoint and a client's files."""
    return f"baash+tls://{endpoint}?ca={ca}&cert={cert}&key={key}"


def job_back(backend, generation: int, timeout: float = 120, said=None) -> dict:
    """The service's status once its MPI job runs again at a later generation than
    ``generation`` (after a rank was killed); AssertionError after ``timeout`` seconds,
    with ``said()`` (the service's output, say) or the last status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = backend.status()
        if status["job_up"] and status["job"]["generation"] > generation:
            return status
        time.sleep(0.1)
    raise AssertionError(f"the MPI job did not come back: {said() if said else backend.status()}")
