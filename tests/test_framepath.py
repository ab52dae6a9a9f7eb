"""
The frame-level data path: frames pass through as bytes, whatever way the
reads split them, and only framing the relay must check is checked.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass

import pytest_twisted
from helpers import connectClient
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport

from wslb_twisted.backends import Backend
from wslb_twisted.datapath import Pipe


def frame(opcode: int, payload: bytes, fin: bool = True, mask: bool = False) -> bytes:
    """
    Encode one WebSocket frame.
    """
    first = (0x80 if fin else 0) | opcode
    length = len(payload)
    maskBit = 0x80 if mask else 0
    if length < 126:
        header = bytes((first, maskBit | length))
    elif length < 65536:
        header = bytes((first, maskBit | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((first, maskBit | 127)) + length.to_bytes(8, "big")
    if not mask:
        return header + payload
    key = os.urandom(4)
    return header + key + bytes(b ^ key[i & 3] for i, b in enumerate(payload))


@dataclass
class _Leg:
    transport: StringTransport
    data: bytes = b""


def makePipe(limit: int = 1 << 20) -> tuple[Pipe, _Leg, _Leg, Backend]:
    from twisted.internet.task import Clock

    client, backendLeg = _Leg(StringTransport()), _Leg(StringTransport())
    counters = Backend(id="b", host="127.0.0.1", port=1)
    pipe = Pipe(client, backendLeg, counters, limit, Clock())
    pipe.start(client, backendLeg)
    return pipe, client, backendLeg, counters


def feed(received, data: bytes, cuts: list[int]) -> None:
    """
    Deliver C{data} in pieces, cut at the given offsets.
    """
    last = 0
    for cut in sorted(set(c for c in cuts if 0 < c < len(data))) + [len(data)]:
        received(data[last:cut])
        last = cut


# One message: (is it binary, payload, how it is split into frames).
messages = st.tuples(
    st.booleans(),
    st.binary(max_size=300),
    st.lists(st.integers(min_value=0, max_value=300), max_size=3),
    st.booleans(),
)


def encode(message, masked: bool) -> bytes:
    """
    A message as frames: fragmented at the given points, optionally with a
    ping between its first two fragments.
    """
    isBinary, payload, cuts, ping = message
    points = sorted(set(c for c in cuts if 0 < c < len(payload)))
    pieces = [payload[a:b] for a, b in zip([0, *points], [*points, len(payload)])]
    out = b""
    for index, piece in enumerate(pieces):
        opcode = (2 if isBinary else 1) if index == 0 else 0
        out += frame(opcode, piece, fin=index == len(pieces) - 1, mask=masked)
        if ping and index == 0:
            out += frame(9, b"ping!", mask=masked)
    return out


@settings(max_examples=200, deadline=None)
@given(
    st.lists(messages, min_size=1, max_size=8),
    st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
)
def test_upstreamFramesPassIntactWhateverTheReads(sequence, cuts):
    """
    Client frames (masked, fragmented, with pings between fragments) reach
    the backend byte for byte, in order, however the reads split them, and
    each message is counted once.
    """
    pipe, client, backendLeg, counters = makePipe()
    wire = b"".join(encode(m, masked=True) for m in sequence)
    feed(pipe.upstream.received, wire, cuts)
    assert backendLeg.transport.value() == wire
    assert counters.messagesToBackend == len(sequence)
    assert counters.bytesToBackend == sum(len(m[1]) for m in sequence)
    assert client.transport.value() == b""


@settings(max_examples=200, deadline=None)
@given(
    st.lists(messages, min_size=1, max_size=8),
    st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
)
def test_downstreamFramesPassIntactWhateverTheReads(sequence, cuts):
    """
    Backend frames (unmasked) reach the client byte for byte, in order,
    however the reads split them.
    """
    pipe, client, backendLeg, counters = makePipe()
    wire = b"".join(encode(m, masked=False) for m in sequence)
    feed(pipe.downstream.received, wire, cuts)
    assert client.transport.value() == wire
    assert counters.messagesToClient == len(sequence)


def test_frameSplitByteByByte():
    """
    A frame with a 64-bit length, delivered one byte per read, passes intact.
    """
    pipe, client, backendLeg, counters = makePipe()
    wire = frame(2, os.urandom(70000), mask=True)
    feed(pipe.upstream.received, wire, list(range(1, 40)) + [69000])
    assert backendLeg.transport.value() == wire
    assert counters.messagesToBackend == 1


def test_unmaskedClientFrameFailsWith1002():
    """
    An unmasked frame from a client is a protocol error: the backend is
    closed with 1001 and, once it answers, the client with 1002.
    """
    pipe, client, backendLeg, _ = makePipe()
    pipe.upstream.received(frame(1, b"hello", mask=False))
    assert backendLeg.transport.value()[:1] == b"\x88"
    pipe.downstream.received(frame(8, (1001).to_bytes(2, "big")))
    assert client.transport.value()[2:4] == (1002).to_bytes(2, "big")
    assert client.transport.disconnecting


def test_continuationWithoutStartFails():
    """
    A continuation frame with no message to continue is a protocol error.
    """
    pipe, client, backendLeg, _ = makePipe()
    pipe.upstream.received(frame(0, b"x", mask=True))
    assert pipe._clientFailure == (1002, b"nothing to continue")


def test_fragmentedMessageOverTheLimitFailsWith1009():
    """
    A fragmented message whose fragments add up to more than the limit fails
    with 1009 before the fragment that crosses it is forwarded.
    """
    pipe, client, backendLeg, _ = makePipe(limit=1000)
    first = frame(2, b"a" * 600, fin=False, mask=True)
    pipe.upstream.received(first + frame(0, b"b" * 600, mask=True))
    assert backendLeg.transport.value().startswith(first)
    assert pipe._clientFailure == (1009, b"message too big")


def test_dataBeforeTheHandoverIsForwarded():
    """
    Bytes Autobahn had read but not parsed when the legs were joined (frames
    that arrived in the same read as a handshake) are forwarded first.
    """
    from twisted.internet.task import Clock

    early = frame(1, b"early", mask=False)
    client = _Leg(StringTransport())
    backendLeg = _Leg(StringTransport(), data=early[:3])
    pipe = Pipe(client, backendLeg, Backend(id="b", host="h", port=1), 1000, Clock())
    pipe.start(client, backendLeg)
    pipe.downstream.received(early[3:])
    assert client.transport.value() == early
    assert backendLeg.data == b""


@pytest_twisted.ensureDeferred
async def test_framesPipelinedWithTheHandshakeReachTheBackend(backends, startLB):
    """
    A client that sends its first frame in the same packet as its opening
    handshake has that message delivered to the backend and echoed back.
    """
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.protocol import ClientFactory, Protocol

    lb = await startLB(backends[:1])
    echoed: Deferred[bytes] = Deferred()

    class Pipelining(Protocol):
        buffer = b""

        def connectionMade(self):
            key = base64.b64encode(os.urandom(16)).decode()
            request = (
                "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
            self.transport.write(request + frame(1, b"right away", mask=True))

        def dataReceived(self, data):
            self.buffer += data
            wanted = frame(1, b"right away")
            if self.buffer.endswith(wanted) and not echoed.called:
                echoed.callback(self.buffer)
                self.transport.loseConnection()

    reactor.connectTCP("127.0.0.1", lb.port, ClientFactory.forProtocol(Pipelining))
    answer = await echoed
    assert answer.startswith(b"HTTP/1.1 101")


@pytest_twisted.ensureDeferred
async def test_fragmentedMessageWithPingsByteByByteEndToEnd(backends, startLB):
    """
    A fragmented message with a ping between its fragments, written one byte
    at a time through the load balancer, arrives whole at the backend, and
    the client gets the pong before the echo.
    """
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    lb = await startLB(backends[:1])
    client = connectClient(lb.port)
    protocol = await client.opened
    pongs = []
    protocol.onPong = pongs.append
    wire = (
        frame(1, b"Hello, ", fin=False, mask=True)
        + frame(9, b"are you there", mask=True)
        + frame(0, b"world", mask=True)
    )
    for index in range(len(wire)):
        protocol.transport.write(wire[index : index + 1])
        await deferLater(reactor, 0, lambda: None)
    assert await client.messages.get() == (b"Hello, world", False)
    assert pongs == [b"are you there"]
    assert backends[0].factory.received == [(b"Hello, world", False)]


def test_nothingFollowsTheCloseFrameSentToTheClient():
    """
    Once the load balancer has sent the client a close frame (here on
    shutdown), frames still coming from the backend are not forwarded: a
    close frame is the last frame of a connection.
    """
    pipe, client, backendLeg, _ = makePipe()
    pipe.shutdown()
    closing = client.transport.value()
    assert closing[:1] == b"\x88"
    pipe.downstream.received(frame(1, b"late quote") + frame(1, b"later"))
    assert client.transport.value() == closing


def test_nothingFollowsAForwardedCloseFrame():
    """
    After the backend's close frame is forwarded to the client, nothing else
    from the backend is, even in the same read.
    """
    pipe, client, backendLeg, _ = makePipe()
    closing = frame(8, (1000).to_bytes(2, "big"))
    pipe.downstream.received(frame(1, b"last") + closing + frame(1, b"too late"))
    assert client.transport.value() == frame(1, b"last") + closing
