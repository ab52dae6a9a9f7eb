"""
TLS towards C{wss} backends: the certificates a backend is verified against,
and how a failed verification is told.

Serving C{wss} to clients needs nothing from this module: the client port is
an C{ssl:} endpoint string, which Twisted's endpoint parser turns into a TLS
listener.
"""

from __future__ import annotations

import re

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import (
    Certificate,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.python.failure import Failure

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)


def readCertificates(path: str) -> list[Certificate]:
    """
    Read the PEM certificates in a file, such as a CA bundle.

    @param path: the file.
    @return: every certificate in it, in order.
    @raise OSError: when the file cannot be read.
    @raise ValueError: when it holds no certificate, or one that cannot be
        parsed.
    """
    with open(path, "rb") as pemFile:
        blocks = _PEM_CERTIFICATE.findall(pemFile.read())
    if not blocks:
        raise ValueError("holds no PEM certificate")
    certificates = []
    for number, block in enumerate(blocks, 1):
        try:
            certificates.append(Certificate.loadPEM(block))
        except Exception:
            raise ValueError(f"certificate {number} cannot be parsed") from None
    return certificates


class BackendTLS:
    """
    How the load balancer opens TLS connections to C{wss} backends.

    Every backend's certificate must chain to one of the trusted authorities
    and name the backend's host (a DNS name or an IP address entry, checked by
    service-identity).  The trust root is built once, and the client TLS
    options (holding the OpenSSL context) once per host name.

    @ivar trustRoot: the authorities backends' certificates must chain to.
    """

    def __init__(self, caPath: str | None) -> None:
        """
        @param caPath: a PEM file of the trusted authorities' certificates, or
            C{None} for the platform's trust store.
        @raise ValueError: when C{caPath} holds no usable certificate.
        @raise OSError: when C{caPath} cannot be read.
        """
        self.trustRoot = (
            platformTrust()
            if caPath is None
            else trustRootFromCertificates(readCertificates(caPath))
        )
        self._creators: dict[str, IOpenSSLClientConnectionCreator] = {}

    def creatorFor(self, hostname: str) -> IOpenSSLClientConnectionCreator:
        """
        The TLS options for connecting to a backend by C{hostname}.

        @param hostname: the backend's host name or IP address, which its
            certificate must name (and which is sent as SNI if it is a name).
        @return: options for C{connectSSL} or L{TLSMemoryBIOFactory}.
        """
        creator = self._creators.get(hostname)
        if creator is None:
            creator = optionsForClientTLS(hostname, trustRoot=self.trustRoot)
            self._creators[hostname] = creator
        return creator


def describeTLSFailure(reason: Failure) -> str | None:
    """
    Say why a TLS connection failed, if it failed at the TLS layer.

    @param reason: what the connection was lost with.
    @return: e.g. C{"TLS: certificate does not match the host name"}, or
        C{None} when the failure is not a TLS one.
    """
    if reason.check(VerificationError):
        return "TLS: certificate does not match the host name"
    if reason.check(SSL.Error):
        errors = reason.value.args[0] if reason.value.args else []
        if isinstance(errors, list):
            details = [str(error[-1]) for error in errors if error and error[-1]]
            if details:
                return "TLS: " + ", ".join(details)
        return f"TLS: {reason.getErrorMessage() or 'handshake failed'}"
    return None
