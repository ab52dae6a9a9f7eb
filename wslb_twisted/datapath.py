"""
The data phase: what happens to bytes once a client and its backend leg are
both open.

Autobahn does both opening handshakes; from then on frames are forwarded as
bytes.  Client frames stay masked on their way to the backend, backend frames
stay unmasked on their way to the client, and each read goes out in the chunk
it arrived in.  Only frame headers are parsed: to know message boundaries, to
enforce the size limit and the framing rules a relay must check, and to see
the closing handshake through.  Nothing is unmasked, validated or re-framed;
UTF-8 validity is the endpoints' business (a backend's 1007 reaches the
client as is).

This module is the whole per-message path of the load balancer.  Every line
in L{Direction.received} runs once per read: no logging, no dict building, no
per-message objects.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from zope.interface import implementer

PROTOCOL_ERROR = 1002
MESSAGE_TOO_BIG = 1009
GOING_AWAY = 1001
INTERNAL_ERROR = 1011

CLOSE_TIMEOUT = 5.0
"""
Seconds a side is given to answer a close frame (or, for a backend, to drop
its connection after the closing handshake) before its connection is cut.
"""


def controlFrame(opcode: int, payload: bytes, masked: bool) -> bytes:
    """
    Encode a control frame (close, ping, pong) of our own.

    @param opcode: 8, 9 or 10.
    @param payload: at most 125 bytes.
    @param masked: whether to mask it (frames to a backend must be).
    @return: the frame.
    """
    first = 0x80 | opcode
    if not masked:
        return bytes((first, len(payload))) + payload
    key = os.urandom(4)
    body = bytes(byte ^ key[i & 3] for i, byte in enumerate(payload))
    return bytes((first, 0x80 | len(payload))) + key + body


def closeFrame(code: int | None, reason: bytes = b"", masked: bool = False) -> bytes:
    """
    Encode a close frame.

    @param code: the close code, or C{None} for a close frame without one.
    @param reason: the UTF-8 reason, at most 123 bytes.
    @param masked: whether to mask it (frames to a backend must be).
    @return: the frame.
    """
    payload = b"" if code is None else code.to_bytes(2, "big") + reason[:123]
    return controlFrame(8, payload, masked)


PING_PAYLOAD = b"wslb"
"""The payload of the load balancer's own pings."""


@implementer(IPushProducer)
class PauseReading:
    """
    Lets one leg's transport pause the reading of the other's.

    Registered as the streaming producer of a transport, it stops reading from
    C{source} while that transport's send buffer is full, so a slow reader on
    one side slows its peer instead of filling the load balancer's memory.
    Unlike registering C{source} itself, stopping does not close C{source}:
    closing is the pipe's business, done with close frames.
    """

    __slots__ = ("source", "paused")

    def __init__(self, source: Any) -> None:
        """
        @param source: the transport to pause and resume.
        """
        self.source = source
        self.paused = False

    def pauseProducing(self) -> None:
        """
        Stop reading from the source.
        """
        self.paused = True
        self.source.pauseProducing()

    def resumeProducing(self) -> None:
        """
        Read from the source again.
        """
        self.paused = False
        self.source.resumeProducing()

    def stopProducing(self) -> None:
        """
        Nothing: the pipe closes both legs with close frames.
        """


def _discard(data: bytes) -> None:
    pass


