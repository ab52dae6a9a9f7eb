"""
Each strategy's distribution rule, end to end through the load balancer.
"""

from __future__ import annotations

from collections import Counter

import pytest_twisted
from helpers import connectClient, waitUntil


def _servedBy(backends):
    """
    Which backend served each connection so far, by arrival order.
    """
    return {b.name: len(b.factory.requests) for b in backends}


async def _connect(lb, sourceAddress="127.0.0.1"):
    client = connectClient(lb.port, sourceAddress=sourceAddress)
    await client.opened
    return client


async def _whoServes(lb, backends, sourceAddress):
    before = _servedBy(backends)
    client = await _connect(lb, sourceAddress)
    after = _servedBy(backends)
    (name,) = [n for n in after if after[n] != before[n]]
    client.protocolInstance.sendClose(1000)
    await client.closed
    return name


@pytest_twisted.ensureDeferred
async def test_roundRobinTakesBackendsInTurn(backends, startLB):
    """
    Round-robin gives each backend one connection in turn, in list order.
    """
    lb = await startLB(backends, algorithm="round-robin")
    order = []
    for _ in range(6):
        order.append(await _whoServes(lb, backends, "127.0.0.1"))
    assert order == ["backend-1", "backend-2", "backend-3"] * 2


@pytest_twisted.ensureDeferred
async def test_roundRobinSkipsUnhealthyBackend(backends, startLB):
    """
    A backend out of rotation gets no new clients; the others share them.
    """
    lb = await startLB(backends, algorithm="round-robin")
    lb.backend("backend-2").healthy = False
    order = [await _whoServes(lb, backends, "127.0.0.1") for _ in range(4)]
    assert order == ["backend-1", "backend-3", "backend-1", "backend-3"]


@pytest_twisted.ensureDeferred
async def test_weightedInterleavesByWeight(backends, startLB):
    """
    Weights 3, 1, 1 give the smooth sequence a, b, a, c, a.
    """
    specs = [b.spec(weight=w) for b, w in zip(backends, (3, 1, 1))]
    lb = await startLB(specs, algorithm="weighted")
    order = [await _whoServes(lb, backends, "127.0.0.1") for _ in range(10)]
    assert (
        order == ["backend-1", "backend-2", "backend-1", "backend-3", "backend-1"] * 2
    )


@pytest_twisted.ensureDeferred
async def test_leastConnectionsFillsTheEmptiestBackend(backends, startLB):
    """
    Least-connections sends a new client to the backend with the fewest open
    connections: after backend-1 loses its clients, it gets the next ones.
    """
    lb = await startLB(backends, algorithm="least-connections")
    for _ in range(6):
        await _connect(lb)
    assert _servedBy(backends) == {"backend-1": 2, "backend-2": 2, "backend-3": 2}
    for server in list(backends[0].factory.clients):
        server.sendClose(1000)
    await waitUntil(lambda: lb.backend("backend-1").activeConnections == 0)
    await _connect(lb)
    await _connect(lb)
    assert lb.backend("backend-1").activeConnections == 2
    assert [b.activeConnections for b in lb.service.pool] == [2, 2, 2]


@pytest_twisted.ensureDeferred
async def test_ipHashKeepsEachAddressOnOneBackend(backends, startLB):
    """
    With ip-hash, each client address (here distinct 127.0.0.x source
    addresses) always lands on the same backend, and the addresses spread
    over all backends.
    """
    lb = await startLB(backends, algorithm="ip-hash")
    addresses = [f"127.0.0.{n}" for n in range(2, 32)]
    first = {a: await _whoServes(lb, backends, a) for a in addresses}
    again = {a: await _whoServes(lb, backends, a) for a in addresses}
    assert first == again
    assert set(first.values()) == {"backend-1", "backend-2", "backend-3"}


@pytest_twisted.ensureDeferred
async def test_ipHashMovesOnlyTheClientsOfAFailedBackend(backends, startLB):
    """
    When a backend leaves the rotation, only the addresses it served move;
    when it returns they come back.
    """
    lb = await startLB(backends, algorithm="ip-hash")
    addresses = [f"127.0.0.{n}" for n in range(2, 32)]
    before = {a: await _whoServes(lb, backends, a) for a in addresses}
    lb.backend("backend-2").healthy = False
    during = {a: await _whoServes(lb, backends, a) for a in addresses}
    moved = {a for a in addresses if before[a] != during[a]}
    assert moved == {a for a in addresses if before[a] == "backend-2"}
    assert "backend-2" not in during.values()
    lb.backend("backend-2").healthy = True
    after = {a: await _whoServes(lb, backends, a) for a in addresses}
    assert after == before
    assert Counter(before.values())["backend-2"] > 0
