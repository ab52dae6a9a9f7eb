"""
Active health checking of the backends.

A L{HealthChecker} runs one L{LoopingCall} that starts a round every
interval; within a round each backend is probed at its own moment (spread
over the interval, with jitter), and the outcome is written to the backend
with L{Backend.recordHealth}, which applies the rise and fall thresholds.  It
only writes backend state: the strategies and the monitor read it.  The
default probe, L{HTTPHealthProbe}, requests L{Backend.healthURL} with treq
over one shared persistent connection pool.

The relay reports connection attempts with L{Backend.recordAttempt} (passive
health) and logs what that changes with L{logHealthChange}, so both kinds of
change read the same in the log.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from random import Random
from typing import Any, TypeAlias
from weakref import WeakSet

import treq
from twisted.application.service import Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    gatherResults,
    maybeDeferred,
    succeed,
)
from twisted.internet.error import (
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
    DNSLookupError,
)
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web._newclient import HTTP11ClientProtocol
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
    _HTTP11ClientFactory,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from wslb_twisted.backends import Backend, BackendPool

__all__ = [
    "HEALTH_CHANGED",
    "HTTPHealthProbe",
    "HealthCheckResult",
    "HealthChecker",
    "Probe",
    "describeFailure",
    "logHealthChange",
]

HEALTH_CHANGED = "backend_health_changed"
"""
The C{event} key of the log event emitted when a backend's health becomes
known or changes.
"""

JITTER = 0.1
"""
How far, as a fraction of the interval, each scheduled check may move either
way from its backend's place in the round.
"""

_CHANGED = "backend {backendId} ({address}) is now {state}: {reason}"


def logHealthChange(
    log: Logger,
    backend: Backend,
    previousState: str,
    reason: str,
    source: str = "check",
    lastFailure: str | None = None,
) -> None:
    """
    Log that a backend's health became known or changed: one event with
    C{event=}L{HEALTH_CHANGED}, C{backendId}, C{address}, C{healthy},
    C{state} (C{"healthy"} or C{"unhealthy"}, from the backend),
    C{previousState} (C{"unknown"}, C{"healthy"} or C{"unhealthy"}),
    C{reason}, C{source} and the backend's C{consecutivePasses},
    C{consecutiveFailures} and C{consecutiveConnectFailures}.  Coming into
    rotation is logged at info level, leaving it as a warning.

    @param log: the logger to emit on.
    @param backend: the backend, already in its new state.
    @param previousState: its state before.
    @param reason: why, for operators: the last check's outcome
        (C{"HTTP 500"}) or C{"2 consecutive connection failures"}.
    @param source: C{"check"} (active health check) or C{"connections"}
        (failed connection attempts for clients).
    @param lastFailure: for C{"connections"}, how the last attempt failed.
    """
    healthy = backend.healthy
    message = _CHANGED
    if lastFailure is not None:
        message += " (last: {lastFailure})"
    elif healthy and backend.consecutivePasses > 1:
        message += " ({consecutivePasses} passing checks in a row)"
    elif not healthy and backend.consecutiveFailures > 1:
        message += " ({consecutiveFailures} failed checks in a row)"
    emit = log.info if healthy else log.warn
    emit(
        message,
        event=HEALTH_CHANGED,
        backendId=backend.id,
        address=backend.address,
        healthy=healthy,
        state="healthy" if healthy else "unhealthy",
        previousState=previousState,
        reason=reason,
        source=source,
        lastFailure=lastFailure,
        consecutivePasses=backend.consecutivePasses,
        consecutiveFailures=backend.consecutiveFailures,
        consecutiveConnectFailures=backend.consecutiveConnectFailures,
    )


_USER_AGENT = b"wslb-health-check"


@dataclass(frozen=True)
class HealthCheckResult:
    """
    The outcome of one health check, with the reason for the log.

    It is true exactly when the check passed, so a probe that fires with one
    can be used wherever a probe firing with a L{bool} is expected.

    @ivar passed: whether the check passed.
    @ivar reason: why, for operators: C{"HTTP 200"}, C{"connection refused"},
        C{"timed out after 3.0s"}, C{"HTTP 500"}.
    """

    passed: bool
    reason: str

    def __bool__(self) -> bool:
        return self.passed


Probe: TypeAlias = Callable[[Backend], "Deferred[bool] | Deferred[HealthCheckResult]"]
"""
One health check of one backend: fires with a L{bool} or a
L{HealthCheckResult}.  A probe should never fail; if it does, or raises, the
check counts as failed.
"""


def describeFailure(failure: Failure) -> str:
    """
    Say in a few words why a health check failed.

    @param failure: what the probe's request failed with.
    @return: e.g. C{"connection refused"}.
    """
    if failure.check(ResponseNeverReceived, ResponseFailed):
        reasons = getattr(failure.value, "reasons", None) or []
        for reason in reasons:
            if isinstance(reason, Failure) and not reason.check(CancelledError):
                return describeFailure(reason)
        if failure.check(ResponseNeverReceived):
            return "no response"
        return "response failed"
    if failure.check(ConnectionRefusedError):
        return "connection refused"
    if failure.check(DNSLookupError):
        return f"DNS lookup failed: {failure.getErrorMessage()}"
    if failure.check(ConnectionDone, ConnectionLost):
        return "connection closed by the backend"
    if failure.check(CancelledError):
        return "cancelled"
    message = failure.getErrorMessage()
    name = failure.type.__name__ if failure.type is not None else "error"
    return f"{name}: {message}" if message else name


class _HealthCheckTimeoutError(Exception):
    """
    A whole health check (connecting, headers and body) took too long.
    """

    def __init__(self, timeout: float) -> None:
        super().__init__(timeout)
        self.timeout = timeout

    def __str__(self) -> str:
        return f"timed out after {self.timeout}s"


class _TrackingClientFactory(_HTTP11ClientFactory):
    """
    The pool's connection factory, quiet (no "Starting factory" lines for each
    new connection to a backend that is down) and remembering its protocols so
    that L{HTTPHealthProbe.close} can close connections still in use.
    """

    noisy = False

    def __init__(
        self,
        protocols: WeakSet[HTTP11ClientProtocol],
        quiescentCallback: Callable[[HTTP11ClientProtocol], None],
        metadata: object,
    ) -> None:
        super().__init__(quiescentCallback, metadata)
        self._protocols = protocols

    def buildProtocol(self, addr: Any) -> HTTP11ClientProtocol:
        protocol = super().buildProtocol(addr)
        self._protocols.add(protocol)
        return protocol


class _BodyDiscarder(Protocol):
    """
    Reads a response body to its end and throws it away, so the connection can
    go back to the pool.  Cancelling L{finished} drops the connection.

    @ivar finished: fires with C{None} once the body has been read.
    """

    def __init__(self) -> None:
        self.finished: Deferred[None] = Deferred(self._cancel)

    def _cancel(self, finished: Deferred[None]) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(None)
        else:
            self.finished.errback(reason)


class HTTPHealthProbe:
    """
    The default probe: C{GET} the backend's health URL; a 2xx answer within
    the timeout passes, anything else (refused, timed out, non-2xx) fails.

    All checks share one persistent L{HTTPConnectionPool} with at most one
    idle connection per backend, so a healthy backend is checked over one
    long-lived connection.

    @ivar timeout: seconds allowed for a whole check: connecting, the response
        headers and the body.
    """

    def __init__(self, reactor: Any, timeout: float) -> None:
        """
        @param reactor: the reactor to connect and time out with.
        @param timeout: seconds allowed for a whole check.
        """
        self.timeout = timeout
        self._reactor = reactor
        self._protocols: WeakSet[HTTP11ClientProtocol] = WeakSet()
        self._inFlight: set[Deferred[HealthCheckResult]] = set()
        self._connectionPool = HTTPConnectionPool(reactor, persistent=True)
        self._connectionPool.maxPersistentPerHost = 1
        self._connectionPool._factory = partial(  # type: ignore[assignment]
            _TrackingClientFactory, self._protocols
        )
        self._client = treq.client.HTTPClient(Agent(reactor, pool=self._connectionPool))

    def __call__(self, backend: Backend) -> Deferred[HealthCheckResult]:
        """
        Check one backend.

        @param backend: the backend to check.
        @return: a L{Deferred} that fires with a L{HealthCheckResult} and never
            fails.
        """
        d: Deferred[Any] = maybeDeferred(
            self._client.get,
            backend.healthURL,
            headers=Headers({b"User-Agent": [_USER_AGENT]}),
            allow_redirects=False,
            unbuffered=True,
        )
        d.addCallback(self._readBody)
        d.addTimeout(self.timeout, self._reactor, onTimeoutCancel=self._timedOut)
        d.addCallbacks(self._classify, self._failed)
        self._inFlight.add(d)
        d.addBoth(self._done, d)
        return d

    def _readBody(self, response: IResponse) -> Deferred[int]:
        discarder = _BodyDiscarder()
        response.deliverBody(discarder)
        return discarder.finished.addCallback(lambda _: response.code)

    def _timedOut(self, result: object, timeout: float) -> object:
        raise _HealthCheckTimeoutError(timeout)

    def _classify(self, code: int) -> HealthCheckResult:
        return HealthCheckResult(200 <= code < 300, f"HTTP {code}")

    def _failed(self, failure: Failure) -> HealthCheckResult:
        if failure.check(_HealthCheckTimeoutError):
            return HealthCheckResult(False, str(failure.value))
        return HealthCheckResult(False, describeFailure(failure))

    def _done(
        self, result: HealthCheckResult, d: Deferred[HealthCheckResult]
    ) -> HealthCheckResult:
        self._inFlight.discard(d)
        return result

    def close(self) -> Deferred[None]:
        """
        Cancel the checks in flight and close every connection of the pool.

        @return: a L{Deferred} that fires once all connections are closed.
        """
        for d in list(self._inFlight):
            d.cancel()
        closing = [protocol.abort() for protocol in list(self._protocols)]
        closing.append(self._connectionPool.closeCachedConnections())
        return gatherResults(closing).addCallback(lambda _: None)


class HealthChecker(Service):
    """
    Checks every backend each interval and takes it out of rotation or puts it
    back according to the rise and fall thresholds (see
    L{Backend.recordHealth}).

    Every backend is checked at once when the service starts; until its first
    check completes its health is unknown and it gets no traffic (see
    L{whenFirstRoundDone}), and that first check alone decides whether it
    starts in rotation.  After that, a round starts every interval, and
    within it the backends' checks are spread out so they are not all probed
    at the same instant: backend M{i} of M{n} (in pool order) is checked at
    M{(i + 1/2) / n} of the interval into the round, moved by up to
    C{jitter} of the interval either way at random, and kept within the
    round.  So each backend is checked once per interval.  A backend whose
    previous check is still running is skipped rather than checked twice at
    once.

    The first result for a backend and every later change of its health are
    logged once, by L{logHealthChange} (C{source="check"}).

    @ivar pool: the backends to check.
    @ivar interval: seconds between the starts of two rounds.
    @ivar timeout: seconds allowed for one check (used by the default probe).
    @ivar rise: consecutive passing checks that bring a backend back.
    @ivar fall: consecutive failing checks that take a backend out.
    @ivar jitter: how far, as a fraction of the interval, a check may move
        from its place in the round.
    """

    log = Logger()

    def __init__(
        self,
        pool: BackendPool,
        interval: float,
        timeout: float,
        reactor: Any = None,
        probe: Probe | None = None,
        rise: int = 1,
        fall: int = 1,
        jitter: float = JITTER,
        random: Random | None = None,
    ) -> None:
        """
        @param pool: the backends to check.
        @param interval: seconds between rounds, positive.
        @param timeout: seconds allowed for one check, positive.
        @param reactor: provider of L{IReactorTime} (and, for the default
            probe, L{IReactorTCP}); the global reactor by default.
        @param probe: the check of one backend, see L{Probe}; by default an
            L{HTTPHealthProbe} owned (and closed) by this checker.
        @param rise: consecutive passing checks that bring a backend back, at
            least 1 (1: every check decides).
        @param fall: consecutive failing checks that take a backend out, at
            least 1.
        @param jitter: fraction of the interval, in [0, 0.5], by which each
            check may move from its place in the round.
        @param random: the source of the jitter; a new L{Random} by default
            (tests pass a seeded one).
        """
        if interval <= 0:
            raise ValueError(f"interval must be positive, not {interval!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        if rise < 1 or fall < 1:
            raise ValueError(f"rise and fall must be at least 1, not {rise}, {fall}")
        if not 0 <= jitter <= 0.5:
            raise ValueError(f"jitter must be in [0, 0.5], not {jitter!r}")
        if reactor is None:
            from twisted.internet import reactor
        self.pool = pool
        self.interval = interval
        self.timeout = timeout
        self.rise = rise
        self.fall = fall
        self.jitter = jitter
        self._random = Random() if random is None else random
        self._reactor: IReactorTime = reactor
        self._ownProbe: HTTPHealthProbe | None = None
        if probe is None:
            self._ownProbe = HTTPHealthProbe(reactor, timeout)
            probe = self._ownProbe
        self._probe: Probe = probe
        self._inFlight: dict[Backend, Deferred[Any]] = {}
        self._scheduled: dict[Backend, IDelayedCall] = {}
        self._checkedOnce: WeakSet[Backend] = WeakSet()
        self._firstRoundWaiters: list[Deferred[None]] = []
        self._startupRound = True
        self._loop = LoopingCall(self._round)
        self._loop.clock = reactor

    def startService(self) -> None:
        """
        Check every backend now, and then once every interval.
        """
        super().startService()
        self._startupRound = True
        loopDone = self._loop.start(self.interval, now=True)
        loopDone.addErrback(
            lambda failure: self.log.failure(
                "Health checking stopped unexpectedly", failure
            )
        )

    def stopService(self) -> Deferred[None]:
        """
        Stop checking, cancel the checks in flight and close the connections.

        Anyone still waiting on L{whenFirstRoundDone} is released.

        @return: a L{Deferred} that fires once the connections are closed.
        """
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        scheduled, self._scheduled = self._scheduled, {}
        for call in scheduled.values():
            if call.active():
                call.cancel()
        for d in list(self._inFlight.values()):
            d.cancel()
        self._inFlight.clear()
        self._releaseFirstRoundWaiters()
        if self._ownProbe is not None:
            return self._ownProbe.close()
        return succeed(None)

    def whenFirstRoundDone(self) -> Deferred[None]:
        """
        Wait until every backend has completed its first check, so that the
        first clients are balanced over backends of known health.

        @return: a L{Deferred} that fires with C{None} once every backend of
            the pool has been checked at least once (at once if that is
            already so), or when the checker stops.
        """
        if self._firstRoundComplete():
            return succeed(None)
        waiter: Deferred[None] = Deferred(self._firstRoundWaiters.remove)
        self._firstRoundWaiters.append(waiter)
        return waiter

    def checkNow(self, backends: list[Backend]) -> None:
        """
        Check some backends now rather than at their place in the next round:
        backends that joined the pool (a configuration reload), so that they
        come into rotation without waiting up to an interval.  A backend
        whose check is already running is not checked twice.

        @param backends: backends of the pool.
        """
        if not self.running:
            return
        for backend in backends:
            self._checkUnlessRunning(backend)

    def _firstRoundComplete(self) -> bool:
        return all(backend in self._checkedOnce for backend in self.pool)

    def _releaseFirstRoundWaiters(self) -> None:
        waiters, self._firstRoundWaiters = self._firstRoundWaiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _round(self) -> None:
        """
        One round: at startup, check every backend at once; then schedule
        each backend's check within the interval to come.  Never raises, as
        an exception would stop the L{LoopingCall} for good.
        """
        try:
            backends = list(self.pool)
        except Exception:
            self.log.failure("Could not list the backends to check")
            return
        if self._startupRound:
            self._startupRound = False
            for backend in backends:
                self._checkUnlessRunning(backend)
        for index, backend in enumerate(backends):
            if backend in self._scheduled:
                continue
            try:
                delay = self._placeInRound(index, len(backends))
                self._scheduled[backend] = self._reactor.callLater(
                    delay, self._scheduledCheck, backend
                )
            except Exception:
                self.log.failure(
                    "Could not schedule the health check of {backendId}",
                    backendId=backend.id,
                )

    def _placeInRound(self, index: int, count: int) -> float:
        """
        Seconds into the round at which to check backend C{index} of
        C{count}: its even share of the interval, moved by the jitter, and
        kept inside the round (1% from either end).
        """
        interval = self.interval
        place = (index + 0.5) * interval / count
        place += self._random.uniform(-self.jitter, self.jitter) * interval
        return min(max(place, 0.01 * interval), 0.99 * interval)

    def _scheduledCheck(self, backend: Backend) -> None:
        """
        A backend's moment in the round has come: check it, unless it has
        left the pool meanwhile.  Never raises.
        """
        self._scheduled.pop(backend, None)
        try:
            if not any(member is backend for member in self.pool):
                return
        except Exception:
            self.log.failure("Could not list the backends to check")
            return
        self._checkUnlessRunning(backend)

    def _checkUnlessRunning(self, backend: Backend) -> None:
        """
        Start a check of C{backend} unless its previous one is still running.
        Never raises.
        """
        if backend in self._inFlight:
            self.log.debug(
                "backend {backendId} ({address}): previous health check "
                "still running, skipped",
                backendId=backend.id,
                address=backend.address,
            )
            return
        try:
            self._check(backend)
        except Exception:
            self.log.failure(
                "Could not start the health check of {backendId}",
                backendId=backend.id,
            )

    def _check(self, backend: Backend) -> None:
        d: Deferred[Any] = maybeDeferred(self._probe, backend)
        # Registered before the callbacks, which remove it: a probe may
        # already have fired.
        self._inFlight[backend] = d
        d.addCallbacks(self._asResult, self._failureAsResult)
        d.addCallback(self._record, backend)
        d.addErrback(
            lambda failure: self.log.failure(
                "Could not record the health of {backendId}",
                failure,
                backendId=backend.id,
            )
        )
        d.addBoth(self._checkDone, backend, d)

    def _asResult(self, outcome: object) -> HealthCheckResult:
        if isinstance(outcome, HealthCheckResult):
            return outcome
        if outcome:
            return HealthCheckResult(True, "check passed")
        return HealthCheckResult(False, "check failed")

    def _failureAsResult(self, failure: Failure) -> HealthCheckResult:
        return HealthCheckResult(False, describeFailure(failure))

    def _record(self, result: HealthCheckResult, backend: Backend) -> None:
        if not self.running:
            # Cancelled by stopService: says nothing about the backend.
            return
        previous = (
            "unknown"
            if backend.lastHealthCheck is None
            else "healthy"
            if backend.healthy
            else "unhealthy"
        )
        changed = backend.recordHealth(
            result.passed, self._reactor.seconds(), self.rise, self.fall
        )
        if changed or previous == "unknown":
            logHealthChange(self.log, backend, previous, result.reason)

    def _checkDone(self, result: object, backend: Backend, d: Deferred[Any]) -> None:
        if self._inFlight.get(backend) is d:
            del self._inFlight[backend]
        if self.running:
            self._checkedOnce.add(backend)
        if self._firstRoundWaiters and self._firstRoundComplete():
            self._releaseFirstRoundWaiters()
