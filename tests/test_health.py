"""
Tests for L{wslb_twisted.health}: the health checker, with a controlled probe
on a L{Clock}, and the default HTTP probe against real servers on 127.0.0.1.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionRefusedError, DNSLookupError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent, globalLogPublisher
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from twisted.web.client import ResponseNeverReceived
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from wslb_twisted.backends import Backend, BackendPool
from wslb_twisted.health import (
    HEALTH_CHANGED,
    HealthChecker,
    HealthCheckResult,
    describeFailure,
)

INTERVAL = 10.0
TIMEOUT = 3.0


def makePool(count: int = 3, host: str = "127.0.0.1") -> BackendPool:
    """
    A pool of C{count} backends C{backend-1} ... on consecutive ports.
    """
    return BackendPool(
        [
            Backend(id=f"backend-{n}", host=host, port=3000 + n)
            for n in range(1, count + 1)
        ]
    )


class ControlledProbe:
    """
    A probe whose checks the test completes by hand.

    @ivar calls: the backend of every check started, in order.
    @ivar pending: the unfired L{Deferred} of each backend's running check.
    """

    def __init__(self) -> None:
        self.calls: list[Backend] = []
        self.pending: dict[Backend, Deferred[bool]] = {}

    def __call__(self, backend: Backend) -> Deferred[bool]:
        self.calls.append(backend)
        d: Deferred[bool] = Deferred()
        self.pending[backend] = d
        return d

    def finish(self, backend: Backend, passed: bool) -> None:
        """
        Complete the running check of C{backend}.
        """
        self.pending.pop(backend).callback(passed)

    def finishAll(self, passed: bool) -> None:
        """
        Complete every running check with the same outcome.
        """
        for backend in list(self.pending):
            self.finish(backend, passed)

    def callsFor(self, backend: Backend) -> int:
        """
        How many checks of C{backend} were started.
        """
        return sum(1 for called in self.calls if called is backend)


class CheckerHarness:
    """
    A L{HealthChecker} on a L{Clock} with a L{ControlledProbe} and a captured
    log.
    """

    def __init__(self, pool: BackendPool) -> None:
        self.pool = pool
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.probe = ControlledProbe()
        self.events: list[dict[str, Any]] = []
        self.checker = HealthChecker(
            pool, INTERVAL, TIMEOUT, reactor=self.clock, probe=self.probe
        )
        self.checker.log = Logger(observer=self.events.append)

    def transitions(self) -> list[dict[str, Any]]:
        """
        The logged health changes.
        """
        return [e for e in self.events if e.get("event") == HEALTH_CHANGED]

    def nextRound(self) -> None:
        """
        Let one interval pass.
        """
        self.clock.advance(INTERVAL)


@pytest.fixture
def harness() -> Iterator[CheckerHarness]:
    """
    A checker over three backends, stopped afterwards.
    """
    harness = CheckerHarness(makePool(3))
    yield harness
    if harness.checker.running:
        harness.checker.stopService()


def test_firstCheckAtStartup(harness: CheckerHarness) -> None:
    """
    Starting the checker checks every backend at once, before any time
    passes, so they can be balanced to as soon as they pass.
    """
    harness.checker.startService()
    assert harness.probe.calls == list(harness.pool)


def test_backendsUnknownUntilChecked(harness: CheckerHarness) -> None:
    """
    Until its first check completes, a backend is out of rotation and has no
    time of last check.
    """
    harness.checker.startService()
    assert harness.pool.healthy() == []
    assert [b.lastHealthCheck for b in harness.pool] == [None, None, None]


def test_passingCheckPutsBackendInRotation(harness: CheckerHarness) -> None:
    """
    A backend that passes its check is in rotation, with the time of the
    check recorded from the reactor.
    """
    harness.checker.startService()
    first = harness.pool.backends[0]
    harness.probe.finish(first, True)
    assert harness.pool.healthy() == [first]
    assert first.lastHealthCheck == harness.clock.seconds()


def test_failedCheckTakesBackendOutOfRotation(harness: CheckerHarness) -> None:
    """
    When a healthy backend fails a check, it leaves the rotation and the
    others stay.
    """
    harness.checker.startService()
    harness.probe.finishAll(True)
    harness.nextRound()
    first, second, third = harness.pool
    harness.probe.finish(first, False)
    assert harness.pool.healthy() == [second, third]


def test_passingCheckBringsBackendBack(harness: CheckerHarness) -> None:
    """
    An unhealthy backend rejoins the rotation after one passing check.
    """
    harness.checker.startService()
    harness.probe.finishAll(False)
    harness.nextRound()
    first = harness.pool.backends[0]
    harness.probe.finish(first, True)
    assert harness.pool.healthy() == [first]


def test_checksRepeatEachInterval(harness: CheckerHarness) -> None:
    """
    Every interval each backend is checked again.
    """
    harness.checker.startService()
    harness.probe.finishAll(True)
    harness.nextRound()
    harness.probe.finishAll(True)
    harness.nextRound()
    assert [harness.probe.callsFor(b) for b in harness.pool] == [3, 3, 3]


def test_oneLogEventPerTransition(harness: CheckerHarness) -> None:
    """
    Only changes are logged: pass, pass, fail, fail, pass gives one event for
    becoming healthy, one for becoming unhealthy and one for recovering.
    """
    harness.checker.startService()
    backend = harness.pool.backends[0]
    for passed in [True, True, False, False, True]:
        harness.probe.finish(backend, passed)
        harness.nextRound()
    events = [e for e in harness.transitions() if e["backendId"] == "backend-1"]
    assert [(e["previousState"], e["state"]) for e in events] == [
        ("unknown", "healthy"),
        ("healthy", "unhealthy"),
        ("unhealthy", "healthy"),
    ]


def test_firstFailureIsLogged(harness: CheckerHarness) -> None:
    """
    A backend found down at startup is logged as unhealthy (from unknown),
    though its health flag did not change.
    """
    harness.checker.startService()
    harness.probe.finish(harness.pool.backends[1], False)
    [event] = harness.transitions()
    assert (event["backendId"], event["state"], event["previousState"]) == (
        "backend-2",
        "unhealthy",
        "unknown",
    )


def test_repeatedFailuresAreNotLoggedAgain(harness: CheckerHarness) -> None:
    """
    Further failed checks of an unhealthy backend log nothing: operators see
    each change once, and the failures are counted on the backend.
    """
    harness.checker.startService()
    backend = harness.pool.backends[0]
    harness.probe.finish(backend, False)
    harness.nextRound()
    harness.probe.finish(backend, False)
    later = [e for e in harness.events if e.get("backendId") == "backend-1"][1:]
    assert later == []
    assert len(harness.transitions()) == 1
    assert backend.healthCheckFailures == 2


def test_logEventIsStructured(harness: CheckerHarness) -> None:
    """
    A health change is one event carrying machine-readable keys and a
    readable message naming the backend, its address, its state and why.
    """
    harness.checker.startService()
    harness.probe.finish(harness.pool.backends[0], True)
    harness.nextRound()
    harness.probe.pending.pop(harness.pool.backends[0]).callback(
        HealthCheckResult(False, "HTTP 500")
    )
    event = harness.transitions()[-1]
    assert {k: event[k] for k in ("event", "backendId", "address", "healthy")} == {
        "event": "backend_health_changed",
        "backendId": "backend-1",
        "address": "127.0.0.1:3001",
        "healthy": False,
    }
    assert event["log_level"].name == "warn"
    assert formatEvent(event) == (
        "backend backend-1 (127.0.0.1:3001) is now unhealthy: HTTP 500"
    )


def test_failedProbeDeferredCountsAsFailure(harness: CheckerHarness) -> None:
    """
    A probe whose L{Deferred} fails marks the backend unhealthy, with the
    failure as the logged reason.
    """
    harness.checker.startService()
    backend = harness.pool.backends[0]
    harness.probe.pending.pop(backend).errback(ConnectionRefusedError())
    assert not backend.healthy
    assert harness.transitions()[0]["reason"] == "connection refused"


def test_probeRaisingDoesNotStopTheLoop() -> None:
    """
    A probe that raises synchronously counts as a failed check, and checking
    goes on at the next interval.
    """
    calls: list[Backend] = []

    def brokenProbe(backend: Backend) -> Deferred[bool]:
        calls.append(backend)
        raise RuntimeError("probe bug")

    clock = Clock()
    pool = makePool(1)
    checker = HealthChecker(pool, INTERVAL, TIMEOUT, reactor=clock, probe=brokenProbe)
    checker.log = Logger(observer=lambda event: None)
    checker.startService()
    clock.advance(INTERVAL)
    assert len(calls) == 2
    assert pool.backends[0].lastHealthCheck == INTERVAL
    checker.stopService()


def test_errorWhileRecordingDoesNotStopTheLoop(harness: CheckerHarness) -> None:
    """
    An error after the probe (here in recording the result) is logged and the
    loop keeps running.
    """

    def brokenRecord(passed: bool, when: float, *thresholds: int) -> bool:
        raise RuntimeError("record bug")

    backend = harness.pool.backends[0]
    backend.recordHealth = brokenRecord  # type: ignore[method-assign]
    harness.checker.startService()
    harness.probe.finish(backend, True)
    harness.nextRound()
    assert harness.probe.callsFor(backend) == 2
    assert any(e.get("log_failure") is not None for e in harness.events)


def test_slowCheckIsNotRepeated(harness: CheckerHarness) -> None:
    """
    A backend whose check is still running when the next round starts is not
    checked again meanwhile; the others are.
    """
    harness.checker.startService()
    slow, other1, other2 = harness.pool
    harness.probe.finish(other1, True)
    harness.probe.finish(other2, True)
    harness.nextRound()
    harness.nextRound()
    assert [harness.probe.callsFor(b) for b in harness.pool] == [1, 2, 2]


def test_slowCheckCheckedAgainAfterItCompletes(harness: CheckerHarness) -> None:
    """
    Once its slow check completes, a backend is checked again at the next
    round.
    """
    harness.checker.startService()
    slow = harness.pool.backends[0]
    harness.nextRound()
    harness.probe.finish(slow, True)
    harness.nextRound()
    assert harness.probe.callsFor(slow) == 2


def test_whenFirstRoundDoneWaitsForEveryBackend(harness: CheckerHarness) -> None:
    """
    L{HealthChecker.whenFirstRoundDone} fires only once every backend has
    completed its first check, whatever the outcome.
    """
    harness.checker.startService()
    done = harness.checker.whenFirstRoundDone()
    first, second, third = harness.pool
    harness.probe.finish(first, True)
    harness.probe.finish(second, False)
    assert not done.called
    harness.probe.finish(third, True)
    assert done.called


def test_whenFirstRoundDoneAfterwardsFiresAtOnce(harness: CheckerHarness) -> None:
    """
    Asked after the first round, L{HealthChecker.whenFirstRoundDone} has
    already fired.
    """
    harness.checker.startService()
    harness.probe.finishAll(True)
    assert harness.checker.whenFirstRoundDone().called


def test_whenFirstRoundDoneWithoutBackends() -> None:
    """
    With no backends there is nothing to wait for.
    """
    checker = HealthChecker(
        BackendPool([]), INTERVAL, TIMEOUT, reactor=Clock(), probe=ControlledProbe()
    )
    checker.startService()
    assert checker.whenFirstRoundDone().called
    checker.stopService()


def test_whenFirstRoundDoneCancellable(harness: CheckerHarness) -> None:
    """
    A waiter that gives up (cancels) does not disturb the checker when the
    round completes.
    """
    harness.checker.startService()
    gaveUp = harness.checker.whenFirstRoundDone()
    gaveUp.addErrback(lambda failure: None)
    gaveUp.cancel()
    stillWaiting = harness.checker.whenFirstRoundDone()
    harness.probe.finishAll(True)
    assert stillWaiting.called


def test_stopServiceStopsTheLoop(harness: CheckerHarness) -> None:
    """
    After L{HealthChecker.stopService} no more checks start and nothing is
    left scheduled on the clock.
    """
    harness.checker.startService()
    harness.probe.finishAll(True)
    stopped = harness.checker.stopService()
    assert stopped.called
    assert harness.clock.getDelayedCalls() == []
    harness.nextRound()
    assert len(harness.probe.calls) == 3


def test_stopServiceCancelsChecksInFlight(harness: CheckerHarness) -> None:
    """
    Stopping cancels the running checks, and their cancellation is not
    recorded as a failure of the backend.
    """
    harness.checker.startService()
    running = dict(harness.probe.pending)
    harness.checker.stopService()
    assert all(d.called for d in running.values())
    assert [b.lastHealthCheck for b in harness.pool] == [None, None, None]
    assert harness.transitions() == []


def test_stopServiceReleasesFirstRoundWaiters(harness: CheckerHarness) -> None:
    """
    Whoever waits for the first round is not left hanging when the checker
    stops before it completes.
    """
    harness.checker.startService()
    done = harness.checker.whenFirstRoundDone()
    harness.checker.stopService()
    assert done.called


def test_stopServiceTwice(harness: CheckerHarness) -> None:
    """
    Stopping a stopped checker is harmless.
    """
    harness.checker.startService()
    harness.checker.stopService()
    assert harness.checker.stopService().called


def test_restartChecksAgainAtOnce(harness: CheckerHarness) -> None:
    """
    A checker started again after a stop checks every backend at once.
    """
    harness.checker.startService()
    harness.probe.finishAll(True)
    harness.checker.stopService()
    harness.checker.startService()
    assert len(harness.probe.calls) == 6


def test_probeFiringSynchronously() -> None:
    """
    A probe whose L{Deferred} has already fired is recorded and does not
    block the backend's later checks.
    """
    clock = Clock()
    pool = makePool(1)
    results = iter([True, False])
    checker = HealthChecker(
        pool, INTERVAL, TIMEOUT, reactor=clock, probe=lambda b: succeed(next(results))
    )
    checker.log = Logger(observer=lambda event: None)
    checker.startService()
    assert pool.backends[0].healthy
    clock.advance(INTERVAL)
    assert not pool.backends[0].healthy
    checker.stopService()


def test_badIntervalOrTimeoutRejected() -> None:
    """
    A non-positive interval or timeout is a programming error.
    """
    with pytest.raises(ValueError):
        HealthChecker(makePool(1), 0, TIMEOUT, reactor=Clock(), probe=ControlledProbe())
    with pytest.raises(ValueError):
        HealthChecker(
            makePool(1), INTERVAL, -1, reactor=Clock(), probe=ControlledProbe()
        )


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (Failure(ConnectionRefusedError()), "connection refused"),
        (
            Failure(ResponseNeverReceived([Failure(ConnectionRefusedError())])),
            "connection refused",
        ),
        (Failure(DNSLookupError("nowhere.invalid")), "DNS lookup failed"),
        (Failure(RuntimeError("boom")), "RuntimeError: boom"),
    ],
)
def test_describeFailure(failure: Failure, reason: str) -> None:
    """
    Failures are described in a few words fit for the log.
    """
    assert describeFailure(failure).startswith(reason)


def test_globalReactorByDefault() -> None:
    """
    Without a reactor argument the checker runs on the global reactor.
    """
    from twisted.internet import reactor

    checker = HealthChecker(makePool(1), INTERVAL, TIMEOUT, probe=ControlledProbe())
    assert checker._reactor is reactor


# End to end: the default HTTP probe against real servers on 127.0.0.1.

E2E_INTERVAL = 0.2
E2E_TIMEOUT = 0.5
"""The timeout of the tests about timing out."""
RELAXED_TIMEOUT = 5.0
"""The timeout of the other tests, which a slow test machine must not hit."""
WAIT_LIMIT = 10.0


class SwitchableHealth(Resource):
    """
    A health endpoint answering with a status code the test sets, counting
    requests.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.code = 200
        self.requests = 0

    def render_GET(self, request: Request) -> bytes:
        self.requests += 1
        request.setResponseCode(self.code)
        if 300 <= self.code < 400:
            request.setHeader(b"Location", b"/elsewhere")
        return b"ok\n" if self.code == 200 else b"not ok\n"