def directWriter(transport: Any) -> Any:
    """
    A C{write} for C{transport} that sends at once when nothing is waiting
    in its buffer.

    Twisted's C{write} only queues the bytes and asks the reactor to watch
    the socket for writability, so every write costs two extra C{epoll_ctl}
    calls and a reactor turn.  When the transport's buffer is empty, this
    sends straight away instead; whatever the kernel does not take (and every
    write while something is already queued) goes through Twisted's C{write}
    as before, so ordering, buffering and backpressure are unchanged.

    @param transport: the transport to write to.
    @return: a callable taking bytes; C{transport.write} itself for
        transports that are not plain TCP connections (TLS, tests).
    """
    queue = transport.write
    # Checked by type, not by attribute: a TLS transport answers for the TCP
    # connection under it (its socket, its buffers) through __getattr__, and
    # sending on that socket would bypass the encryption.
    if not isinstance(transport, tcp.Connection) or transport.TLS:
        return queue
    send = transport.socket.send

    def write(data: bytes) -> None:
        if transport.dataBuffer or transport._tempDataLen or transport.disconnecting:
            queue(data)
            return
        try:
            sent = send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            # Let Twisted meet the error on its own write and report it.
            queue(data)
            return
        if sent < len(data):
            queue(data[sent:])

    return write


class Side:
    """
    One end of a pipe (the client, or the backend) and where its closing
    handshake stands.

    @ivar transport: its connection.
    @ivar masked: whether frames sent to it must be masked (a backend).
    @ivar sentClose: a close frame has been sent to it.
    @ivar gotClose: it has sent a close frame.
    @ivar connected: its connection is still up.
    @ivar timer: cuts its connection if the closing handshake stalls.
    @ivar feeder: the direction whose frames go to it.
    @ivar pinged: we pinged it and have heard nothing from it since.
    @ivar reading: pauses and resumes our reading of it (when it is paused,
        its silence proves nothing).
    """

    __slots__ = (
        "transport",
        "masked",
        "sentClose",
        "gotClose",
        "connected",
        "timer",
        "feeder",
        "pinged",
        "reading",
    )

    def __init__(self, transport: Any, masked: bool) -> None:
        self.transport = transport
        self.masked = masked
        self.sentClose = False
        self.gotClose = False
        self.connected = True
        self.timer: IDelayedCall | None = None
        self.feeder: Direction | None = None
        self.pinged = False
        self.reading: PauseReading | None = None

    def sendClose(self, code: int | None, reason: bytes = b"") -> None:
        """
        Send this side a close frame of our own, once.
        """
        if not self.sentClose:
            self.deliverClose(closeFrame(code, reason, self.masked))

    def deliverClose(self, frame: bytes) -> None:
        """
        Send this side a close frame (its peer's, or our own), once; nothing
        is sent to it after that.
        """
        if self.sentClose or not self.connected:
            return
        self.sentClose = True
        self.transport.write(frame)
        if self.feeder is not None:
            self.feeder.write = _discard


