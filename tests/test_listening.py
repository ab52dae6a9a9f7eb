"""
The client port's listen backlog.
"""

from __future__ import annotations

import pytest_twisted

from wslb_twisted.service import CLIENT_BACKLOG, withBacklog


def test_tcpEndpointsGetALargeBacklog():
    """
    A TCP endpoint string without a backlog gets wslb's, so bursts of
    clients do not overflow Twisted's default of 50.
    """
    assert withBacklog("tcp:3000") == f"tcp:3000:backlog={CLIENT_BACKLOG}"
    assert withBacklog("tcp6:3000:interface=\\:\\:1").endswith(
        f":backlog={CLIENT_BACKLOG}"
    )


def test_givenBacklogAndOtherEndpointsAreKept():
    """
    An endpoint string that gives its own backlog, or is not TCP, is kept.
    """
    assert withBacklog("tcp:3000:backlog=10") == "tcp:3000:backlog=10"
    assert withBacklog("unix:/run/wslb.sock") == "unix:/run/wslb.sock"


@pytest_twisted.ensureDeferred
async def test_clientPortListensWithTheBacklog(backends, startLB):
    """
    The running client port uses the larger backlog.
    """
    lb = await startLB(backends[:1])
    assert lb.service.clientListener.port.backlog == CLIENT_BACKLOG
