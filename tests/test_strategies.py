"""
Tests for L{wslb_twisted.strategies} and the strategy plugins.
"""

from __future__ import annotations

import random
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from zope.interface.verify import verifyObject

from wslb_twisted.backends import Backend
from wslb_twisted.interfaces import IStrategy, IStrategyFactory
from wslb_twisted.plugin import availableStrategies
from wslb_twisted.strategies import (
    IPHashStrategy,
    LeastConnectionsStrategy,
    RoundRobinStrategy,
    WeightedStrategy,
)

CLIENT = "203.0.113.7"


def makeBackends(*weights: int) -> list[Backend]:
    """
    Healthy backends C{backend-1}, C{backend-2}, ... on localhost:3001, ...

    @param weights: one weight per backend.
    """
    return [
        Backend(
            id=f"backend-{number}",
            host="localhost",
            port=3000 + number,
            weight=weight,
            healthy=True,
        )
        for number, weight in enumerate(weights, start=1)
    ]


def pickIds(strategy: IStrategy, backends: Sequence[Backend], count: int) -> list[str]:
    """
    The ids of C{count} successive picks from the same eligible backends.
    """
    return [strategy.pick(backends, CLIENT).id for _ in range(count)]


def addresses(count: int) -> list[str]:
    """
    C{count} distinct IPv4 client addresses.
    """
    return [f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}" for n in range(count)]


# Every strategy


@pytest.mark.parametrize(
    "strategyClass",
    [RoundRobinStrategy, LeastConnectionsStrategy, WeightedStrategy, IPHashStrategy],
)
def test_strategiesProvideIStrategy(strategyClass: type) -> None:
    """
    Each built-in strategy provides L{IStrategy}, with its name.
    """
    assert verifyObject(IStrategy, strategyClass())


@pytest.mark.parametrize(
    "strategyClass",
    [RoundRobinStrategy, LeastConnectionsStrategy, WeightedStrategy, IPHashStrategy],
)
def test_strategiesPickTheOnlyBackend(strategyClass: type) -> None:
    """
    With one eligible backend, every strategy picks it.
    """
    [only] = makeBackends(3)
    strategy = strategyClass()
    assert [strategy.pick([only], address) for address in addresses(5)] == [only] * 5


# Round-robin


def test_roundRobinTakesTurnsInOrder() -> None:
    """
    Round-robin gives one connection to each backend in list order, over and
    over.
    """
    backends = makeBackends(1, 1, 1)
    assert pickIds(RoundRobinStrategy(), backends, 7) == [
        "backend-1",
        "backend-2",
        "backend-3",
        "backend-1",
        "backend-2",
        "backend-3",
        "backend-1",
    ]


def test_roundRobinIgnoresWeight() -> None:
    """
    Round-robin gives each backend one connection per turn whatever its
    weight.
    """
    backends = makeBackends(5, 1)
    assert pickIds(RoundRobinStrategy(), backends, 4) == [
        "backend-1",
        "backend-2",
        "backend-1",
        "backend-2",
    ]


def test_roundRobinSkipsBackendThatLeft() -> None:
    """
    When the next backend in turn leaves the rotation, the one after it is
    next.
    """
    a, b, c = makeBackends(1, 1, 1)
    strategy = RoundRobinStrategy()
    assert strategy.pick([a, b, c], CLIENT) is a
    assert strategy.pick([a, c], CLIENT) is c
    assert strategy.pick([a, c], CLIENT) is a


def test_roundRobinContinuesWhenLastPickedLeaves() -> None:
    """
    When the backend picked last leaves the rotation, the backend after it in
    list order is next, not the first in the list.
    """
    a, b, c = makeBackends(1, 1, 1)
    strategy = RoundRobinStrategy()
    strategy.pick([a, b, c], CLIENT)
    assert strategy.pick([a, b, c], CLIENT) is b
    assert strategy.pick([a, c], CLIENT) is c


def test_roundRobinWrapsWhenLastPickedWasLast() -> None:
    """
    When the backend picked last was the last in the list and has left, the
    turn wraps to the first.
    """
    a, b, c = makeBackends(1, 1, 1)
    strategy = RoundRobinStrategy()
    pickIds(strategy, [a, b, c], 3)
    assert strategy.pick([a, b], CLIENT) is a


