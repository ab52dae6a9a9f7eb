"""
Tests for the health semantics operators know from HAProxy: rise and fall
thresholds (L{Backend.recordHealth}), checks spread over the interval with
jitter (L{HealthChecker}, on a L{Clock}), and passive health from the
relay's connection attempts (L{Backend.recordAttempt}, end to end with real
backends on 127.0.0.1).
"""

from __future__ import annotations

from collections.abc import Iterator
from random import Random
from statistics import mean
from typing import Any

import pytest
import pytest_twisted
from helpers import RunningBackend, RunningLoadBalancer, connectClient, waitUntil
from test_health import INTERVAL, TIMEOUT, ControlledProbe, makePool
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent, globalLogPublisher

from wslb_twisted.backends import Backend, BackendPool
from wslb_twisted.config import Settings
from wslb_twisted.health import HEALTH_CHANGED, HealthChecker
from wslb_twisted.service import LoadBalancerService

RISE = 2
FALL = 3
START = 1_700_000_000.0


def freshBackend() -> Backend:
    """
    A backend that has never been checked.
    """
    return Backend(id="backend-1", host="127.0.0.1", port=3001)


def recordChecks(backend: Backend, *results: bool) -> list[bool]:
    """
    Record one check per result, a second apart, with L{RISE} and L{FALL};
    return the backend's health after each.
    """
    health = []
    for passed in results:
        when = START + len(health)
        backend.recordHealth(passed, when, rise=RISE, fall=FALL)
        health.append(backend.healthy)
    return health


# Rise and fall: the rule on the backend.


def test_firstPassingCheckBringsBackendIn() -> None:
    """
    At startup (never checked), one passing check puts a backend in rotation,
    whatever the rise threshold, so startup stays fast.
    """
    backend = freshBackend()
    assert backend.recordHealth(True, START, rise=RISE, fall=FALL)
    assert backend.healthy


def test_firstFailingCheckKeepsBackendOut() -> None:
    """
    At startup, one failing check keeps a backend out of rotation (it starts
    out): no change of state, one failure counted.
    """
    backend = freshBackend()
    assert not backend.recordHealth(False, START, rise=RISE, fall=FALL)
    assert (backend.healthy, backend.consecutiveFailures) == (False, 1)


def test_healthyBackendLeavesAfterFallFailures() -> None:
    """
    A backend in rotation stays in through C{fall - 1} failing checks in a
    row and leaves on the C{fall}th.
    """
    backend = freshBackend()
    assert recordChecks(backend, True, False, False, False) == [
        True,
        True,
        True,
        False,
    ]


def test_passingCheckResetsTheFallCount() -> None:
    """
    A passing check between failing ones starts the count again: failures
    must be consecutive to take a backend out.
    """
    backend = freshBackend()
    health = recordChecks(backend, True, False, False, True, False, False)
    assert all(health)
    assert (backend.consecutiveFailures, backend.consecutivePasses) == (2, 0)


def test_unhealthyBackendComesBackAfterRisePasses() -> None:
    """
    A backend out of rotation stays out through C{rise - 1} passing checks
    in a row and comes back on the C{rise}th.
    """
    backend = freshBackend()
    assert recordChecks(backend, False, True, True) == [False, False, True]


def test_failingCheckResetsTheRiseCount() -> None:
    """
    A failing check between passing ones starts the count again.
    """
    backend = freshBackend()
    assert recordChecks(backend, False, True, False, True) == [False] * 4


def test_changesAreCountedAndTimed() -> None:
    """
    Only actual changes of state count in C{stateChanges} and move
    C{lastChange}; every check moves C{lastHealthCheck}.
    """
    backend = freshBackend()
    recordChecks(backend, True, False, False, False, True)
    assert backend.stateChanges == 2
    assert backend.lastChange == START + 3
    assert backend.lastHealthCheck == START + 4


def test_defaultThresholdsLetEachCheckDecide() -> None:
    """
    Without thresholds (rise and fall of 1), each check decides.
    """
    backend = freshBackend()
    backend.recordHealth(True, START)
    assert backend.recordHealth(False, START + 1)
    assert backend.recordHealth(True, START + 2)


# Rise and fall: the checker.


