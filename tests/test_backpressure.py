"""
Backpressure: a client that stops reading slows its backend instead of
filling the load balancer's memory.
"""

from __future__ import annotations

import pytest_twisted
from helpers import bufferedBytes, connectClient, waitUntil
from twisted.internet.task import deferLater

MESSAGE_SIZE = 64 * 1024
MESSAGES = 1024  # 64 MiB in all: more than the kernel's socket buffers hold
LIMIT = 256 * 1024
"""The most a stalled side may make the load balancer hold, in bytes."""


@pytest_twisted.ensureDeferred
async def test_stalledClientKeepsLoadBalancerBuffersBounded(backends, startLB):
    """
    While a client does not read, the load balancer stops reading from its
    backend: the bytes wait in the backend (and the kernel), the load
    balancer's own send buffers stay small, and when the client reads again
    every message arrives, in order.
    """
    from twisted.internet import reactor

    lb = await startLB(backends[:1])
    client = connectClient(lb.port)
    protocol = await client.opened
    protocol.transport.pauseProducing()
    protocol.sendMessage(f"blast:{MESSAGES}:{MESSAGE_SIZE}".encode())
    server = await backends[0].factory.blasted

    (session,) = lb.service.relay.sessions
    clientSide, backendSide = session.client.transport, session.leg.transport
    limit = LIMIT

    def heldByLoadBalancer():
        return bufferedBytes(clientSide) + bufferedBytes(backendSide)

    # The relay stops reading from the backend once the client's side is full
    # (or, were backpressure broken, its buffers grow past the limit).
    await waitUntil(
        lambda: backendSide not in reactor.getReaders() or heldByLoadBalancer() > limit
    )
    assert heldByLoadBalancer() < limit
    heldByBackend = bufferedBytes(server.transport)
    assert heldByBackend > MESSAGES * MESSAGE_SIZE // 4

    protocol.transport.resumeProducing()
    for n in range(MESSAGES):
        payload, isBinary = await client.messages.get()
        assert isBinary
        assert len(payload) == MESSAGE_SIZE
        assert payload[:4] == n.to_bytes(4, "big")


@pytest_twisted.ensureDeferred
async def test_stalledBackendKeepsLoadBalancerBuffersBounded(backends, startLB):
    """
    While a backend does not read, the load balancer stops reading from the
    client that floods it, and when the backend reads again every message
    arrives, in order.
    """
    from twisted.internet import reactor

    backends[0].factory.echo = False
    lb = await startLB(backends[:1])
    client = connectClient(lb.port)
    protocol = await client.opened
    server = await backends[0].factory.opened.get()
    server.transport.pauseProducing()
    for n in range(MESSAGES):
        protocol.sendMessage(n.to_bytes(4, "big") * (MESSAGE_SIZE // 4), True)

    (session,) = lb.service.relay.sessions
    clientSide, backendSide = session.client.transport, session.leg.transport
    limit = LIMIT

    def heldByLoadBalancer():
        return bufferedBytes(clientSide) + bufferedBytes(backendSide)

    await waitUntil(
        lambda: clientSide not in reactor.getReaders() or heldByLoadBalancer() > limit
    )
    assert heldByLoadBalancer() < limit
    assert bufferedBytes(protocol.transport) > MESSAGES * MESSAGE_SIZE // 4

    server.transport.resumeProducing()
    received = backends[0].factory.received
    await waitUntil(lambda: len(received) == MESSAGES, timeout=60)
    for n, (payload, isBinary) in enumerate(received):
        assert isBinary
        assert payload == n.to_bytes(4, "big") * (MESSAGE_SIZE // 4)


def heldForSession(session) -> int:
    """
    Bytes the load balancer holds in user space for one client: both legs'
    send buffers, what Autobahn read but did not parse, and the data path's
    partial frame headers.
    """
    pipe = session.pipe
    return (
        bufferedBytes(session.client.transport)
        + bufferedBytes(session.leg.transport)
        + len(session.client.data)
        + len(session.leg.data)
        + len(pipe.upstream.partial)
        + len(pipe.downstream.partial)
    )


@pytest_twisted.ensureDeferred
async def test_slowConsumerCostsAtMost256KiBAndLosesNothing(backends, startLB):
    """
    A client that stops reading while its backend streams as fast as it may
    costs the load balancer at most 256 KiB: once the client's socket
    buffers are full the load balancer stops reading from the backend, and
    the backend, whose own buffers then fill, is paused.  When the client
    reads again the stream resumes where it stopped, with nothing lost.
    """
    from twisted.internet import reactor

    lb = await startLB(backends[:1])
    client = connectClient(lb.port)
    protocol = await client.opened
    protocol.transport.pauseProducing()
    protocol.sendMessage(b"stream:16384")
    await waitUntil(lambda: backends[0].factory.clients)
    (server,) = backends[0].factory.clients
    await waitUntil(lambda: getattr(server, "sent", 0) > 0)
    (session,) = lb.service.relay.sessions
    backendSide = session.leg.transport
    held = [0]

    def stalled() -> bool:
        held[0] = max(held[0], heldForSession(session))
        return backendSide not in reactor.getReaders() and not server._streaming

    # The kernel's buffers grow as they fill: wait until the backend has sent
    # nothing for a while.
    sentAtStall = -1
    for _ in range(50):
        if server.sent == sentAtStall:
            break
        sentAtStall = server.sent
        for _ in range(30):
            await deferLater(reactor, 0.01, lambda: None)
            stalled()
    await waitUntil(stalled)
    assert server.sent == sentAtStall
    assert held[0] <= LIMIT, held[0]
    print(f"slow consumer: {held[0]} bytes held at most, {sentAtStall} messages sent")

    protocol.transport.resumeProducing()
    for n in range(sentAtStall + 100):
        payload, isBinary = await client.messages.get()
        assert int.from_bytes(payload[:8], "big") == n
        assert len(payload) == 16384
    assert server.sent > sentAtStall
    server.transport.unregisterProducer()
    server._streaming = False