def test_roundRobinReturningBackendTakesItsPlace() -> None:
    """
    A backend that returns to the rotation gets its turn at its place in the
    list order.
    """
    a, b, c = makeBackends(1, 1, 1)
    strategy = RoundRobinStrategy()
    strategy.pick([a, b, c], CLIENT)
    assert strategy.pick([a, c], CLIENT) is c
    assert strategy.pick([a, c], CLIENT) is a
    assert strategy.pick([a, b, c], CLIENT) is b
    assert strategy.pick([a, b, c], CLIENT) is c


def test_roundRobinBackendFirstSeenLateTakesItsPlace() -> None:
    """
    A backend that was not healthy when the strategy started (so never seen
    before) takes its turn at its place in the list order when it joins.
    """
    a, b, c = makeBackends(1, 1, 1)
    strategy = RoundRobinStrategy()
    assert strategy.pick([a, c], CLIENT) is a
    assert [strategy.pick([a, b, c], CLIENT) for _ in range(4)] == [b, c, a, b]


def test_roundRobinBackendFirstSeenLateBetweenAbsentOnes() -> None:
    """
    A backend seen for the first time while its neighbour is out of rotation
    still takes its place after that neighbour: with the list a, b, c, after
    a was picked from a, c and then b is picked from b, c, c comes after b.
    """
    a, b, c = makeBackends(1, 1, 1)
    strategy = RoundRobinStrategy()
    assert strategy.pick([a, c], CLIENT) is a
    assert strategy.pick([b, c], CLIENT) is b
    assert [strategy.pick([a, b, c], CLIENT) for _ in range(3)] == [c, a, b]


def test_roundRobinRetryDoesNotDisturbTurns() -> None:
    """
    A retry (the tried backend excluded) takes the next backend, and the next
    client carries on from there.
    """
    a, b, c = makeBackends(1, 1, 1)
    strategy = RoundRobinStrategy()
    assert strategy.pick([a, b, c], CLIENT) is a
    assert strategy.pick([b, c], CLIENT) is b
    assert strategy.pick([a, b, c], CLIENT) is c


def test_roundRobinIsEvenWhileBackendsComeAndGo() -> None:
    """
    While backends leave and return, each run of as many picks as there are
    eligible backends gives every eligible backend exactly one connection.
    """
    backends = makeBackends(1, 1, 1, 1)
    strategy = RoundRobinStrategy()
    for step in range(12):
        eligible = [b for i, b in enumerate(backends) if (step + i) % 4 != 0]
        turn = [strategy.pick(eligible, CLIENT) for _ in eligible]
        assert sorted(map(id, turn)) == sorted(map(id, eligible))


def test_roundRobinMatchesFullRotationOverRandomSubsets() -> None:
    """
    Once every backend has been eligible at the same time, round-robin over
    any sequence of eligible subsets picks the first eligible backend after
    the previous pick in the configured order, wrapping around.
    """
    backends = makeBackends(*[1] * 6)
    strategy = RoundRobinStrategy()
    previous = strategy.pick(backends, CLIENT)
    assert previous is backends[0]
    generator = random.Random(1)
    for _ in range(2000):
        eligible = [b for b in backends if generator.random() < 0.6] or backends[:1]
        after = backends.index(previous)
        expected = min(eligible, key=lambda b: (backends.index(b) - after - 1) % 6)
        previous = strategy.pick(eligible, CLIENT)
        assert previous is expected


# Least-connections


def test_leastConnectionsPicksFewest() -> None:
    """
    Least-connections picks the backend with the fewest active connections.
    """
    a, b, c = makeBackends(1, 1, 1)
    a.activeConnections, b.activeConnections, c.activeConnections = 4, 2, 3
    assert LeastConnectionsStrategy().pick([a, b, c], CLIENT) is b


def test_leastConnectionsRelativeToWeight() -> None:
    """
    Least-connections compares active connections relative to weight: a
    backend of weight 3 with 2 connections is less loaded than one of weight
    1 with 1.
    """
    a, b = makeBackends(1, 3)
    a.activeConnections, b.activeConnections = 1, 2
    assert LeastConnectionsStrategy().pick([a, b], CLIENT) is b