class ThresholdHarness:
    """
    A L{HealthChecker} with L{RISE} and L{FALL} over one backend, on a
    L{Clock}, with a L{ControlledProbe} and a captured log.
    """

    def __init__(self) -> None:
        self.pool = makePool(1)
        self.backend = self.pool.backends[0]
        self.clock = Clock()
        self.clock.advance(START)
        self.probe = ControlledProbe()
        self.events: list[dict[str, Any]] = []
        self.checker = HealthChecker(
            self.pool,
            INTERVAL,
            TIMEOUT,
            reactor=self.clock,
            probe=self.probe,
            rise=RISE,
            fall=FALL,
            random=Random(5),
        )
        self.checker.log = Logger(observer=self.events.append)

    def run(self, *results: bool) -> None:
        """
        Complete one check per result, letting one interval pass after each.
        """
        for passed in results:
            self.probe.finish(self.backend, passed)
            self.clock.advance(INTERVAL)

    def transitions(self) -> list[dict[str, Any]]:
        """
        The logged health changes.
        """
        return [e for e in self.events if e.get("event") == HEALTH_CHANGED]


@pytest.fixture
def thresholds() -> Iterator[ThresholdHarness]:
    """
    A started L{ThresholdHarness}, stopped afterwards.
    """
    harness = ThresholdHarness()
    harness.checker.startService()
    yield harness
    if harness.checker.running:
        harness.checker.stopService()


def test_checkerAppliesFall(thresholds: ThresholdHarness) -> None:
    """
    The checker takes a backend out after C{fall} failing checks in a row,
    not before.
    """
    thresholds.run(True, False, False)
    assert thresholds.backend.healthy
    thresholds.run(False)
    assert not thresholds.backend.healthy


def test_checkerAppliesRise(thresholds: ThresholdHarness) -> None:
    """
    The checker brings a backend back after C{rise} passing checks in a row,
    not before.
    """
    thresholds.run(False, True)
    assert not thresholds.backend.healthy
    thresholds.run(True)
    assert thresholds.backend.healthy


def test_eachThresholdTransitionLoggedOnce(thresholds: ThresholdHarness) -> None:
    """
    Checks that do not cross a threshold log nothing: startup, going out and
    coming back are one event each.
    """
    thresholds.run(True, False, False, False, False, True, True, True)
    assert [(e["previousState"], e["state"]) for e in thresholds.transitions()] == [
        ("unknown", "healthy"),
        ("healthy", "unhealthy"),
        ("unhealthy", "healthy"),
    ]


def test_transitionEventCarriesTheCounts(thresholds: ThresholdHarness) -> None:
    """
    The event of a change carries the consecutive counts that caused it, and
    its message says how many checks in a row.
    """
    thresholds.run(True, False, False, False)
    event = thresholds.transitions()[-1]
    assert {
        key: event[key]
        for key in ("source", "consecutiveFailures", "consecutivePasses", "reason")
    } == {
        "source": "check",
        "consecutiveFailures": FALL,
        "consecutivePasses": 0,
        "reason": "check failed",
    }
    assert formatEvent(event) == (
        "backend backend-1 (127.0.0.1:3001) is now unhealthy: check failed "
        f"({FALL} failed checks in a row)"
    )


def test_thresholdsFromSettings() -> None:
    """
    The load balancer's checker takes rise and fall from the settings.
    """
    settings = Settings(backends=[freshBackend()], healthRise=4, healthFall=5)
    service = LoadBalancerService(settings, Clock())
    assert (service.checker.rise, service.checker.fall) == (4, 5)


def test_supervisorThresholdsFromSettings() -> None:
    """
    With workers, the supervisor's checker takes rise and fall from the
    settings too.
    """
    from wslb_twisted.supervisor import SupervisorService

    settings = Settings(
        backends=[freshBackend()], healthRise=4, healthFall=5, workers=2
    )
    service = SupervisorService(settings, Clock())
    assert (service.checker.rise, service.checker.fall) == (4, 5)


@pytest.mark.parametrize(
    ("rise", "fall", "jitter"), [(0, 1, 0.1), (1, 0, 0.1), (1, 1, -0.1), (1, 1, 0.6)]
)
def test_badThresholdsRejected(rise: int, fall: int, jitter: float) -> None:
    """
    Thresholds below 1, or a jitter outside [0, 0.5], are programming
    errors.
    """
    with pytest.raises(ValueError):
        HealthChecker(
            makePool(1),
            INTERVAL,
            TIMEOUT,
            reactor=Clock(),
            probe=ControlledProbe(),
            rise=rise,
            fall=fall,
            jitter=jitter,
        )


# Jitter: checks spread over the interval.


