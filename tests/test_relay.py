"""
The relay, end to end: real Autobahn clients, the load balancer and real
backends, all on 127.0.0.1.
"""

from __future__ import annotations

import pytest_twisted
from helpers import connectClient


@pytest_twisted.ensureDeferred
async def test_textMessageRoundTrip(backends, startLB):
    """
    A text message sent by a client reaches its backend and the backend's
    answer comes back as text.
    """
    lb = await startLB(backends[:1])
    client = connectClient(lb.port)
    protocol = await client.opened
    protocol.sendMessage("héllo".encode(), False)
    payload, isBinary = await client.messages.get()
    assert (payload, isBinary) == ("héllo".encode(), False)
    assert backends[0].factory.received == [("héllo".encode(), False)]
    protocol.sendClose(1000)
    await client.closed


@pytest_twisted.ensureDeferred
async def test_binaryMessageOfOneMebibyteBothWays(backends, startLB):
    """
    A 1 MiB binary message goes through intact, as binary, both ways.
    """
    lb = await startLB(backends[:1])
    client = connectClient(lb.port)
    protocol = await client.opened
    payload = bytes(range(256)) * 4096
    protocol.sendMessage(payload, True)
    received, isBinary = await client.messages.get()
    assert isBinary is True
    assert received == payload
    assert backends[0].factory.received == [(payload, True)]


@pytest_twisted.ensureDeferred
async def test_backendSpeaksFirst(backends, startLB):
    """
    A message a backend sends as soon as its WebSocket opens (before the
    client has its 101) reaches the client first.
    """
    backends[0].factory.greeting = b"welcome"
    lb = await startLB(backends[:1])
    client = connectClient(lb.port)
    protocol = await client.opened
    protocol.sendMessage(b"ping-1")
    assert await client.messages.get() == (b"welcome", False)
    assert await client.messages.get() == (b"ping-1", False)


@pytest_twisted.ensureDeferred
async def test_messagesKeepTheirOrder(backends, startLB):
    """
    Many messages sent back to back arrive in the order they were sent.
    """
    lb = await startLB(backends[:1])
    client = connectClient(lb.port)
    protocol = await client.opened
    for n in range(500):
        protocol.sendMessage(str(n).encode(), n % 2 == 1)
    for n in range(500):
        assert await client.messages.get() == (str(n).encode(), n % 2 == 1)


@pytest_twisted.ensureDeferred
async def test_subprotocolChosenByBackend(backends, startLB):
    """
    The client's requested subprotocols reach the backend, and the one the
    backend chooses is the one the client gets.
    """
    lb = await startLB(backends[:1])
    client = connectClient(lb.port, protocols=["quotes.v3", "quotes.v2", "quotes.v1"])
    await client.opened
    assert client.response.protocol == "quotes.v2"
    assert backends[0].factory.requests[0].protocols == [
        "quotes.v3",
        "quotes.v2",
        "quotes.v1",
    ]


@pytest_twisted.ensureDeferred
async def test_noSubprotocolWhenBackendPicksNone(backends, startLB):
    """
    When the backend accepts none of the requested subprotocols, the client's
    handshake completes without one, as it would directly.
    """
    lb = await startLB(backends[:1])
    client = connectClient(lb.port, protocols=["chat"])
    await client.opened
    assert client.response.protocol is None


@pytest_twisted.ensureDeferred
async def test_requestDetailsForwarded(backends, startLB):
    """
    The backend sees the client's path and query string, Origin, Cookie,
    Authorization and other end-to-end headers, plus X-Forwarded-For,
    X-Forwarded-Proto and X-Real-IP describing the client.
    """
    lb = await startLB(backends[:1])
    client = connectClient(
        lb.port,
        path="/stream/quotes?symbols=AAPL,MSFT&depth=2",
        origin="https://dashboard.example",
        headers={
            "Cookie": "session=abc123",
            "Authorization": "Bearer t0ken",
            "X-Request-Id": "req-42",
        },
    )
    await client.opened
    factory = backends[0].factory
    assert factory.uris == ["/stream/quotes?symbols=AAPL,MSFT&depth=2"]
    headers = factory.requests[0].headers
    assert headers["origin"] == "https://dashboard.example"
    assert headers["cookie"] == "session=abc123"
    assert headers["authorization"] == "Bearer t0ken"
    assert headers["x-request-id"] == "req-42"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-real-ip"] == "127.0.0.1"


@pytest_twisted.ensureDeferred
async def test_forwardedForCannotBeSpoofed(backends, startLB):
    """
    An X-Forwarded-For sent by a client that is not a trusted proxy is
    replaced by the client's own address.
    """
    lb = await startLB(backends[:1])
    client = connectClient(lb.port, headers={"X-Forwarded-For": "6.6.6.6"})
    await client.opened
    headers = backends[0].factory.requests[0].headers
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-real-ip"] == "127.0.0.1"


@pytest_twisted.ensureDeferred
async def test_trustedProxyForwardedForIsExtended(backends, startLB):
    """
    Behind a trusted proxy, the incoming X-Forwarded-For is kept with the
    proxy appended, and X-Real-IP is the client the proxy named.
    """
    from ipaddress import ip_network

    lb = await startLB(backends[:1], trustedProxies=[ip_network("127.0.0.0/8")])
    client = connectClient(lb.port, headers={"X-Forwarded-For": "203.0.113.7"})
    await client.opened
    headers = backends[0].factory.requests[0].headers
    assert headers["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert headers["x-real-ip"] == "203.0.113.7"


@pytest_twisted.ensureDeferred
async def test_trafficIsCountedPerBackendAndDirection(backends, startLB):
    """
    Messages and payload bytes are counted on the backend that carried them,
    separately towards the backend and towards clients.
    """
    backends[0].factory.greeting = b"hi!"
    lb = await startLB(backends[:1])
    client = connectClient(lb.port)
    protocol = await client.opened
    await client.messages.get()
    protocol.sendMessage(b"12345", False)
    protocol.sendMessage(b"\x00" * 10, True)
    await client.messages.get()
    await client.messages.get()
    backend = lb.backend("backend-1")
    assert (backend.messagesToBackend, backend.bytesToBackend) == (2, 15)
    assert (backend.messagesToClient, backend.bytesToClient) == (3, 18)
