"""
Health and balancing together: a backend failing its health endpoint leaves
the rotation and comes back, end to end with real HTTP health checks.
"""

from __future__ import annotations

import pytest_twisted
from helpers import connectClient, waitUntil


@pytest_twisted.ensureDeferred
async def test_unhealthyBackendLeavesAndRejoinsRotation(backends, startLB):
    """
    When a backend's health endpoint starts failing, new clients stop going
    to it while its existing client stays connected; when it passes again,
    it gets new clients again.
    """
    lb = await startLB(backends[:2], healthInterval=0.1, healthTimeout=1.0)
    first = connectClient(lb.port)
    firstProtocol = await first.opened
    assert len(backends[0].factory.requests) == 1

    backends[0].health.code = 500
    await waitUntil(lambda: not lb.backend("backend-1").healthy)
    for _ in range(4):
        client = connectClient(lb.port)
        await client.opened
    assert len(backends[0].factory.requests) == 1
    assert len(backends[1].factory.requests) == 4

    # The existing client was not cut.
    firstProtocol.sendMessage(b"still served")
    assert await first.messages.get() == (b"still served", False)

    backends[0].health.code = 200
    await waitUntil(lambda: lb.backend("backend-1").healthy)
    for _ in range(2):
        client = connectClient(lb.port)
        await client.opened
    assert len(backends[0].factory.requests) == 2


@pytest_twisted.ensureDeferred
async def test_clientsWaitForTheFirstHealthChecks(backends):
    """
    A client arriving before the first health checks have finished is not
    refused: its handshake waits for them.
    """
    from wslb_twisted.config import Settings
    from wslb_twisted.service import makeService

    settings = Settings(
        port="tcp:0:interface=127.0.0.1",
        monitorPort="tcp:0:interface=127.0.0.1",
        backends=[backends[0].spec()],
    )
    backends[0].health.hold()
    service = makeService(settings)
    service.privilegedStartService()
    service.startService()
    try:
        port = service.clientListener.port.getHost().port
        client = connectClient(port)
        await waitUntil(lambda: service.relay.sessions)
        await waitUntil(lambda: backends[0].health.held)
        assert not client.opened.called
        assert service.relay.refusals == {}
        backends[0].health.release()
        await client.opened
        assert len(backends[0].factory.requests) == 1
    finally:
        await service.stopService()
