"""
Bad input from one client closes that client with the right code and leaves
the others alone.
"""

from __future__ import annotations

import pytest_twisted
from helpers import connectClient


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
