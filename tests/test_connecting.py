"""
Connecting a client: skipping backends that fail, refusing with 503 when none
works, and answering plain HTTP with 426.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from helpers import connectClient, waitUntil
from twisted.internet.protocol import Factory, Protocol


async def _refused(client):
    with pytest.raises(ConnectionError):
        await client.opened
    return client.statusLine


@pytest_twisted.ensureDeferred
async def test_refusingBackendIsSkipped(backends, startLB):
    """
    A backend whose health endpoint passes but whose WebSocket port refuses
    connections is skipped: the client lands on the next backend, and the
    failure is counted.
    """
    dead = backends[0]
    await dead.port.stopListening()
    lb = await startLB(backends[:2])
    for _ in range(3):
        client = connectClient(lb.port)
        await client.opened
    assert len(backends[1].factory.requests) == 3
    assert lb.backend("backend-1").connectFailures >= 1
    assert lb.backend("backend-1").activeConnections == 0
    assert lb.backend("backend-2").activeConnections == 3


@pytest_twisted.ensureDeferred
async def test_backendFailingItsHandshakeIsSkipped(backends, startLB):
    """
    A backend that answers the WebSocket handshake with an HTTP error is
    skipped like one that refuses the connection.
    """
    backends[0].factory.refuseHandshake = True
    lb = await startLB(backends[:2])
    client = connectClient(lb.port)
    await client.opened
    assert len(backends[1].factory.requests) == 1
    assert lb.backend("backend-1").connectFailures == 1


@pytest_twisted.ensureDeferred
async def test_retriesAreBoundedByMaxRetries(backends, startLB):
    """
    With MAX_RETRIES=1, a client whose first two backends fail is refused with
    503 even though a third would work.
    """
    for backend in backends[:2]:
        backend.factory.refuseHandshake = True
    lb = await startLB(backends, maxRetries=1)
    client = connectClient(lb.port)
    assert "503" in await _refused(client)
    assert backends[2].factory.requests == []


@pytest_twisted.ensureDeferred
async def test_noHealthyBackendMeans503(backends, startLB):
    """
    When no backend passes its health check, a client's handshake is answered
    with HTTP 503, not an open-then-close.
    """
    for backend in backends:
        backend.health.code = 500
    lb = await startLB(backends)
    client = connectClient(lb.port)
    assert "503" in await _refused(client)
    assert lb.service.relay.refusals == {"no_healthy_backend": 1}


@pytest_twisted.ensureDeferred
async def test_allBackendsFailingMeans503(backends, startLB):
    """
    When every backend fails at connect, the client gets 503 and no backend
    keeps a connection counted.
    """
    for backend in backends:
        await backend.port.stopListening()
    lb = await startLB(backends)
    client = connectClient(lb.port)
    assert "503" in await _refused(client)
    assert [b.activeConnections for b in lb.service.pool] == [0, 0, 0]
    assert [b.connectFailures for b in lb.service.pool] == [1, 1, 1]
    assert lb.service.relay.refusals == {"backends_failed": 1}


class _Silent(Protocol):
    """
    Accepts a TCP connection and never answers.
    """


@pytest_twisted.ensureDeferred
async def test_silentBackendTimesOutThen503(backends, startLB):
    """
    A backend that accepts TCP but never answers the WebSocket handshake is
    given up after the connect timeout, so the client gets 503 within a
    bounded time.
    """
    from twisted.internet import reactor

    silent = reactor.listenTCP(0, Factory.forProtocol(_Silent), interface="127.0.0.1")
    try:
        spec = backends[0].spec()
        spec.port = silent.getHost().port
        lb = await startLB([spec], connectTimeout=0.5)
        started = reactor.seconds()
        client = connectClient(lb.port)
        assert "503" in await _refused(client)
        elapsed = reactor.seconds() - started
        assert 0.5 <= elapsed < 5
        assert lb.backend("backend-1").activeConnections == 0
    finally:
        await silent.stopListening()


@pytest_twisted.ensureDeferred
async def test_plainHttpGets426(backends, startLB):
    """
    A plain HTTP request on the client port gets 426 Upgrade Required.
    """
    import treq

    lb = await startLB(backends[:1])
    response = await treq.get(f"http://127.0.0.1:{lb.port}/", persistent=False)
    assert response.code == 426
    await treq.content(response)


@pytest_twisted.ensureDeferred
async def test_clientLeavingWhileConnectingReleasesTheBackend(backends, startLB):
    """
    A client that disconnects while its backend is still being connected
    leaves no connection counted and no backend leg open.
    """
    from twisted.internet import reactor

    silent = reactor.listenTCP(0, Factory.forProtocol(_Silent), interface="127.0.0.1")
    try:
        spec = backends[0].spec()
        spec.port = silent.getHost().port
        lb = await startLB([spec], connectTimeout=30)
        client = connectClient(lb.port)
        await waitUntil(lambda: lb.service.relay.sessions and _sessionLeg(lb))
        client.connection.transport.abortConnection()
        await _refused(client)
        await client.closed
        await waitUntil(lambda: not lb.service.relay.connections)
        assert lb.backend("backend-1").activeConnections == 0
    finally:
        await silent.stopListening()


def _sessionLeg(lb):
    return next(iter(lb.service.relay.sessions)).leg