class Direction:
    """
    The frames one side sends to the other: headers are parsed as they pass,
    payloads are not touched, and the bytes are written on in the chunks they
    arrived in.

    @ivar write: writes to the other side (a no-op once it is gone).
    @ivar remaining: payload bytes of the current frame still to pass.
    @ivar partial: the start of a frame header split across reads.
    @ivar fragmented: a fragmented data message is under way.
    @ivar messageSize: payload bytes of the data message under way.
    """

    __slots__ = (
        "pipe",
        "source",
        "target",
        "write",
        "remaining",
        "partial",
        "fragmented",
        "messageSize",
        "limit",
        "maskBit",
        "counters",
        "toBackend",
        "closing",
        "heard",
    )

    def __init__(
        self, pipe: Pipe, source: Side, target: Side, limit: int, counters: Any
    ) -> None:
        """
        @param pipe: the pipe this direction belongs to.
        @param source: the side whose frames these are.
        @param target: the side they go to.
        @param limit: the largest message payload accepted, in bytes.
        @param counters: the L{wslb_twisted.backends.Backend} counting the
            traffic.
        """
        self.pipe = pipe
        self.source = source
        self.target = target
        self.write = directWriter(target.transport)
        target.feeder = self
        self.remaining = 0
        self.partial = b""
        self.fragmented = False
        self.messageSize = 0
        self.limit = limit
        self.toBackend = target.masked
        # Frames from a client must be masked; frames from a backend must not.
        self.maskBit = 0x80 if self.toBackend else 0
        self.counters = counters
        self.closing = False
        self.heard = False

    def received(self, data: bytes) -> None:
        """
        Parse the frame headers in C{data} and forward it.

        @param data: bytes read from the source.
        """
        self.heard = True
        remaining = self.remaining
        if not self.partial and remaining >= len(data):
            # The whole read is payload of a frame under way.
            self.remaining = remaining - len(data)
            self.write(data)
            return
        if self.closing:
            return
        if self.partial:
            data = self.partial + data
            self.partial = b""
        end = len(data)
        pos = 0
        messages = payloadBytes = 0
        while True:
            if remaining:
                if remaining >= end - pos:
                    remaining -= end - pos
                    pos = end
                    break
                pos += remaining
                remaining = 0
            if pos == end:
                break
            if end - pos < 2:
                self.partial = data[pos:]
                break
            first = data[pos]
            second = data[pos + 1]
            length = second & 0x7F
            header = 2
            if length == 126:
                header = 4
            elif length == 127:
                header = 10
            if second & 0x80:
                header += 4
            if end - pos < header:
                self.partial = data[pos:]
                break
            if length == 126:
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            elif length == 127:
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
            opcode = first & 0x0F
            if (second & 0x80) != self.maskBit or first & 0x70:
                self._failAt(data, pos, PROTOCOL_ERROR, b"bad frame header")
                return
            if opcode & 0x08:
                if not first & 0x80 or length > 125:
                    self._failAt(data, pos, PROTOCOL_ERROR, b"bad control frame")
                    return
                if opcode == 8:
                    if end - pos < header + length:
                        self.partial = data[pos:]
                        break
                    self._closeAt(data, pos, header + length, length)
                    return
                if opcode > 10:
                    self._failAt(data, pos, PROTOCOL_ERROR, b"unknown opcode")
                    return
            else:
                if opcode == 0:
                    if not self.fragmented:
                        self._failAt(data, pos, PROTOCOL_ERROR, b"nothing to continue")
                        return
                    size = self.messageSize + length
                elif opcode < 3:
                    if self.fragmented:
                        self._failAt(data, pos, PROTOCOL_ERROR, b"message interleaved")
                        return
                    size = length
                else:
                    self._failAt(data, pos, PROTOCOL_ERROR, b"unknown opcode")
                    return
                if size > self.limit:
                    self._failAt(data, pos, MESSAGE_TOO_BIG, b"message too big")
                    return
                self.messageSize = size
                payloadBytes += length
                if first & 0x80:
                    self.fragmented = False
                    messages += 1
                else:
                    self.fragmented = True
            pos += header
            remaining = length
        self.remaining = remaining
        if messages or payloadBytes:
            counters = self.counters
            if self.toBackend:
                counters.messagesToBackend += messages
                counters.bytesToBackend += payloadBytes
            else:
                counters.messagesToClient += messages
                counters.bytesToClient += payloadBytes
        if self.partial:
            data = data[: end - len(self.partial)]
        if data:
            self.write(data)

    def _failAt(self, data: bytes, pos: int, code: int, reason: bytes) -> None:
        if pos:
            self.write(data[:pos])
        self.closing = True
        self.remaining = 0
        self.partial = b""
        self.pipe.failed(self.source, code, reason)

    def _closeAt(self, data: bytes, pos: int, size: int, length: int) -> None:
        if pos:
            self.write(data[:pos])
        self.closing = True
        self.remaining = 0
        self.partial = b""
        if length == 1:
            self.pipe.failed(self.source, PROTOCOL_ERROR, b"bad close frame")
            return
        self.pipe.closeFrameFrom(self.source, data[pos : pos + size])