def test_leastConnectionsExactRatios() -> None:
    """
    Loads that are equal relative to weight tie exactly (1 of 3 and 2 of 6),
    and a slightly higher load loses.
    """
    a, b, c = makeBackends(3, 6, 3)
    a.activeConnections, b.activeConnections, c.activeConnections = 1, 2, 2
    strategy = LeastConnectionsStrategy()
    assert [strategy.pick([a, b, c], CLIENT) for _ in range(4)] == [a, b, a, b]


def test_leastConnectionsTiesTakeTurns() -> None:
    """
    Backends with equal loads take turns in list order.
    """
    backends = makeBackends(1, 1, 1)
    assert pickIds(LeastConnectionsStrategy(), backends, 4) == [
        "backend-1",
        "backend-2",
        "backend-3",
        "backend-1",
    ]


def test_leastConnectionsTieTurnsSkipBusierBackends() -> None:
    """
    The turn among tied backends continues after the last pick even when the
    set of tied backends changes.
    """
    a, b, c = makeBackends(1, 1, 1)
    strategy = LeastConnectionsStrategy()
    assert strategy.pick([a, b, c], CLIENT) is a
    b.activeConnections = 1
    assert strategy.pick([a, b, c], CLIENT) is c
    b.activeConnections = 0
    assert strategy.pick([a, b, c], CLIENT) is a


def test_leastConnectionsSharesByWeightAsConnectionsOpen() -> None:
    """
    As connections open and stay open, least-connections spreads them in
    proportion to weight.
    """
    backends = makeBackends(1, 2, 3)
    strategy = LeastConnectionsStrategy()
    for _ in range(60):
        strategy.pick(backends, CLIENT).connectionOpened()
    assert [b.activeConnections for b in backends] == [10, 20, 30]


# Weighted


def test_weightedInterleaves() -> None:
    """
    Weights 3, 1, 1 give a, b, a, c, a, and again, never a, a, a, b, c.
    """
    backends = makeBackends(3, 1, 1)
    cycle = ["backend-1", "backend-2", "backend-1", "backend-3", "backend-1"]
    assert pickIds(WeightedStrategy(), backends, 10) == cycle * 2


def test_weightedFiveOneOne() -> None:
    """
    Weights 5, 1, 1 give nginx's sequence a, a, b, a, c, a, a.
    """
    backends = makeBackends(5, 1, 1)
    assert pickIds(WeightedStrategy(), backends, 7) == [
        "backend-1",
        "backend-1",
        "backend-2",
        "backend-1",
        "backend-3",
        "backend-1",
        "backend-1",
    ]


@pytest.mark.parametrize(
    "weights", [(3, 1, 1), (5, 1, 1), (1, 1, 1), (4, 3, 2), (7, 1), (2, 5, 3, 1)]
)
def test_weightedExactOverAnyWindow(weights: tuple[int, ...]) -> None:
    """
    Over any window of sum(weights) consecutive picks, each backend gets
    exactly its weight.
    """
    backends = makeBackends(*weights)
    total = sum(weights)
    picks = pickIds(WeightedStrategy(), backends, total * 4)
    expected = {b.id: b.weight for b in backends}
    for start in range(len(picks) - total + 1):
        assert Counter(picks[start : start + total]) == expected


def test_weightedSharesByWeightAfterBackendLeaves() -> None:
    """
    When a backend leaves, the others share the connections by their weights.
    """
    a, b, c = makeBackends(3, 1, 2)
    strategy = WeightedStrategy()
    pickIds(strategy, [a, b, c], 4)
    counts = Counter(pickIds(strategy, [a, b], 400))
    assert abs(counts["backend-1"] - 300) <= 3
    assert abs(counts["backend-2"] - 100) <= 3


def test_weightedReturningBackendGetsItsShare() -> None:
    """
    A backend that returns to the rotation gets its share again.
    """
    a, b, c = makeBackends(3, 1, 2)
    strategy = WeightedStrategy()
    pickIds(strategy, [a, b, c], 3)
    pickIds(strategy, [a, b], 5)
    counts = Counter(pickIds(strategy, [a, b, c], 600))
    assert abs(counts["backend-1"] - 300) <= 3
    assert abs(counts["backend-2"] - 100) <= 3
    assert abs(counts["backend-3"] - 200) <= 3


