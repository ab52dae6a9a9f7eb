"""
Backpressure: a client that stops reading slows its backend instead of
filling the load balancer's memory.
"""

from __future__ import annotations

import pytest_twisted
from helpers import bufferedBytes, connectClient, waitUntil

MESSAGE_SIZE = 64 * 1024
MESSAGES = 1024  # 64 MiB in all: more than the kernel's socket buffers hold


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
    limit = 512 * 1024

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
    limit = 512 * 1024

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
