"""
Liveness: silent legs are pinged, legs that stop answering are closed (and
their peers with the right code), and quiet but healthy ones live on.
"""

from __future__ import annotations

import base64
import os

import pytest_twisted
from helpers import connectClient
from test_framepath import frame, makePipe
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Protocol

from wslb_twisted.datapath import PING_PAYLOAD


def test_silentSidesArePingedThenCut():
    """
    A side silent for the ping interval gets a ping; still silent after the
    ping timeout, its connection is cut.
    """
    pipe, client, backendLeg, _ = makePipe()
    clock = pipe.clock
    pipe.startLiveness(10, 3)
    clock.advance(10)
    assert client.transport.value() == frame(9, PING_PAYLOAD)
    assert backendLeg.transport.value()[:2] == bytes((0x89, 0x80 | len(PING_PAYLOAD)))
    pipe.downstream.received(frame(10, PING_PAYLOAD))  # the backend answers
    clock.advance(3)
    assert client.transport.disconnecting or client.transport.disconnected
    assert not backendLeg.transport.disconnecting


def test_answeredPingsKeepAQuietSideAlive():
    """
    A side that sends nothing but answers each ping is never cut.
    """
    pipe, client, backendLeg, _ = makePipe()
    clock = pipe.clock
    pipe.startLiveness(10, 3)
    for _ in range(20):
        clock.advance(10)
        pipe.upstream.received(frame(10, PING_PAYLOAD, mask=True))
        pipe.downstream.received(frame(10, PING_PAYLOAD))
        clock.advance(3)
    assert not client.transport.disconnecting
    assert not backendLeg.transport.disconnecting


def test_noPingInsideAFrame():
    """
    A ping is never written into the middle of a frame being forwarded: it
    waits for the next check.
    """
    pipe, client, backendLeg, _ = makePipe()
    clock = pipe.clock
    pipe.startLiveness(10, 3)
    whole = frame(2, b"x" * 1000)
    pipe.downstream.received(whole[:500])
    pipe.upstream.received(frame(10, b"", mask=True))
    clock.advance(10)
    assert client.transport.value() == whole[:500]


def test_pausedSideIsNotJudged():
    """
    While we are not reading a side (backpressure), its silence does not
    count against it.
    """
    pipe, client, backendLeg, _ = makePipe()
    clock = pipe.clock
    pipe.startLiveness(10, 3)
    pipe.client.reading.pauseProducing()
    for _ in range(5):
        clock.advance(10)
        pipe.downstream.received(frame(10, PING_PAYLOAD))
        clock.advance(3)
    assert not client.transport.disconnecting


class _SilentAfterHandshake(Protocol):
    """
    Completes the opening handshake, then never sends anything again (a
    client whose network vanished).
    """

    def connectionMade(self):
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write(
            (
                "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def connectionLost(self, reason):
        self.factory.lost.callback(None)


@pytest_twisted.ensureDeferred
async def test_deadClientIsClosedAndItsBackendGets1001(backends, startLB):
    """
    A client that stops answering is closed after the ping interval and
    timeout, and its backend connection is closed with 1001.
    """
    from twisted.internet import reactor

    lb = await startLB(backends[:1], pingInterval=0.2, pingTimeout=0.3)
    factory = ClientFactory.forProtocol(_SilentAfterHandshake)
    factory.lost = Deferred()
    reactor.connectTCP("127.0.0.1", lb.port, factory)
    await backends[0].factory.opened.get()
    wasClean, code, _ = await backends[0].factory.closes.get()
    assert (wasClean, code) == (True, 1001)
    await factory.lost


@pytest_twisted.ensureDeferred
async def test_deadBackendClosesItsClientWith1011(backends, startLB):
    """
    A backend that stops reading (and so answering) is cut after the ping
    interval and timeout, and its client is closed with 1011.
    """
    lb = await startLB(backends[:1], pingInterval=0.2, pingTimeout=0.3)
    client = connectClient(lb.port)
    await client.opened
    server = await backends[0].factory.opened.get()
    server.transport.pauseProducing()
    wasClean, code, _ = await client.closed
    assert code == 1011


@pytest_twisted.ensureDeferred
async def test_quietHealthyClientLivesOn(backends, startLB):
    """
    A client that sends nothing but answers pings (as every WebSocket client
    does) stays connected through many ping rounds.
    """
    lb = await startLB(backends[:1], pingInterval=0.1, pingTimeout=0.2)
    client = connectClient(lb.port)
    protocol = await client.opened
    pinged: list[bytes] = []
    enough: Deferred[None] = Deferred()

    def onPing(payload):
        protocol.sendPong(payload)  # what Autobahn's own onPing does
        pinged.append(payload)
        if len(pinged) == 5:
            enough.callback(None)

    protocol.onPing = onPing
    await enough
    assert pinged == [PING_PAYLOAD] * 5
    assert not client.closed.called
    protocol.sendMessage(b"still here")
    assert await client.messages.get() == (b"still here", False)