# ip-hash


def test_ipHashSameAddressSameBackend() -> None:
    """
    One address always lands on the same backend while the eligible set is
    unchanged.
    """
    backends = makeBackends(1, 1, 1)
    strategy = IPHashStrategy()
    for address in addresses(50):
        first = strategy.pick(backends, address)
        assert all(strategy.pick(backends, address) is first for _ in range(3))


def test_ipHashStableAcrossRestarts() -> None:
    """
    The mapping depends only on the backends' ids and addresses, so a new
    strategy over newly made but identical backends (a restart) maps every
    address to the same backend.
    """
    clients = addresses(200)
    first, firstBackends = IPHashStrategy(), makeBackends(1, 1, 1)
    second, secondBackends = IPHashStrategy(), makeBackends(1, 1, 1)
    before = [first.pick(firstBackends, address).id for address in clients]
    after = [second.pick(secondBackends, address).id for address in clients]
    assert before == after


def test_ipHashDistributes() -> None:
    """
    1000 distinct addresses over 3 equal backends give each between 20% and
    47% of them.
    """
    backends = makeBackends(1, 1, 1)
    strategy = IPHashStrategy()
    counts = Counter(strategy.pick(backends, a).id for a in addresses(1000))
    assert set(counts) == {"backend-1", "backend-2", "backend-3"}
    assert all(200 <= count <= 470 for count in counts.values()), counts


def test_ipHashDistributesIPv6() -> None:
    """
    IPv6 addresses that differ only in their last bits spread over the
    backends too.
    """
    backends = makeBackends(1, 1, 1)
    strategy = IPHashStrategy()
    counts = Counter(
        strategy.pick(backends, f"2001:db8::{n:x}").id for n in range(1000)
    )
    assert all(200 <= count <= 470 for count in counts.values()), counts


def test_ipHashRespectsWeight() -> None:
    """
    A backend of weight 2 receives about twice the addresses of a backend of
    weight 1.
    """
    backends = makeBackends(2, 1, 1)
    strategy = IPHashStrategy()
    counts = Counter(strategy.pick(backends, a).id for a in addresses(2000))
    assert 800 <= counts["backend-1"] <= 1200, counts


def test_ipHashRemovalMovesOnlyItsAddresses() -> None:
    """
    When a backend leaves, only the addresses that were on it move; every
    other address stays on its backend.
    """
    a, b, c = makeBackends(1, 1, 1)
    strategy = IPHashStrategy()
    clients = addresses(1000)
    before = {address: strategy.pick([a, b, c], address) for address in clients}
    after = {address: strategy.pick([a, c], address) for address in clients}
    moved = {address for address in clients if after[address] is not before[address]}
    assert moved == {address for address in clients if before[address] is b}
    assert all(after[address] in (a, c) for address in moved)


def test_ipHashRemovalSpreadsItsAddresses() -> None:
    """
    The addresses of a backend that leaves are spread over the remaining
    backends, not all sent to one.
    """
    a, b, c = makeBackends(1, 1, 1)
    strategy = IPHashStrategy()
    clients = [x for x in addresses(1000) if strategy.pick([a, b, c], x) is b]
    counts = Counter(strategy.pick([a, c], address).id for address in clients)
    assert min(counts["backend-1"], counts["backend-3"]) >= len(clients) // 5


def test_ipHashReturnRestoresAddresses() -> None:
    """
    When a backend returns, every address goes back to where it was before
    the backend left.
    """
    a, b, c = makeBackends(1, 1, 1)
    strategy = IPHashStrategy()
    clients = addresses(1000)
    before = [strategy.pick([a, b, c], address) for address in clients]
    for address in clients:
        strategy.pick([a, c], address)
    assert [strategy.pick([a, b, c], address) for address in clients] == before


def test_ipHashRetryPicksAnotherBackend() -> None:
    """
    A retry without the backend first picked gives the client the backend it
    would get were that one down.
    """
    a, b, c = makeBackends(1, 1, 1)
    strategy = IPHashStrategy()
    first = strategy.pick([a, b, c], CLIENT)
    rest = [x for x in (a, b, c) if x is not first]
    assert strategy.pick(rest, CLIENT) is IPHashStrategy().pick(rest, CLIENT)
    assert strategy.pick(rest, CLIENT) is not first


