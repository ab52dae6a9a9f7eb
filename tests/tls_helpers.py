"""
TLS for the tests: a throwaway certificate authority, certificates it signs
for 127.0.0.1 and localhost (or for any other name), test backends listening
with TLS, and C{wss} clients trusting that authority.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from helpers import (
    BackendServerFactory,
    HealthResource,
    RecordingClientFactory,
    RunningBackend,
)
from twisted.web.resource import Resource
from twisted.web.server import Site

from wslb_twisted.backends import Backend


def _name(commonName: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, commonName)])


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass
class CertificateAuthority:
    """
    A certificate authority made for one test run.

    @ivar key: its private key.
    @ivar certificate: its self-signed certificate.
    """

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def create(cls, commonName: str = "wslb test CA") -> CertificateAuthority:
        """
        Make a new authority with a fresh key.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(commonName))
            .issuer_name(_name(commonName))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
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
                True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, certificate)

    @property
    def pem(self) -> bytes:
        """
        The authority's certificate, PEM-encoded: what clients trust.
        """
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(self, *names: str) -> ServerCertificate:
        """
        Sign a server certificate for C{names}: host names, or IP addresses
        (which become IP address entries).

        @param names: what the certificate is valid for; the first is also
            its common name.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        alternatives: list[x509.GeneralName] = []
        for name in names:
            try:
                alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alternatives.append(x509.DNSName(name))
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(names[0]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(alternatives), False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return ServerCertificate(
            _pem(key), certificate.public_bytes(serialization.Encoding.PEM)
        )


@dataclass
class ServerCertificate:
    """
    A server's key and certificate, PEM-encoded.
    """

    keyPEM: bytes
    certificatePEM: bytes

    def serverOptions(self) -> Any:
        """
        Context factory for a TLS server presenting this certificate.
        """
        from twisted.internet.ssl import PrivateCertificate

        return PrivateCertificate.loadPEM(self.keyPEM + self.certificatePEM).options()

    def write(self, directory: Any, stem: str) -> tuple[str, str]:
        """
        Write the key and certificate as C{stem-key.pem} and
        C{stem-cert.pem} in C{directory}.

        @return: the key's path and the certificate's path.
        """
        keyPath = directory / f"{stem}-key.pem"
        certificatePath = directory / f"{stem}-cert.pem"
        keyPath.write_bytes(self.keyPEM)
        certificatePath.write_bytes(self.certificatePEM)
        return str(keyPath), str(certificatePath)


@dataclass
class RunningTLSBackend(RunningBackend):
    """
    A test backend speaking C{wss}, and the host name the load balancer is
    told to reach it by (its certificate may or may not match it).
    """

    host: str = "localhost"

    def spec(self, weight: int = 1) -> Backend:
        return Backend(
            id=self.name,
            host=self.host,
            port=self.portNumber,
            weight=weight,
            healthPort=self.healthPortNumber,
            tls=True,
        )


def startTLSBackend(
    name: str, certificate: ServerCertificate, host: str = "localhost"
) -> RunningTLSBackend:
    """
    Start a test backend speaking C{wss} on 127.0.0.1 with C{certificate};
    its health endpoint stays plain HTTP, as wslb checks it.

    @param host: the host name the load balancer is given for it.
    """
    from twisted.internet import reactor

    factory = BackendServerFactory(name)
    port = reactor.listenSSL(
        0, factory, certificate.serverOptions(), interface="127.0.0.1"
    )
    health = HealthResource(name)
    root = Resource()
    root.putChild(b"health", health)
    site = Site(root)
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]
    healthPort = reactor.listenTCP(0, site, interface="127.0.0.1")
    return RunningTLSBackend(name, factory, health, port, healthPort, host)


def connectTLSClient(
    port: int, caPEM: bytes, hostname: str = "localhost", path: str = "/", **kwargs: Any
) -> RecordingClientFactory:
    """
    Open a C{wss} client to 127.0.0.1:C{port}, verifying the server's
    certificate for C{hostname} against the authority C{caPEM}.
    """
    from twisted.internet import reactor
    from twisted.internet.ssl import Certificate, optionsForClientTLS

    factory = RecordingClientFactory(f"wss://{hostname}:{port}{path}", **kwargs)
    options = optionsForClientTLS(hostname, trustRoot=Certificate.loadPEM(caPEM))
    reactor.connectSSL("127.0.0.1", port, factory, options, timeout=10)
    return factory


def tcpTransport(transport: Any) -> Any:
    """
    The TCP connection under C{transport}: the one TLS runs over, or
    C{transport} itself when it is plain TCP.
    """
    from twisted.protocols.tls import TLSMemoryBIOProtocol

    if isinstance(transport, TLSMemoryBIOProtocol):
        return transport.transport
    return transport
