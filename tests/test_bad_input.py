"""
Bad input from one client closes that client with the right code and leaves
the others alone.
"""

from __future__ import annotations

import base64
import os

import pytest_twisted
from helpers import connectClient, waitUntil

from wslb_twisted.backends import Backend
from wslb_twisted.relay import MAX_REQUEST_SIZE


async def _openPair(lb):
    good = connectClient(lb.port)
    bad = connectClient(lb.port)
    return await good.opened, good, await bad.opened, bad


async def _stillWorks(protocol, client):
    protocol.sendMessage(b"are you there?")
    assert await client.messages.get() == (b"are you there?", False)


@pytest_twisted.ensureDeferred
async def test_oversizeMessageCloses1009(backends, startLB):
    """
    A message larger than the limit closes that client with 1009 (message
    too big) and its backend connection with 1001; another client goes on.
    """
    lb = await startLB(backends[:1], maxMessageSize=64 * 1024)
    goodProtocol, good, badProtocol, bad = await _openPair(lb)
    badProtocol.sendMessage(b"x" * (64 * 1024 + 1), True)
    wasClean, code, _ = await bad.closed
    assert code == 1009
    assert (await backends[0].factory.closes.get())[1] == 1001
    await _stillWorks(goodProtocol, good)
    assert backends[0].factory.received == [(b"are you there?", False)]


@pytest_twisted.ensureDeferred
async def test_invalidUtf8Closes1007(backends, startLB):
    """
    A text message that is not valid UTF-8 closes that client with 1007
    (invalid payload): the load balancer passes frames through unvalidated,
    and the backend's 1007 reaches the client.  Another client goes on.
    """
    lb = await startLB(backends[:1])
    goodProtocol, good, badProtocol, bad = await _openPair(lb)
    badProtocol.sendMessage(b"\xff\xfe not utf-8", False)
    wasClean, code, _ = await bad.closed
    assert code == 1007
    await _stillWorks(goodProtocol, good)


@pytest_twisted.ensureDeferred
async def test_unmaskedFrameCloses1002(backends, startLB):
    """
    A client frame without a mask (a protocol error) closes that client with
    1002; another client goes on.
    """
    lb = await startLB(backends[:1])
    goodProtocol, good, badProtocol, bad = await _openPair(lb)
    # A final text frame "hi" without the mask bit.
    badProtocol.transport.write(b"\x81\x02hi")
    wasClean, code, _ = await bad.closed
    assert code == 1002
    await _stillWorks(goodProtocol, good)


@pytest_twisted.ensureDeferred
async def test_garbageHandshakeIsRefused(backends, startLB):
    """
    Random bytes instead of an HTTP handshake get an HTTP error answer and
    the connection is closed; other clients are unaffected.
    """
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.protocol import ClientFactory, Protocol

    lb = await startLB(backends[:1])
    good = connectClient(lb.port)
    goodProtocol = await good.opened

    class Garbage(Protocol):
        def connectionMade(self):
            self.received = b""
            self.transport.write(b"\x00\x01 not http at all\r\n\r\n")

        def dataReceived(self, data):
            self.received += data

        def connectionLost(self, reason):
            done.callback(self.received)

    done: Deferred[bytes] = Deferred()
    factory = ClientFactory.forProtocol(Garbage)
    reactor.connectTCP("127.0.0.1", lb.port, factory)
    answer = await done
    assert answer.startswith(b"HTTP/1.1 4")
    await _stillWorks(goodProtocol, good)


def _request(extra: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


def _rawClient(port: int, data: bytes):
    """
    Connect, write C{data}, and collect the answer.

    @return: the protocol (its C{transport} to write more) and a Deferred
        firing with everything received once the connection is closed.
    """
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.protocol import ClientFactory, Protocol

    done: Deferred[bytes] = Deferred()
    connected: Deferred[Protocol] = Deferred()

    class Raw(Protocol):
        received = b""

        def connectionMade(self):
            self.transport.write(data)
            connected.callback(self)

        def dataReceived(self, chunk):
            self.received += chunk

        def connectionLost(self, reason):
            done.callback(self.received)

    reactor.connectTCP("127.0.0.1", port, ClientFactory.forProtocol(Raw))
    return connected, done


async def _silentBackend(startLB, healthy):
    """
    A load balancer whose only backend accepts TCP connections but never
    answers the WebSocket handshake (its health port is C{healthy}'s).

    @return: the load balancer, the connections the backend accepted, and
        its listening port.
    """
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol

    accepted = []

    class Silent(Protocol):
        def connectionMade(self):
            accepted.append(self)

    port = reactor.listenTCP(0, Factory.forProtocol(Silent), interface="127.0.0.1")
    spec = Backend(
        id="silent",
        host="127.0.0.1",
        port=port.getHost().port,
        healthPort=healthy.healthPortNumber,
    )
    lb = await startLB([spec], connectTimeout=10.0)
    return lb, accepted, port


@pytest_twisted.ensureDeferred
async def test_oversizeRequestIs431(backends, startLB):
    """
    An opening handshake request larger than L{MAX_REQUEST_SIZE} is answered
    with HTTP 431 as soon as that much has arrived, without waiting for its
    end or trying a backend.
    """
    lb = await startLB(backends[:1])
    big = _request()[:-2] + b"X-Big: " + b"a" * MAX_REQUEST_SIZE
    connected, done = _rawClient(lb.port, big)
    answer = await done
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert backends[0].factory.requests == []


@pytest_twisted.ensureDeferred
async def test_requestSentWhileWaitingForABackendIsNotAnotherClient(
    backends, startLB
):
    """
    Bytes that look like another request, sent while the first waits for
    its backend, are not taken for a second handshake: the client still has
    one session and one backend connection.
    """
    lb, accepted, port = await _silentBackend(startLB, backends[0])
    try:
        connected, done = _rawClient(lb.port, _request())
        protocol = await connected
        await waitUntil(lambda: len(accepted) == 1)
        (session,) = lb.service.relay.sessions
        second = _request()
        protocol.transport.write(second)
        await waitUntil(lambda: session.client.data == second)
        assert len(accepted) == 1
        assert lb.service.relay.sessions == {session}
    finally:
        protocol.transport.abortConnection()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_pipelinedBytesWaitingForABackendAreBounded(backends, startLB):
    """
    A client that sends a flood of frames after its request, before its 101,
    is not read any further once L{MAX_REQUEST_SIZE} is buffered: the rest
    waits in the kernel until a backend answers.
    """
    from twisted.internet import reactor

    lb, accepted, port = await _silentBackend(startLB, backends[0])
    try:
        connected, done = _rawClient(lb.port, _request() + bytes(4 << 20))
        protocol = await connected
        await waitUntil(lambda: len(accepted) == 1)
        (session,) = lb.service.relay.sessions
        clientTransport = session.client.transport
        await waitUntil(lambda: clientTransport not in reactor.getReaders())
        assert MAX_REQUEST_SIZE < len(session.client.data) <= MAX_REQUEST_SIZE + 65536
    finally:
        protocol.transport.abortConnection()
        await port.stopListening()