class StalledBody(Resource):
    """
    A health endpoint that sends 200 and part of its body, then nothing.
    """

    isLeaf = True

    def render_GET(self, request: Request) -> object:
        request.setHeader(b"Content-Length", b"100")
        request.write(b"partial")
        return NOT_DONE_YET


class SilentProtocol(Protocol):
    """
    Accepts a connection and never answers.
    """


class RunningServer:
    """
    A server listening on 127.0.0.1, tracking its connections so that
    L{stop} leaves nothing open.

    @ivar connectionsMade: how many connections the server accepted.
    """

    def __init__(self, factory: Factory) -> None:
        from twisted.internet import reactor

        self.wrapper = WrappingFactory(factory)
        self.connectionsMade = 0
        self._waiters: list[tuple[int, Deferred[None]]] = []
        register = self.wrapper.registerProtocol
        unregister = self.wrapper.unregisterProtocol

        def registered(protocol: Any) -> None:
            self.connectionsMade += 1
            register(protocol)
            reactor.callLater(0, self._wake)

        def unregistered(protocol: Any) -> None:
            unregister(protocol)
            # Called before the wrapped protocol's connectionLost: let that
            # finish first.
            reactor.callLater(0, self._wake)

        self.wrapper.registerProtocol = registered  # type: ignore[method-assign]
        self.wrapper.unregisterProtocol = unregistered  # type: ignore[method-assign]
        self.listener = reactor.listenTCP(0, self.wrapper, interface="127.0.0.1")
        self.port: int = self.listener.getHost().port

    def _wake(self) -> None:
        for waiter in list(self._waiters):
            count, d = waiter
            if self.openConnections() == count:
                self._waiters.remove(waiter)
                d.callback(None)

    def openConnections(self) -> int:
        """
        How many connections to this server are open.
        """
        return len(self.wrapper.protocols)

    def whenOpenConnections(self, count: int) -> Deferred[None]:
        """
        Fire once exactly C{count} connections to this server are open (at once
        if that is so); fail after L{WAIT_LIMIT} seconds.
        """
        from twisted.internet import reactor

        if self.openConnections() == count:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append((count, d))
        return d.addTimeout(WAIT_LIMIT, reactor)

    def whenNoConnections(self) -> Deferred[None]:
        """
        Fire once no connection to this server is open.
        """
        return self.whenOpenConnections(0)

    async def stop(self) -> None:
        """
        Stop listening and drop the connections still open.
        """
        await self.listener.stopListening()
        for protocol in list(self.wrapper.protocols):
            protocol.transport.abortConnection()
        await self.whenNoConnections()


