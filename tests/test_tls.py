"""
TLS on both legs: clients reach wslb with C{wss://} through an C{ssl:}
endpoint, and wslb reaches C{"tls": true} backends with C{wss://}, verifying
their certificates (chain and host name) against C{--backend-ca}.

Every certificate is made by the test, by a throwaway authority.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from helpers import bufferedBytes, connectClient, waitUntil
from tls_helpers import (
    CertificateAuthority,
    RunningTLSBackend,
    connectTLSClient,
    startTLSBackend,
    tcpTransport,
)
from twisted.logger import globalLogPublisher

from wslb_twisted.backends import Backend
from wslb_twisted.config import ConfigError, Settings, loadSettings
from wslb_twisted.workers import settingsFromJSON, settingsToJSON

MEBIBYTE = 1024 * 1024


@pytest.fixture
def authority() -> CertificateAuthority:
    return CertificateAuthority.create()


@pytest.fixture
def caFile(authority: CertificateAuthority, tmp_path: Any) -> str:
    path = tmp_path / "backend-ca.pem"
    path.write_bytes(authority.pem)
    return str(path)


@pytest.fixture
def sslPort(authority: CertificateAuthority, tmp_path: Any) -> str:
    """
    An C{ssl:} endpoint string for the load balancer's client port, with a
    certificate for localhost and 127.0.0.1.
    """
    key, certificate = authority.issue("localhost", "127.0.0.1").write(tmp_path, "lb")
    return f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={certificate}"


@pytest_twisted.async_yield_fixture
async def startTLS() -> AsyncIterator[Any]:
    """
    A function starting C{wss} test backends, all stopped afterwards.
    """
    started: list[RunningTLSBackend] = []

    def start(name: str, certificate: Any, host: str = "localhost") -> Any:
        backend = startTLSBackend(name, certificate, host)
        started.append(backend)
        return backend

    yield start
    for backend in started:
        await backend.stop()


class ConnectFailures:
    """
    The C{backend_connect_failed} events logged while it is in use.
    """

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("event") == "backend_connect_failed":
            self.reasons.append(event["reason"])

    def __enter__(self) -> ConnectFailures:
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc: object) -> None:
        globalLogPublisher.removeObserver(self)


async def refusedStatus(client: Any) -> str | None:
    with pytest.raises(ConnectionError):
        await client.opened
    return client.statusLine  # type: ignore[no-any-return]


# Clients over TLS


@pytest_twisted.ensureDeferred
async def test_sslEndpointServesWss(backends, startLB, sslPort, authority):
    """
    With an C{ssl:} client port, clients connect with C{wss://} (verifying
    the load balancer's certificate) and their backend is told the client
    came over https.
    """
    lb = await startLB(backends[:1], port=sslPort)
    client = connectTLSClient(lb.port, authority.pem, path="/quotes?x=1")
    protocol = await client.opened
    protocol.sendMessage(b"hello over wss")
    assert await client.messages.get() == (b"hello over wss", False)
    (request,) = backends[0].factory.requests
    assert request.headers["x-forwarded-proto"] == "https"
    assert backends[0].factory.uris == ["/quotes?x=1"]


@pytest_twisted.ensureDeferred
async def test_plainClientOnSslPortGetsNoWebSocket(backends, startLB, sslPort):
    """
    A client speaking plain C{ws://} to the C{ssl:} port gets no WebSocket,
    and no backend hears of it.
    """
    lb = await startLB(backends[:1], port=sslPort)
    client = connectClient(lb.port)
    with pytest.raises(ConnectionError):
        await client.opened
    assert backends[0].factory.requests == []


# Backends over TLS


@pytest_twisted.ensureDeferred
async def test_wssBackendVerifiedAgainstBackendCA(startLB, startTLS, authority, caFile):
    """
    A C{"tls": true} backend is reached with C{wss://}: its certificate is
    checked against the C{--backend-ca} authorities, and its handshake names
    it by the configured host and port.
    """
    backend = startTLS("backend-1", authority.issue("localhost"))
    lb = await startLB([backend], backendCA=caFile)
    client = connectClient(lb.port, protocols=["quotes.v2"])
    protocol = await client.opened
    assert client.response.protocol == "quotes.v2"
    protocol.sendMessage(b"hello backend")
    assert await client.messages.get() == (b"hello backend", False)
    (request,) = backend.factory.requests
    assert request.headers["host"] == f"localhost:{backend.portNumber}"
    assert request.headers["x-forwarded-proto"] == "http"
    (session,) = lb.service.relay.sessions
    assert session.leg.transport.getPeerCertificate() is not None


@pytest_twisted.ensureDeferred
async def test_wssBackendByIPAddress(startLB, startTLS, authority, caFile):
    """
    A backend configured by IP address is verified against the IP address
    entries of its certificate.
    """
    backend = startTLS("backend-1", authority.issue("127.0.0.1"), host="127.0.0.1")
    lb = await startLB([backend], backendCA=caFile)
    client = connectClient(lb.port)
    await client.opened
    assert len(backend.factory.requests) == 1


@pytest_twisted.ensureDeferred
async def test_backendCertificateForAnotherHostIsRefused(
    startLB, startTLS, authority, caFile
):
    """
    A backend whose certificate, though signed by a trusted authority, is for
    another host name fails the attempt like a refused connection: it is
    counted and logged, and with no other backend the client gets 503.
    """
    backend = startTLS("backend-1", authority.issue("other.example"))
    lb = await startLB([backend], backendCA=caFile)
    with ConnectFailures() as failures:
        client = connectClient(lb.port)
        assert "503" in (await refusedStatus(client) or "")
    assert backend.factory.requests == []
    assert lb.backend("backend-1").connectFailures == 1
    assert lb.backend("backend-1").activeConnections == 0
    assert lb.service.relay.refusals == {"backends_failed": 1}
    assert failures.reasons == ["TLS: certificate does not match the host name"]


@pytest_twisted.ensureDeferred
async def test_clientsLandOnTheBackendWhoseCertificateVerifies(
    startLB, startTLS, authority, caFile
):
    """
    A backend with a certificate for the wrong host name is skipped: clients
    land on the next backend.
    """
    wrong = startTLS("backend-1", authority.issue("other.example"))
    right = startTLS("backend-2", authority.issue("localhost"))
    lb = await startLB([wrong, right], backendCA=caFile)
    for _ in range(2):
        client = connectClient(lb.port)
        await client.opened
    assert len(right.factory.requests) == 2
    assert wrong.factory.requests == []
    assert lb.backend("backend-1").connectFailures >= 1
    assert lb.backend("backend-2").connectFailures == 0


@pytest_twisted.ensureDeferred
async def test_backendCertificateFromAnotherAuthorityIsRefused(
    startLB, startTLS, caFile
):
    """
    A backend whose certificate names the right host but is signed by an
    authority not in C{--backend-ca} is refused.
    """
    stranger = CertificateAuthority.create("some other CA")
    backend = startTLS("backend-1", stranger.issue("localhost"))
    lb = await startLB([backend], backendCA=caFile)
    with ConnectFailures() as failures:
        client = connectClient(lb.port)
        assert "503" in (await refusedStatus(client) or "")
    assert lb.backend("backend-1").connectFailures == 1
    (reason,) = failures.reasons
    assert reason.startswith("TLS: ")
    assert "certificate verify failed" in reason


@pytest_twisted.ensureDeferred
async def test_withoutBackendCAThePlatformTrustDecides(startLB, startTLS, authority):
    """
    Without C{--backend-ca}, backends are verified against the platform's
    trusted authorities, which do not include a test authority: verification
    is never off.
    """
    backend = startTLS("backend-1", authority.issue("localhost"))
    lb = await startLB([backend])
    client = connectClient(lb.port)
    assert "503" in (await refusedStatus(client) or "")
    assert lb.backend("backend-1").connectFailures == 1


@pytest_twisted.ensureDeferred
async def test_backendCAFileMayHoldSeveralAuthorities(
    startLB, startTLS, authority, tmp_path
):
    """
    A C{--backend-ca} bundle trusts every authority in it.
    """
    second = CertificateAuthority.create("second CA")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(authority.pem + second.pem)
    first = startTLS("backend-1", authority.issue("localhost"))
    other = startTLS("backend-2", second.issue("localhost"))
    lb = await startLB([first, other], backendCA=str(bundle))
    for _ in range(2):
        client = connectClient(lb.port)
        await client.opened
    assert len(first.factory.requests) == 1
    assert len(other.factory.requests) == 1


# Both legs over TLS: the frame-level data path


@pytest_twisted.ensureDeferred
async def test_wssFromEndToEndAsConfigured(startTLS, authority, caFile, tmp_path):
    """
    Configured as an operator would (an C{ssl:} port, C{"tls": true} in the
    backend list, C{--backend-ca}), wslb relays text and a 1 MiB binary
    message both ways between a C{wss} client and a C{wss} backend, through
    TLS on both legs, and the backend's close code reaches the client.
    """
    from wslb_twisted.service import makeService

    backend = startTLS("backend-1", authority.issue("localhost"))
    key, certificate = authority.issue("localhost").write(tmp_path, "lb")
    settings = loadSettings(
        {
            "port": f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={certificate}",
            "monitor-port": "tcp:0:interface=127.0.0.1",
            "backends": json.dumps(
                [
                    {
                        "host": "localhost",
                        "port": backend.portNumber,
                        "healthPort": backend.healthPortNumber,
                        "tls": True,
                    }
                ]
            ),
            "backend-ca": caFile,
        },
        {},
        cwd=str(tmp_path),
    )
    service = makeService(settings)
    service.privilegedStartService()
    service.startService()
    try:
        await service.checker.whenFirstRoundDone()
        port = service.clientListener.port.getHost().port
        client = connectTLSClient(port, authority.pem)
        protocol = await client.opened
        (session,) = service.relay.sessions
        # Each leg's data path writes through its TLS layer.
        assert session.pipe.downstream.write == session.client.transport.write
        assert session.pipe.upstream.write == session.leg.transport.write

        protocol.sendMessage("grüße".encode())
        assert await client.messages.get() == ("grüße".encode(), False)
        large = bytes(range(256)) * (MEBIBYTE // 256)
        protocol.sendMessage(large, True)
        assert await client.messages.get() == (large, True)
        assert backend.factory.received == [("grüße".encode(), False), (large, True)]

        protocol.sendMessage(b"close:4001:done here")
        assert await client.closed == (True, 4001, "done here")
        wasClean, _, _ = await backend.factory.closes.get()
        assert wasClean
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_clientCloseOverTLSEndsBothConnectionsPromptly(
    startLB, startTLS, authority, caFile, sslPort
):
    """
    A C{wss} client's close code reaches the C{wss} backend, and the load
    balancer then ends the client's TLS connection at once rather than when
    the closing handshake's timeout cuts it.
    """
    from twisted.internet import reactor

    backend = startTLS("backend-1", authority.issue("localhost"))
    lb = await startLB([backend], backendCA=caFile, port=sslPort)
    client = connectTLSClient(lb.port, authority.pem)
    protocol = await client.opened
    started = reactor.seconds()
    protocol.sendClose(3003, "bye")
    assert await backend.factory.closes.get() == (True, 3003, "bye")
    assert (await client.closed)[:2] == (True, 3003)
    await waitUntil(lambda: not lb.service.relay.connections)
    # The data path's closing timeout is 5 s.
    assert reactor.seconds() - started < 3


@pytest_twisted.ensureDeferred
async def test_wssClientThatNeverEndsTLSIsCut(
    startLB, backends, authority, sslPort, monkeypatch
):
    """
    Ending a TLS connection waits for the peer's TLS close: a client that
    stops reading once it has sent its close frame does not hold its
    connection to the load balancer open for ever.
    """
    from wslb_twisted import datapath

    monkeypatch.setattr(datapath, "CLOSE_TIMEOUT", 0.5)
    lb = await startLB(backends[:1], port=sslPort)
    client = connectTLSClient(lb.port, authority.pem)
    client.setProtocolOptions(closeHandshakeTimeout=0)
    protocol = await client.opened
    protocol.sendClose(1000)
    tcpTransport(protocol.transport).pauseProducing()
    await backends[0].factory.closes.get()
    await waitUntil(lambda: not lb.service.relay.connections, timeout=5)
    assert not lb.service.relay.sessions


MESSAGE_SIZE = 64 * 1024
MESSAGES = 1024  # 64 MiB in all: more than the kernel's socket buffers hold


def heldByTLS(transport: Any) -> int:
    """
    Bytes a TLS transport holds before they reach its TCP connection: writes
    it aggregates, and writes waiting for the handshake.
    """
    aggregated = sum(len(chunk) for chunk in transport._aggregator._buffer)
    return aggregated + sum(len(chunk) for chunk in transport._appSendBuffer)


def heldBySession(clientSide: Any, backendSide: Any) -> int:
    """
    Bytes the load balancer holds for one session, in user space: in both
    legs' TLS layers and TCP transports.
    """
    return (
        bufferedBytes(tcpTransport(clientSide))
        + bufferedBytes(tcpTransport(backendSide))
        + heldByTLS(clientSide)
        + heldByTLS(backendSide)
    )


@pytest_twisted.ensureDeferred
async def test_stalledWssClientPausesWssBackend(
    startLB, startTLS, authority, caFile, sslPort
):
    """
    Over TLS on both legs, a client that stops reading makes the load
    balancer stop reading from its backend, its own buffers stay small, and
    when the client reads again every message arrives, in order.
    """
    from twisted.internet import reactor

    backend = startTLS("backend-1", authority.issue("localhost"))
    lb = await startLB([backend], backendCA=caFile, port=sslPort)
    client = connectTLSClient(lb.port, authority.pem)
    protocol = await client.opened
    tcpTransport(protocol.transport).pauseProducing()
    protocol.sendMessage(f"blast:{MESSAGES}:{MESSAGE_SIZE}".encode())
    server = await backend.factory.blasted

    (session,) = lb.service.relay.sessions
    clientSide, backendSide = session.client.transport, session.leg.transport
    limit = 512 * 1024

    def heldByLoadBalancer() -> int:
        return heldBySession(clientSide, backendSide)

    await waitUntil(
        lambda: (
            tcpTransport(backendSide) not in reactor.getReaders()
            or heldByLoadBalancer() > limit
        )
    )
    assert heldByLoadBalancer() < limit
    assert bufferedBytes(tcpTransport(server.transport)) > MESSAGES * MESSAGE_SIZE // 4

    tcpTransport(protocol.transport).resumeProducing()
    for n in range(MESSAGES):
        payload, isBinary = await client.messages.get()
        assert isBinary
        assert len(payload) == MESSAGE_SIZE
        assert payload[:4] == n.to_bytes(4, "big")


@pytest_twisted.ensureDeferred
async def test_stalledWssBackendPausesWssClient(
    startLB, startTLS, authority, caFile, sslPort
):
    """
    Over TLS on both legs, a backend that stops reading makes the load
    balancer stop reading from the client flooding it, and when the backend
    reads again every message arrives, in order.
    """
    from twisted.internet import reactor

    backend = startTLS("backend-1", authority.issue("localhost"))
    backend.factory.echo = False
    lb = await startLB([backend], backendCA=caFile, port=sslPort)
    client = connectTLSClient(lb.port, authority.pem)
    protocol = await client.opened
    server = await backend.factory.opened.get()
    tcpTransport(server.transport).pauseProducing()
    for n in range(MESSAGES):
        protocol.sendMessage(n.to_bytes(4, "big") * (MESSAGE_SIZE // 4), True)

    (session,) = lb.service.relay.sessions
    clientSide, backendSide = session.client.transport, session.leg.transport
    limit = 512 * 1024

    def heldByLoadBalancer() -> int:
        return heldBySession(clientSide, backendSide)

    await waitUntil(
        lambda: (
            tcpTransport(clientSide) not in reactor.getReaders()
            or heldByLoadBalancer() > limit
        )
    )
    assert heldByLoadBalancer() < limit

    tcpTransport(server.transport).resumeProducing()
    received = backend.factory.received
    await waitUntil(lambda: len(received) == MESSAGES, timeout=60)
    for n, (payload, isBinary) in enumerate(received):
        assert isBinary
        assert payload == n.to_bytes(4, "big") * (MESSAGE_SIZE // 4)


# Configuration


def test_backendCAMustHoldCertificates(tmp_path):
    """
    A C{--backend-ca} file that holds no PEM certificate is a configuration
    error naming the setting, not a failure at the first connection.
    """
    path = tmp_path / "not-a-ca.pem"
    path.write_text("just some text\n")
    with pytest.raises(ConfigError, match="--backend-ca=.* holds no PEM certificate"):
        loadSettings({"backend-ca": str(path)}, {}, cwd=str(tmp_path))


def test_brokenCertificateInBackendCA(tmp_path, authority):
    """
    A C{--backend-ca} certificate that cannot be parsed is a configuration
    error saying which one.
    """
    path = tmp_path / "broken.pem"
    broken = (
        b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n"
        b"-----END CERTIFICATE-----\n"
    )
    path.write_bytes(authority.pem + broken)
    with pytest.raises(ConfigError, match="certificate 2 cannot be parsed"):
        loadSettings({"backend-ca": str(path)}, {}, cwd=str(tmp_path))


def test_workersGetTheBackendTLSSettings(caFile):
    """
    Worker processes are given each backend's C{tls} and the C{--backend-ca}
    path.
    """
    settings = Settings(
        backends=[
            Backend(id="backend-1", host="localhost", port=3001, tls=True),
            Backend(id="backend-2", host="localhost", port=3002),
        ],
        backendCA=caFile,
    )
    decoded, _ = settingsFromJSON(settingsToJSON(settings))
    assert [b.tls for b in decoded.backends] == [True, False]
    assert decoded.backendCA == caFile