class TimedProbe:
    """
    A probe that passes at once and notes when each backend was checked.

    @ivar times: the clock's time of each check, by backend id.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.times: dict[str, list[float]] = {}

    def __call__(self, backend: Backend) -> Deferred[bool]:
        self.times.setdefault(backend.id, []).append(self.clock.seconds())
        return succeed(True)


def spreadChecker(
    count: int, jitter: float = 0.1, seed: int = 7
) -> tuple[HealthChecker, TimedProbe, Clock]:
    """
    A started checker of C{count} backends on a L{Clock} at 0, with a
    L{TimedProbe} and a seeded source of jitter.
    """
    clock = Clock()
    probe = TimedProbe(clock)
    checker = HealthChecker(
        makePool(count),
        INTERVAL,
        TIMEOUT,
        reactor=clock,
        probe=probe,
        jitter=jitter,
        random=Random(seed),
    )
    checker.log = Logger(observer=lambda event: None)
    checker.startService()
    return checker, probe, clock


STEP = 1 / 64
"""
Seconds per step of L{advanceInSteps}: a power of two, so that the steps add
up to the rounds' start times exactly.
"""


def advanceInSteps(clock: Clock, seconds: float, step: float = STEP) -> None:
    """
    Let C{seconds} pass in small steps, so each call runs at its own time
    (late by less than a step).
    """
    for _ in range(round(seconds / step)):
        clock.advance(step)


def test_startupChecksEveryBackendAtOnce() -> None:
    """
    The first round is not spread: every backend is checked the moment the
    checker starts, so clients wait at most one check at startup.
    """
    checker, probe, clock = spreadChecker(4)
    assert {name: times for name, times in probe.times.items()} == {
        f"backend-{n}": [0.0] for n in range(1, 5)
    }
    assert checker.whenFirstRoundDone().called
    checker.stopService()


def test_backendsCheckedAtDifferentTimes() -> None:
    """
    After startup, the backends of a round are checked at different moments
    within the interval rather than all at once.
    """
    checker, probe, clock = spreadChecker(4)
    advanceInSteps(clock, INTERVAL)
    secondChecks = [probe.times[f"backend-{n}"][1] for n in range(1, 5)]
    assert len(set(secondChecks)) == 4
    assert all(0 < t < INTERVAL for t in secondChecks)
    checker.stopService()


def test_withoutJitterChecksAreEvenlySpread() -> None:
    """
    Without jitter, backend M{i} of M{n} is checked M{(i + 1/2)/n} of the
    way into each round.
    """
    checker, probe, clock = spreadChecker(4, jitter=0.0)
    advanceInSteps(clock, 2 * INTERVAL, step=0.25)
    assert [probe.times[f"backend-{n}"][1:] for n in range(1, 5)] == [
        pytest.approx([1.25, 11.25]),
        pytest.approx([3.75, 13.75]),
        pytest.approx([6.25, 16.25]),
        pytest.approx([8.75, 18.75]),
    ]
    checker.stopService()


def test_jitterStaysWithinTenPercent() -> None:
    """
    Each check moves from its even place in the round by at most a tenth of
    the interval, and not always by the same amount.
    """
    checker, probe, clock = spreadChecker(3)
    rounds = 50
    advanceInSteps(clock, rounds * INTERVAL)
    offsets = []
    for index in range(3):
        place = (index + 0.5) * INTERVAL / 3
        times = probe.times[f"backend-{index + 1}"][1:]
        offsets += [t - round_ * INTERVAL - place for round_, t in enumerate(times)]
    assert all(-0.1 * INTERVAL <= offset <= 0.1 * INTERVAL + STEP for offset in offsets)
    assert len({round(offset, 2) for offset in offsets}) > 10
    checker.stopService()


def test_everyBackendCheckedOncePerIntervalOnAverage() -> None:
    """
    Spread and jitter do not change how often a backend is checked: over
    many intervals, once per interval each, a mean interval apart.
    """
    checker, probe, clock = spreadChecker(5, seed=11)
    rounds = 200
    clock.pump([INTERVAL / 8] * (8 * rounds))
    for times in probe.times.values():
        assert len(times) == rounds + 1
        regular = times[1:]
        gaps = [later - earlier for earlier, later in zip(regular, regular[1:])]
        assert mean(gaps) == pytest.approx(INTERVAL, rel=0.01)
    checker.stopService()


def test_schedulingSurvivesAnError() -> None:
    """
    An error while scheduling a round's checks is logged, and the next round
    is scheduled as usual.
    """

    class BrokenOnce(Random):
        broken = True

        def uniform(self, a: float, b: float) -> float:
            if self.broken:
                self.broken = False
                raise RuntimeError("random bug")
            return super().uniform(a, b)

    clock = Clock()
    probe = TimedProbe(clock)
    events: list[dict[str, Any]] = []
    checker = HealthChecker(
        makePool(1), INTERVAL, TIMEOUT, reactor=clock, probe=probe, random=BrokenOnce()
    )
    checker.log = Logger(observer=events.append)
    checker.startService()
    advanceInSteps(clock, 2 * INTERVAL)
    assert len(probe.times["backend-1"]) == 2
    assert any(e.get("log_failure") is not None for e in events)
    checker.stopService()


def test_backendLeavingThePoolIsNotChecked() -> None:
    """
    A backend removed from the pool before its moment in the round is not
    checked.
    """
    checker, probe, clock = spreadChecker(2)
    pool: BackendPool = checker.pool
    del pool.backends[1]
    advanceInSteps(clock, INTERVAL)
    assert (len(probe.times["backend-1"]), len(probe.times["backend-2"])) == (2, 1)
    checker.stopService()


# Passive health: the rule on the backend.


def healthyBackend() -> Backend:
    """
    A backend in rotation after a passing check.
    """
    backend = freshBackend()
    backend.recordHealth(True, START, rise=RISE, fall=FALL)
    return backend


def test_failedAttemptsTakeBackendOutAfterFall() -> None:
    """
    A backend in rotation leaves it on its C{fall}th failed connection
    attempt in a row, not before.
    """
    backend = healthyBackend()
    outcomes = [backend.recordAttempt(False, START + 1, FALL) for _ in range(FALL)]
    assert outcomes == [False] * (FALL - 1) + [True]
    assert not backend.healthy
    assert backend.lastChange == START + 1


def test_successfulAttemptResetsTheCount() -> None:
    """
    A successful attempt between failed ones starts the count again.
    """
    backend = healthyBackend()
    for succeeded in [False, False, True, False, False]:
        backend.recordAttempt(succeeded, START + 1, FALL)
    assert backend.healthy
    assert backend.consecutiveConnectFailures == 2


def test_passivelyEjectedBackendNeedsRisePasses() -> None:
    """
    After failed attempts took it out, a backend needs C{rise} passing
    checks in a row to come back, even if its checks were passing all along.
    """
    backend = healthyBackend()
    backend.recordHealth(True, START + 1, rise=RISE, fall=FALL)
    for _ in range(FALL):
        backend.recordAttempt(False, START + 2, FALL)
    assert recordChecks(backend, True, True) == [False, True]


def test_comingBackClearsTheAttemptCount() -> None:
    """
    A backend that comes back starts with no failed attempts counted, so one
    more failure does not take it out again at once.
    """
    backend = healthyBackend()
    for _ in range(FALL + 2):
        backend.recordAttempt(False, START + 1, FALL)
    recordChecks(backend, True, True)
    assert backend.consecutiveConnectFailures == 0
    assert not backend.recordAttempt(False, START + 3, FALL)
    assert backend.healthy


def test_failedAttemptsOnUnhealthyBackendChangeNothing() -> None:
    """
    Failed attempts on a backend already out of rotation (attempts started
    before it left) change no state.
    """
    backend = freshBackend()
    backend.recordHealth(False, START, rise=RISE, fall=FALL)
    assert not any(backend.recordAttempt(False, START, FALL) for _ in range(5))
    assert (backend.healthy, backend.stateChanges) == (False, 0)


# Passive health end to end, and existing clients.


@pytest_twisted.async_yield_fixture
async def healthEvents() -> Any:
    """
    The health changes logged while the test runs.
    """
    events: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("event") == HEALTH_CHANGED:
            events.append(event)

    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


async def refuseConnections(backend: RunningBackend) -> None:
    """
    Make C{backend}'s WebSocket port refuse new connections (its open
    connections and its health endpoint stay).
    """
    await backend.port.stopListening()


async def connectClients(lb: RunningLoadBalancer, count: int) -> list[Any]:
    """
    Connect C{count} clients one after the other, each until it is open.
    """
    clients = []
    for _ in range(count):
        client = connectClient(lb.port)
        await client.opened
        clients.append(client)
    return clients


def passiveEvents(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """
    The logged changes caused by connection attempts.
    """
    return [e for e in events if e.get("source") == "connections"]


@pytest_twisted.ensureDeferred
async def test_refusingBackendLeavesRotationAfterFallAttempts(
    backends: list[RunningBackend], startLB: Any, healthEvents: list[Any]
) -> None:
    """
    A backend whose WebSocket port refuses connections while its health
    endpoint passes is taken out of rotation after C{healthFall} failed
    attempts (the clients are served by the others meanwhile), and logged
    once.
    """
    lb = await startLB(backends[:2], healthFall=2, healthRise=2)
    await refuseConnections(backends[0])
    await connectClients(lb, 4)
    backend = lb.backend("backend-1")
    assert not backend.healthy
    assert backend.connectFailures == 2
    [event] = passiveEvents(healthEvents)
    assert (event["backendId"], event["previousState"], event["state"]) == (
        "backend-1",
        "healthy",
        "unhealthy",
    )
    assert event["reason"] == "2 consecutive connection failures"
    assert event["lastFailure"].startswith("Connection was refused")


@pytest_twisted.ensureDeferred
async def test_passivelyEjectedBackendGetsNoNewClients(
    backends: list[RunningBackend], startLB: Any
) -> None:
    """
    Once failed attempts have taken a backend out, new clients no longer try
    it: no further attempt fails.
    """
    lb = await startLB(backends[:2], healthFall=2, healthRise=2)
    await refuseConnections(backends[0])
    backend = lb.backend("backend-1")
    await connectClients(lb, 4)
    failures = backend.connectFailures
    await connectClients(lb, 6)
    assert backend.connectFailures == failures
    assert len(backends[1].factory.clients) == 10


@pytest_twisted.ensureDeferred
async def test_passingChecksBringPassivelyEjectedBackendBack(
    backends: list[RunningBackend], startLB: Any, healthEvents: list[Any]
) -> None:
    """
    A backend taken out by failed attempts comes back after C{healthRise}
    passing active checks in a row.
    """
    lb = await startLB(backends[:2], healthFall=2, healthRise=2, healthInterval=0.2)
    backends[0].factory.refuseHandshake = True
    backend = lb.backend("backend-1")
    await connectClients(lb, 4)
    await waitUntil(lambda: len(passiveEvents(healthEvents)) == 1)
    backends[0].factory.refuseHandshake = False
    await waitUntil(lambda: backend.healthy)
    comeback = healthEvents[-1]
    assert (comeback["source"], comeback["previousState"], comeback["state"]) == (
        "check",
        "unhealthy",
        "healthy",
    )
    assert comeback["consecutivePasses"] == 2
    client = connectClient(lb.port)
    await client.opened
    await waitUntil(lambda: len(backends[0].factory.clients) == 1)


@pytest_twisted.ensureDeferred
async def test_cleanClosesDoNotCountAsFailures(
    backends: list[RunningBackend], startLB: Any
) -> None:
    """
    Open connections that the backend closes, cleanly or not, are not failed
    attempts: the backend stays in rotation with no failure counted.
    """
    lb = await startLB(backends[:1], healthFall=1)
    for command in [b"close:1000:bye", b"close:4000:app", b"drop"]:
        client = connectClient(lb.port)
        protocol = await client.opened
        protocol.sendMessage(command)
        await client.closed
    backend = lb.backend("backend-1")
    assert backend.healthy
    assert (backend.connectFailures, backend.consecutiveConnectFailures) == (0, 0)


async def echoes(client: Any) -> bool:
    """
    Whether C{client} still gets its messages echoed by its backend.
    """
    client.protocolInstance.sendMessage(b"still there?")
    payload, _ = await client.messages.get()
    return bool(payload == b"still there?")


@pytest_twisted.ensureDeferred
async def test_failedChecksKeepExistingClients(
    backends: list[RunningBackend], startLB: Any
) -> None:
    """
    A backend that fails its checks leaves the rotation, but its existing
    clients are not cut: they keep talking to it.
    """
    lb = await startLB(backends[:1], healthFall=2, healthInterval=0.2)
    [client] = await connectClients(lb, 1)
    backends[0].health.code = 500
    backend = lb.backend("backend-1")
    await waitUntil(lambda: not backend.healthy)
    assert await echoes(client)
    assert not client.closed.called


@pytest_twisted.ensureDeferred
async def test_failedAttemptsKeepExistingClients(
    backends: list[RunningBackend], startLB: Any
) -> None:
    """
    A backend taken out by failed connection attempts keeps its existing
    clients too.
    """
    lb = await startLB(backends[:2], healthFall=2, algorithm="round-robin")
    clients = await connectClients(lb, 2)
    await waitUntil(lambda: len(backends[0].factory.clients) == 1)
    await refuseConnections(backends[0])
    await connectClients(lb, 4)
    assert not lb.backend("backend-1").healthy
    assert len(backends[0].factory.clients) == 1
    for client in clients:
        assert await echoes(client)
        assert not client.closed.called
