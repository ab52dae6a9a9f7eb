"""
The data phase: what happens to messages once a client and its backend leg
are both open.

This module is the whole per-message path of the load balancer, kept in one
place so it can be replaced wholesale (for example by frame-level forwarding)
without touching connection setup, balancing or health.  Every line here runs
once per message: no logging, no dict building, no branching that can be
decided at join time.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer


class MessageSink(Protocol):
    """
    Where a leg sends the messages it receives: the other leg, or a queue
    while the other leg is not open yet.
    """

    def sendMessage(self, payload: bytes, isBinary: bool = False) -> None:
        """
        Send (or hold) one whole WebSocket message.
        """


class PendingMessages:
    """
    Messages that arrive from a backend before its client's WebSocket is open.

    The client's handshake is answered only once the backend's is done, so a
    backend may speak first; what it says is held here and replayed, in order,
    when the client opens.
    """

    __slots__ = ("messages",)

    def __init__(self) -> None:
        self.messages: list[tuple[bytes, bool]] = []

    def sendMessage(self, payload: bytes, isBinary: bool = False) -> None:
        """
        Hold one message until L{replayTo} is called.
        """
        self.messages.append((payload, isBinary))

    def replayTo(self, sink: MessageSink) -> None:
        """
        Send every held message to C{sink}, in arrival order.
        """
        messages, self.messages = self.messages, []
        for payload, isBinary in messages:
            sink.sendMessage(payload, isBinary)


class MessageForwarding:
    """
    Mixin for both legs (Autobahn protocols): every message received is sent
    on to C{self.other}, text or binary as it came.

    C{other} is assigned by L{join} (and by a session moving a client to a
    new backend); until then it is a L{PendingMessages} queue or C{None}.
    C{backend} is the L{wslb_twisted.backends.Backend} whose counters the
    leg's traffic is added to.
    """

    other: Any = None
    backend: Any = None


class ClientForwarding(MessageForwarding):
    """
    The client leg's data phase: messages go to the backend leg, counted on
    the backend as traffic towards it.
    """

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """
        Forward one whole message from the client to its backend.
        """
        backend = self.backend
        backend.messagesToBackend += 1
        backend.bytesToBackend += len(payload)
        self.other.sendMessage(payload, isBinary)


class BackendForwarding(MessageForwarding):
    """
    The backend leg's data phase: messages go to the client leg, counted on
    the backend as traffic towards clients.
    """

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """
        Forward one whole message from the backend to its client.
        """
        backend = self.backend
        backend.messagesToClient += 1
        backend.bytesToClient += len(payload)
        self.other.sendMessage(payload, isBinary)


@implementer(IPushProducer)
class PauseReading:
    """
    Lets one leg's transport pause the reading of the other's.

    Registered as the streaming producer of a transport, it stops reading from
    C{source} while that transport's send buffer is full, so a slow reader on
    one side slows its peer instead of filling the load balancer's memory.
    Unlike registering C{source} itself, stopping does not close C{source}:
    closing is the session's business, done with WebSocket close frames.
    """

    __slots__ = ("source",)

    def __init__(self, source: Any) -> None:
        """
        @param source: the transport to pause and resume.
        """
        self.source = source

    def pauseProducing(self) -> None:
        """
        Stop reading from the source.
        """
        self.source.pauseProducing()

    def resumeProducing(self) -> None:
        """
        Read from the source again.
        """
        self.source.resumeProducing()

    def stopProducing(self) -> None:
        """
        Nothing: the session closes both legs with WebSocket close frames.
        """


class DiscardMessages:
    """
    The sink of a leg whose peer is closing or gone: messages still in flight
    from it are dropped, as the peer can no longer take them.
    """

    __slots__ = ()

    def sendMessage(self, payload: bytes, isBinary: bool = False) -> None:
        """
        Drop one message.
        """


DISCARD = DiscardMessages()


def join(client: MessageForwarding, leg: MessageForwarding) -> None:
    """
    Connect two open legs: messages flow both ways, and each leg's transport
    throttles the other's reading (backpressure both ways).

    Messages the backend sent before the client was open are delivered first.

    @param client: the client-facing leg, open.
    @param leg: the backend leg, open.
    """
    pending = leg.other
    client.other = leg
    leg.other = client
    client.backend = leg.backend
    clientTransport = client.transport  # type: ignore[attr-defined]
    legTransport = leg.transport  # type: ignore[attr-defined]
    clientTransport.registerProducer(PauseReading(legTransport), True)
    legTransport.registerProducer(PauseReading(clientTransport), True)
    if isinstance(pending, PendingMessages):
        pending.replayTo(client)  # type: ignore[arg-type]


def separate(*legs: MessageForwarding) -> None:
    """
    Stop the flow between legs that are closing: messages still in flight are
    dropped, and each leg reads again so it can see its closing handshake
    through.

    @param legs: the legs that were passed to L{join}.
    """
    for leg in legs:
        leg.other = DISCARD
        transport = getattr(leg, "transport", None)
        if transport is not None:
            transport.unregisterProducer()
            transport.resumeProducing()