class Pipe:
    """
    A client joined to a backend leg in the data phase: two L{Direction}s and
    the closing handshake between them.

    @ivar client: the client's side.
    @ivar backend: the backend's side.
    @ivar upstream: frames from the client to the backend.
    @ivar downstream: frames from the backend to the client.
    """

    def __init__(
        self,
        clientLeg: Any,
        backendLeg: Any,
        counters: Any,
        limit: int,
        clock: Any,
        clientCloses: dict[int, int] | None = None,
    ) -> None:
        """
        @param clientLeg: the client's open Autobahn protocol.
        @param backendLeg: the backend's open Autobahn protocol.
        @param counters: the L{wslb_twisted.backends.Backend} to count on.
        @param limit: the largest message payload accepted, in bytes.
        @param clock: for the closing handshake's timeout.
        @param clientCloses: counts, by close code, a client failed for
            breaking a limit or the protocol (the relay's, shared by every
            pipe).
        """
        self.clientCloses = {} if clientCloses is None else clientCloses
        self.clock = clock
        self.client = Side(clientLeg.transport, masked=False)
        self.backend = Side(backendLeg.transport, masked=True)
        self.upstream = Direction(self, self.client, self.backend, limit, counters)
        self.downstream = Direction(self, self.backend, self.client, limit, counters)
        self._clientFailure: tuple[int, bytes] | None = None
        self._liveness: IDelayedCall | None = None
        self._pingInterval = self._pingTimeout = 0.0

    def start(self, clientLeg: Any, backendLeg: Any) -> None:
        """
        Take over both legs' reads from Autobahn, couple their flow control,
        and forward what Autobahn had read but not yet parsed.
        """
        clientTransport = self.client.transport
        backendTransport = self.backend.transport
        self.backend.reading = PauseReading(backendTransport)
        self.client.reading = PauseReading(clientTransport)
        clientTransport.registerProducer(self.backend.reading, True)
        backendTransport.registerProducer(self.client.reading, True)
        clientLeg.dataReceived = self.upstream.received
        backendLeg.dataReceived = self.downstream.received
        clientEarly, clientLeg.data = clientLeg.data, b""
        backendEarly, backendLeg.data = backendLeg.data, b""
        if backendEarly:
            self.downstream.received(backendEarly)
        if clientEarly:
            self.upstream.received(clientEarly)

    # Liveness

    def startLiveness(self, interval: float, timeout: float) -> None:
        """
        Ping a side that has been silent for C{interval} seconds, and cut one
        that stays silent C{timeout} seconds more; its peer is then closed
        as if it had gone away.  A quiet side that answers pings lives on.

        @param interval: seconds of silence before a ping; 0 for never.
        @param timeout: seconds a pinged side has to be heard from.
        """
        if interval <= 0:
            return
        self._pingInterval = interval
        self._pingTimeout = timeout
        self._liveness = self.clock.callLater(interval, self._checkLiveness)

    def _checkLiveness(self) -> None:
        self._liveness = None
        client, backend = self.client, self.backend
        if not (client.connected and backend.connected):
            return
        if client.sentClose or backend.sentClose or client.gotClose or backend.gotClose:
            return
        waiting = False
        for side, direction in ((client, self.upstream), (backend, self.downstream)):
            reading = side.reading
            if direction.heard or (reading is not None and reading.paused):
                direction.heard = False
                side.pinged = False
            elif side.pinged:
                # Pinged, and still nothing: the peer is gone without a word.
                side.transport.abortConnection()
                return
            else:
                feeder = side.feeder
                # A ping may only go between frames of what we forward.
                if feeder is not None and not feeder.remaining and not feeder.partial:
                    feeder.write(controlFrame(9, PING_PAYLOAD, side.masked))
                    side.pinged = True
                    waiting = True
        delay = self._pingTimeout if waiting else self._pingInterval
        self._liveness = self.clock.callLater(delay, self._checkLiveness)

    def _stopLiveness(self) -> None:
        if self._liveness is not None:
            self._liveness.cancel()
            self._liveness = None

    # Closing

    def closeFrameFrom(self, side: Side, frame: bytes) -> None:
        """
        A side sent a close frame: pass it on (unless the other side was
        already sent one) and finish the handshake where it is complete.
        """
        side.gotClose = True
        other = self.backend if side is self.client else self.client
        if other is self.client and self._clientFailure is not None:
            self._failClient()
        else:
            other.deliverClose(frame)
        self._settle()

    def failed(self, side: Side, code: int, reason: bytes) -> None:
        """
        A side broke the protocol or a limit: close it with C{code}, and the
        other side as if that one had gone away.
        """
        if side is self.client:
            self.clientCloses[code] = self.clientCloses.get(code, 0) + 1
            # What the backend already sent reaches the client first: close
            # the backend, and fail the client once the backend has answered
            # (or gone).
            self._clientFailure = (code, reason)
            if self.backend.sentClose or not self.backend.connected:
                self._failClient()
            else:
                self.backend.sendClose(GOING_AWAY, b"client connection failed")
        else:
            self.backend.sendClose(code, reason)
            self.backend.gotClose = True
            self.client.sendClose(INTERNAL_ERROR, b"backend connection failed")
        self._settle()

    def shutdown(self) -> None:
        """
        The load balancer is stopping: close both sides with 1001.
        """
        reason = b"load balancer shutting down"
        self.client.sendClose(GOING_AWAY, reason)
        self.backend.sendClose(GOING_AWAY, reason)
        self._settle()

    def clientLost(self) -> None:
        """
        The client's connection is gone: if it left without a closing
        handshake, close the backend with 1001.
        """
        self._lost(self.client)
        self.downstream.write = _discard
        self.backend.sendClose(GOING_AWAY, b"client went away")
        self._settle()

    def backendLost(self) -> None:
        """
        The backend's connection is gone, and so is the client's: with a 1011
        close frame if the backend vanished mid-conversation; without one if
        the client had started the closing handshake, as a byte tunnel would
        (the backend dropped instead of answering it).
        """
        self._lost(self.backend)
        self.upstream.write = _discard
        client = self.client
        if self._clientFailure is not None:
            self._failClient()
        elif not client.gotClose:
            client.sendClose(INTERNAL_ERROR, b"backend went away")
        client.gotClose = client.sentClose = True
        self._settle()

    def _failClient(self) -> None:
        assert self._clientFailure is not None
        code, reason = self._clientFailure
        self._clientFailure = None
        self.client.sendClose(code, reason)
        self.client.gotClose = True

    def _lost(self, side: Side) -> None:
        self._stopLiveness()
        side.connected = False
        if side.timer is not None:
            side.timer.cancel()
            side.timer = None

    def _settle(self) -> None:
        """
        Close what the closing handshake allows, and make sure a side that
        owes an answer does not hold its connection open for ever.
        """
        self._stopLiveness()
        client, backend = self.client, self.backend
        if client.connected:
            if client.sentClose and client.gotClose:
                # As the client's server, we close its connection.  A TLS
                # transport does not close while a producer is registered,
                # and then waits for the client's TLS close: the timer below
                # cuts it if that never comes.  Nothing more goes to the
                # client, so the backend may be read again (to see it close).
                client.transport.unregisterProducer()
                reading = backend.reading
                if backend.connected and reading is not None and reading.paused:
                    reading.resumeProducing()
                client.transport.loseConnection()
            if client.sentClose and client.timer is None:
                client.timer = self.clock.callLater(CLOSE_TIMEOUT, self._cut, client)
        if backend.connected and backend.sentClose and backend.timer is None:
            # The backend, as the server, drops the connection once the
            # handshake is done; cut it if it does not.
            backend.timer = self.clock.callLater(CLOSE_TIMEOUT, self._cut, backend)

    def _cut(self, side: Side) -> None:
        side.timer = None
        if side.connected:
            side.transport.abortConnection()
