"""
Active health checking of the backends.

A L{HealthChecker} runs one L{LoopingCall} that probes every backend each
interval, concurrently, and writes the outcome to the backend with
L{Backend.recordHealth}.  It only writes backend state: the strategies and the
monitor read it.  The default probe, L{HTTPHealthProbe}, requests
L{Backend.healthURL} with treq over one shared persistent connection pool.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
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
from twisted.internet.interfaces import IReactorTime
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
]

HEALTH_CHANGED = "backend_health_changed"
"""
The C{event} key of the log event emitted when a backend's health becomes
known or changes.
"""



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
    back accordingly.

    Each backend is checked once as soon as the service starts; until its
    first check completes its health is unknown and it gets no traffic (see
    L{whenFirstRoundDone}).  The checks of one round run concurrently, and a
    backend whose previous check is still running is skipped rather than
    checked twice at once.

    The first result for a backend and every later change of its health are
    logged once, as an event with C{event=}L{HEALTH_CHANGED}, C{backendId},
    C{address}, C{healthy}, C{state} (C{"healthy"} or C{"unhealthy"}),
    C{previousState} (C{"unknown"}, C{"healthy"} or C{"unhealthy"}) and
    C{reason}.

    @ivar pool: the backends to check.
    @ivar interval: seconds between the starts of two rounds.
    @ivar timeout: seconds allowed for one check (used by the default probe).
    """

    log = Logger()

    def __init__(
        self,
        pool: BackendPool,
        interval: float,
        timeout: float,
        reactor: Any = None,
        probe: Probe | None = None,
    ) -> None:
        """
        @param pool: the backends to check.
        @param interval: seconds between rounds, positive.
        @param timeout: seconds allowed for one check, positive.
        @param reactor: provider of L{IReactorTime} (and, for the default
            probe, L{IReactorTCP}); the global reactor by default.
        @param probe: the check of one backend, see L{Probe}; by default an
            L{HTTPHealthProbe} owned (and closed) by this checker.
        """
        if interval <= 0:
            raise ValueError(f"interval must be positive, not {interval!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        if reactor is None:
            from twisted.internet import reactor
        self.pool = pool
        self.interval = interval
        self.timeout = timeout
        self._reactor: IReactorTime = reactor
        self._ownProbe: HTTPHealthProbe | None = None
        if probe is None:
            self._ownProbe = HTTPHealthProbe(reactor, timeout)
            probe = self._ownProbe
        self._probe: Probe = probe
        self._inFlight: dict[Backend, Deferred[Any]] = {}
        self._checkedOnce: WeakSet[Backend] = WeakSet()
        self._firstRoundWaiters: list[Deferred[None]] = []
        self._loop = LoopingCall(self._checkAll)
        self._loop.clock = reactor

    def startService(self) -> None:
        """
        Check every backend now, and then every interval.
        """
        super().startService()
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
            if backend in self._inFlight:
                continue
            try:
                self._check(backend)
            except Exception:
                self.log.failure(
                    "Could not start the health check of {backendId}",
                    backendId=backend.id,
                )

    def _firstRoundComplete(self) -> bool:
        return all(backend in self._checkedOnce for backend in self.pool)

    def _releaseFirstRoundWaiters(self) -> None:
        waiters, self._firstRoundWaiters = self._firstRoundWaiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _checkAll(self) -> None:
        """
        One round: start a check of every backend not being checked already.
        Never raises, as an exception would stop the L{LoopingCall} for good.
        """
        try:
            backends = list(self.pool)
        except Exception:
            self.log.failure("Could not list the backends to check")
            return
        for backend in backends:
            if backend in self._inFlight:
                self.log.debug(
                    "backend {backendId} ({address}): previous health check "
                    "still running, skipped",
                    backendId=backend.id,
                    address=backend.address,
                )
                continue
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
        changed = backend.recordHealth(result.passed, self._reactor.seconds())
        if changed or previous == "unknown":
            emit = self.log.info if result.passed else self.log.warn
            emit(
                "backend {backendId} ({address}) is now {state}: {reason}",
                event=HEALTH_CHANGED,
                backendId=backend.id,
                address=backend.address,
                healthy=result.passed,
                state="healthy" if result.passed else "unhealthy",
                previousState=previous,
                reason=result.reason,
            )

    def _checkDone(self, result: object, backend: Backend, d: Deferred[Any]) -> None:
        if self._inFlight.get(backend) is d:
            del self._inFlight[backend]
        if self.running:
            self._checkedOnce.add(backend)
        if self._firstRoundWaiters and self._firstRoundComplete():
            self._releaseFirstRoundWaiters()
