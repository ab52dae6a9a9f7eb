"""
Closing handshakes are relayed both ways, with their codes.
"""

from __future__ import annotations

import pytest_twisted
from helpers import connectClient


@pytest_twisted.ensureDeferred
async def test_clientCloseCodeReachesBackend(backends, startLB):
    """
    A client closing with 4001 and a reason closes its backend connection
    with the same code and reason, cleanly, and the client gets the
    backend's answer (which echoes the code).
    """
    lb = await startLB(backends[:1])
    client = connectClient(lb.port)
    protocol = await client.opened
    protocol.sendClose(4001, "done for today")
    wasClean, code, reason = await backends[0].factory.closes.get()
    assert (wasClean, code, reason) == (True, 4001, "done for today")
    assert (await client.closed)[:2] == (True, 4001)


@pytest_twisted.ensureDeferred
async def test_clientNormalCloseReachesBackend(backends, startLB):
    """
    A normal close (1000) by the client is a normal close for the backend.
    """
    lb = await startLB(backends[:1])
    client = connectClient(lb.port)
    protocol = await client.opened
    protocol.sendClose(1000)
    assert (await backends[0].factory.closes.get())[:2] == (True, 1000)


@pytest_twisted.ensureDeferred
async def test_backendCloseCodeReachesClient(backends, startLB):
    """
    A backend closing with an application code (4002) closes the client with
    the same code and reason.
    """
    lb = await startLB(backends[:1])
    client = connectClient(lb.port)
    protocol = await client.opened
    protocol.sendMessage(b"close:4002:market closed")
    wasClean, code, reason = await client.closed
    assert (wasClean, code, reason) == (True, 4002, "market closed")


@pytest_twisted.ensureDeferred
async def test_backendProtocolCodeReachesClient(backends, startLB):
    """
    Codes Autobahn's sendClose() refuses (here 1008, policy violation) are
    relayed too.
    """
    lb = await startLB(backends[:1])
    client = connectClient(lb.port)
    protocol = await client.opened
    protocol.sendMessage(b"close:1008:not allowed")
    wasClean, code, reason = await client.closed
    assert (wasClean, code, reason) == (True, 1008, "not allowed")


@pytest_twisted.ensureDeferred
async def test_backendVanishingClosesClientWith1011(backends, startLB):
    """
    A backend that drops its TCP connection without a closing handshake
    closes the client with 1011, cleanly, and the backend's count drops.
    """
    lb = await startLB(backends[:1])
    client = connectClient(lb.port)
    protocol = await client.opened
    assert lb.backend("backend-1").activeConnections == 1
    protocol.sendMessage(b"drop")
    wasClean, code, _ = await client.closed
    assert (wasClean, code) == (True, 1011)
    assert lb.backend("backend-1").activeConnections == 0


@pytest_twisted.ensureDeferred
async def test_clientVanishingClosesBackendWith1001(backends, startLB):
    """
    A client that drops its TCP connection without a closing handshake closes
    its backend connection with 1001 (going away), cleanly.
    """
    lb = await startLB(backends[:1])
    client = connectClient(lb.port)
    protocol = await client.opened
    protocol.transport.abortConnection()
    wasClean, code, _ = await backends[0].factory.closes.get()
    assert (wasClean, code) == (True, 1001)
    assert lb.backend("backend-1").activeConnections == 0