def test_ipHashBuildsRingOncePerEligibleSet(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    The hash ring for an eligible set is built once, not on every pick, and
    kept when another set is used in between (as during a retry).
    """
    a, b, c = makeBackends(1, 1, 1)
    strategy = IPHashStrategy()
    built: list[tuple[Backend, ...]] = []
    build = strategy._build

    def countingBuild(backends: tuple[Backend, ...]):  # type: ignore[no-untyped-def]
        built.append(backends)
        return build(backends)

    monkeypatch.setattr(strategy, "_build", countingBuild)
    for address in addresses(20):
        strategy.pick([a, b, c], address)
        strategy.pick([a, c], address)
    assert built == [(a, b, c), (a, c)]


# Plugins


def test_builtInStrategiesAvailableByName() -> None:
    """
    The four built-in strategies are found as plugins by their names, and
    each makes an L{IStrategy} provider with that name.
    """
    found = availableStrategies()
    expected = {
        "round-robin": RoundRobinStrategy,
        "least-connections": LeastConnectionsStrategy,
        "weighted": WeightedStrategy,
        "ip-hash": IPHashStrategy,
    }
    for name, strategyClass in expected.items():
        factory = found[name]
        assert verifyObject(IStrategyFactory, factory)
        strategy = factory()
        assert verifyObject(IStrategy, strategy)
        assert isinstance(strategy, strategyClass)
        assert strategy.name == name


def test_builtInStrategyPluginsMakeFreshState() -> None:
    """
    Each call of a strategy plugin makes a new strategy with its own state.
    """
    factory = availableStrategies()["round-robin"]
    first, second = factory(), factory()
    assert first is not second
    backends = makeBackends(1, 1)
    assert first.pick(backends, CLIENT) is second.pick(backends, CLIENT)


PLUGIN_MODULE = "twisted.plugins.thirdparty_strategy"

PLUGIN_SOURCE = textwrap.dedent(
    """\
    from zope.interface import implementer

    from wslb_twisted.interfaces import IStrategy
    from wslb_twisted.plugin import StrategyPlugin


    @implementer(IStrategy)
    class AlwaysLast:
        name = "always-last"

        def pick(self, backends, clientAddress):
            return backends[-1]


    alwaysLast = StrategyPlugin("always-last", AlwaysLast, "the last backend")
    """
)


@pytest.fixture
def thirdPartyPlugins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """
    A C{twisted/plugins/} directory outside wslb, on C{sys.path} and in
    C{twisted.plugins.__path__}, holding one strategy plugin module.

    C{twisted.plugins} computes its C{__path__} from C{sys.path} when first
    imported, so a directory added to C{sys.path} later (as here) must be
    added to C{__path__} too.
    """
    import twisted.plugins

    pluginDirectory = tmp_path / "twisted" / "plugins"
    pluginDirectory.mkdir(parents=True)
    (pluginDirectory / "thirdparty_strategy.py").write_text(PLUGIN_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(
        twisted.plugins,
        "__path__",
        [*twisted.plugins.__path__, str(pluginDirectory)],
    )
    try:
        yield pluginDirectory
    finally:
        sys.modules.pop(PLUGIN_MODULE, None)
        vars(twisted.plugins).pop(PLUGIN_MODULE.rpartition(".")[2], None)


def test_thirdPartyStrategyPlugin(thirdPartyPlugins: Path) -> None:
    """
    A strategy defined outside wslb, published by a module-level
    L{StrategyPlugin} in a C{twisted/plugins/} directory on C{sys.path}, is
    available by its name next to the built-in ones.
    """
    found = availableStrategies()
    strategy = found["always-last"]()
    assert verifyObject(IStrategy, strategy)
    assert type(strategy).__module__ == PLUGIN_MODULE
    backends = makeBackends(1, 1, 1)
    assert strategy.pick(backends, CLIENT) is backends[-1]
    assert {"round-robin", "least-connections", "weighted", "ip-hash"} <= set(found)