class Servers:
    """
    Starts test servers and stops them all at the end of the test.
    """

    def __init__(self) -> None:
        self.running: list[RunningServer] = []

    def start(self, factory: Factory) -> RunningServer:
        """
        Start a server with C{factory} on an ephemeral port.
        """
        server = RunningServer(factory)
        self.running.append(server)
        return server

    def health(self, resource: Resource | None = None) -> tuple[RunningServer, Any]:
        """
        Start an HTTP health endpoint; by default a L{SwitchableHealth}.
        """
        resource = SwitchableHealth() if resource is None else resource
        site = Site(resource)
        site.noisy = False
        site.log = lambda request: None  # type: ignore[method-assign]
        return self.start(site), resource

    async def closedPort(self) -> int:
        """
        A port on 127.0.0.1 where nothing listens (any more).
        """
        server = RunningServer(Factory.forProtocol(SilentProtocol))
        await server.stop()
        return server.port


def backendFor(port: int, n: int = 1) -> Backend:
    """
    A backend whose health endpoint is 127.0.0.1:C{port}.
    """
    return Backend(id=f"backend-{n}", host="127.0.0.1", port=port - 1000)


class RecordedChecks:
    """
    Lets a test await the outcome of health checks of a backend, by wrapping
    its L{Backend.recordHealth}.
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.results: list[bool] = []
        self._waiters: list[tuple[Callable[[], bool], Deferred[None]]] = []
        original = backend.recordHealth

        def record(passed: bool, when: float, *thresholds: int) -> bool:
            from twisted.internet import reactor

            changed = original(passed, when, *thresholds)
            self.results.append(passed)
            # Wake the test once the checker has finished with this check
            # (logging it), not in the middle of it.
            reactor.callLater(0, self._wake)
            return changed

        backend.recordHealth = record  # type: ignore[method-assign]

    def _wake(self) -> None:
        for waiter in list(self._waiters):
            condition, d = waiter
            if condition():
                self._waiters.remove(waiter)
                d.callback(None)

    def until(self, condition: Callable[[], bool]) -> Deferred[None]:
        """
        Fire once C{condition()} holds after a recorded check (at once if it
        already holds); fail after L{WAIT_LIMIT} seconds.
        """
        from twisted.internet import reactor

        if condition():
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append((condition, d))
        return d.addTimeout(WAIT_LIMIT, reactor)

    def checks(self, count: int) -> Deferred[None]:
        """
        Fire once C{count} further checks have been recorded.
        """
        target = len(self.results) + count
        return self.until(lambda: len(self.results) >= target)


class E2E:
    """
    What an end-to-end test needs: servers, and a checker on the real
    reactor with a captured log.
    """

    def __init__(self) -> None:
        self.servers = Servers()
        self.checkers: list[HealthChecker] = []
        self.events: list[dict[str, Any]] = []

    def checker(
        self,
        *backends: Backend,
        interval: float = E2E_INTERVAL,
        timeout: float = RELAXED_TIMEOUT,
    ) -> HealthChecker:
        """
        A started checker of C{backends}, stopped at the end of the test.
        """
        checker = HealthChecker(BackendPool(list(backends)), interval, timeout)
        checker.log = Logger(observer=self.events.append)
        self.checkers.append(checker)
        checker.startService()
        return checker

    def reasons(self, backendId: str = "backend-1") -> list[str]:
        """
        The logged reasons of the health changes of a backend.
        """
        return [
            e["reason"]
            for e in self.events
            if e.get("event") == HEALTH_CHANGED and e["backendId"] == backendId
        ]


def firstRound(checker: HealthChecker) -> Deferred[None]:
    """
    L{HealthChecker.whenFirstRoundDone}, failing after L{WAIT_LIMIT} seconds
    rather than hanging the test.
    """
    from twisted.internet import reactor

    return checker.whenFirstRoundDone().addTimeout(WAIT_LIMIT, reactor)


def _reactorSelectables() -> set[Any]:
    from twisted.internet import reactor

    return set(reactor.getReaders()) | set(reactor.getWriters())


@pytest_twisted.async_yield_fixture
async def e2e() -> AsyncIterator[E2E]:
    """
    Servers and checkers for one test; afterwards every checker is stopped,
    every server closed, and no connection or timer of theirs is left on the
    reactor.
    """
    from twisted.internet import reactor

    selectablesBefore = _reactorSelectables()
    callsBefore = set(reactor.getDelayedCalls())
    harness = E2E()
    yield harness
    for checker in harness.checkers:
        if checker.running:
            await checker.stopService()
    for server in harness.servers.running:
        await server.stop()
    leftSelectables = _reactorSelectables() - selectablesBefore
    # Calls already due are the plumbing of this very teardown; what must not
    # be left are timers (timeouts, idle connection expiry) still ahead.
    leftCalls = [
        call
        for call in reactor.getDelayedCalls()
        if call not in callsBefore
        and call.active()
        and call.getTime() > reactor.seconds()
    ]
    assert leftSelectables == set()
    assert leftCalls == []


@pytest_twisted.ensureDeferred
async def test_healthyServerMakesBackendHealthy(e2e: E2E) -> None:
    """
    A backend whose health endpoint answers 200 is healthy after the first
    round.
    """
    server, _ = e2e.servers.health()
    backend = backendFor(server.port)
    checker = e2e.checker(backend)
    await firstRound(checker)
    assert backend.healthy
    assert e2e.reasons() == ["HTTP 200"]


@pytest_twisted.ensureDeferred
async def test_serverErrorMakesBackendUnhealthy(e2e: E2E) -> None:
    """
    When the health endpoint starts answering 500, the backend is unhealthy
    after the next check.
    """
    server, resource = e2e.servers.health()
    backend = backendFor(server.port)
    checks = RecordedChecks(backend)
    checker = e2e.checker(backend)
    await firstRound(checker)
    resource.code = 500
    await checks.checks(1)
    assert not backend.healthy
    assert e2e.reasons() == ["HTTP 200", "HTTP 500"]


@pytest_twisted.ensureDeferred
async def test_recoveredServerMakesBackendHealthyAgain(e2e: E2E) -> None:
    """
    When a failing health endpoint answers 200 again, the backend rejoins
    the rotation after the next check.
    """
    server, resource = e2e.servers.health()
    resource.code = 503
    backend = backendFor(server.port)
    checks = RecordedChecks(backend)
    checker = e2e.checker(backend)
    await firstRound(checker)
    assert not backend.healthy
    resource.code = 200
    await checks.checks(1)
    assert backend.healthy


@pytest_twisted.ensureDeferred
async def test_redirectIsAFailure(e2e: E2E) -> None:
    """
    Only 2xx passes: a redirect is not followed and counts as a failure.
    """
    server, resource = e2e.servers.health()
    resource.code = 302
    backend = backendFor(server.port)
    checker = e2e.checker(backend)
    await firstRound(checker)
    assert not backend.healthy
    assert e2e.reasons() == ["HTTP 302"]


@pytest_twisted.ensureDeferred
async def test_refusedConnectionMakesBackendUnhealthy(e2e: E2E) -> None:
    """
    A backend whose health port refuses connections is unhealthy.
    """
    backend = backendFor(await e2e.servers.closedPort())
    checker = e2e.checker(backend)
    await firstRound(checker)
    assert not backend.healthy
    assert e2e.reasons() == ["connection refused"]


@pytest_twisted.ensureDeferred
async def test_silentServerTimesOut(e2e: E2E) -> None:
    """
    A health endpoint that accepts but never answers makes the backend
    unhealthy once the timeout has passed, not later.
    """
    server = e2e.servers.start(Factory.forProtocol(SilentProtocol))
    backend = backendFor(server.port)
    started = time.monotonic()
    checker = e2e.checker(backend, timeout=E2E_TIMEOUT)
    await firstRound(checker)
    elapsed = time.monotonic() - started
    assert not backend.healthy
    assert e2e.reasons() == [f"timed out after {E2E_TIMEOUT}s"]
    assert E2E_TIMEOUT * 0.9 <= elapsed < E2E_TIMEOUT + 2.0


@pytest_twisted.ensureDeferred
async def test_stalledBodyTimesOut(e2e: E2E) -> None:
    """
    The timeout bounds the whole check: a 200 whose body never ends fails.
    """
    server, _ = e2e.servers.health(StalledBody())
    backend = backendFor(server.port)
    checker = e2e.checker(backend, timeout=E2E_TIMEOUT)
    await firstRound(checker)
    assert not backend.healthy
    assert e2e.reasons() == [f"timed out after {E2E_TIMEOUT}s"]


@pytest.mark.parametrize("stalledAt", ["headers", "body"])
@pytest_twisted.ensureDeferred
async def test_timedOutConnectionIsClosed(e2e: E2E, stalledAt: str) -> None:
    """
    A check that timed out, waiting for the headers or for the rest of the
    body, does not leave its connection open: the server sees it closed.
    """
    if stalledAt == "headers":
        server = e2e.servers.start(Factory.forProtocol(SilentProtocol))
    else:
        server, _ = e2e.servers.health(StalledBody())
    checker = e2e.checker(backendFor(server.port), interval=60.0, timeout=E2E_TIMEOUT)
    await firstRound(checker)
    await server.whenNoConnections()
    assert server.connectionsMade == 1


@pytest_twisted.ensureDeferred
async def test_checksReuseOneConnection(e2e: E2E) -> None:
    """
    Consecutive checks of a healthy backend go over one persistent
    connection.
    """
    server, resource = e2e.servers.health()
    backend = backendFor(server.port)
    checks = RecordedChecks(backend)
    e2e.checker(backend)
    await checks.checks(3)
    assert resource.requests >= 3
    assert server.connectionsMade == 1


@pytest_twisted.ensureDeferred
async def test_backendsCheckedIndependently(e2e: E2E) -> None:
    """
    Each backend's health follows its own endpoint: one healthy, one failing,
    one refusing.
    """
    good, _ = e2e.servers.health()
    bad, badResource = e2e.servers.health()
    badResource.code = 500
    backends = [
        backendFor(good.port, 1),
        backendFor(bad.port, 2),
        backendFor(await e2e.servers.closedPort(), 3),
    ]
    checker = e2e.checker(*backends)
    await firstRound(checker)
    assert [b.healthy for b in backends] == [True, False, False]


@pytest_twisted.ensureDeferred
async def test_stopClosesConnections(e2e: E2E) -> None:
    """
    Stopping the checker closes its pooled connection and the one of a check
    in flight; the servers see both closed.
    """
    healthy, _ = e2e.servers.health()
    silent = e2e.servers.start(Factory.forProtocol(SilentProtocol))
    pooled = backendFor(healthy.port, 1)
    stuck = backendFor(silent.port, 2)
    checks = RecordedChecks(pooled)
    checker = e2e.checker(pooled, stuck)
    await checks.checks(1)
    await silent.whenOpenConnections(1)
    await checker.stopService()
    await healthy.whenNoConnections()
    await silent.whenNoConnections()


@pytest_twisted.ensureDeferred
async def test_noFactoryLogLines(e2e: E2E) -> None:
    """
    Checks of a backend that is down do not log the HTTP client factory
    starting and stopping for each new connection.
    """
    logged: list[str] = []

    def observer(event: dict[str, Any]) -> None:
        logged.append(formatEvent(event))

    backend = backendFor(await e2e.servers.closedPort())
    checks = RecordedChecks(backend)
    globalLogPublisher.addObserver(observer)
    try:
        e2e.checker(backend)
        await checks.checks(3)
    finally:
        globalLogPublisher.removeObserver(observer)
    assert [line for line in logged if "factory" in line.lower()] == []


@pytest_twisted.ensureDeferred
async def test_probeReportsFailureAsResult(e2e: E2E) -> None:
    """
    The default probe fires with a failed result, with its reason, rather
    than failing.
    """
    from twisted.internet import reactor

    from wslb_twisted.health import HTTPHealthProbe

    probe = HTTPHealthProbe(reactor, RELAXED_TIMEOUT)
    backend = backendFor(await e2e.servers.closedPort())
    result = await probe(backend)
    await probe.close()
    assert result == HealthCheckResult(False, "connection refused")
    assert not result
