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
