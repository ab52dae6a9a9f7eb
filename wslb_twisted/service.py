"""
Wiring: the health checker, the relay and the monitoring site as one service.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python.failure import Failure

from wslb_twisted.backends import BackendPool
from wslb_twisted.config import Settings
from wslb_twisted.drain import Drain, catchStopSignals
from wslb_twisted.health import HealthChecker
from wslb_twisted.monitor import makeMonitorSite
from wslb_twisted.plugin import availableStrategies
from wslb_twisted.relay import RelayFactory
from wslb_twisted.reload import PoolUpdate, SIGHUPHandler, reloadPool

log = Logger()

SHUTDOWN_TIMEOUT = 5.0


def freezeHeap() -> None:
    """
    Leave every object that exists now out of the garbage collector's full
    collections.

    Called once the process is set up: the modules and the service live as
    long as the process, yet a full collection would walk them all (some
    hundred thousand objects, 50 to 100 ms with no message moving), and
    connections coming and going trigger one every few thousand connections.
    Afterwards a full collection walks only what was made since.
    """
    gc.collect()
    gc.freeze()


CLIENT_BACKLOG = 1024
"""
The listen backlog of the client port unless its endpoint string gives one:
Twisted's default of 50 overflows when clients arrive in bursts (reconnecting
after a backend restart), and every overflow costs a client a one-second SYN
retry.
"""


def withBacklog(description: str, backlog: int = CLIENT_BACKLOG) -> str:
    """
    A TCP server endpoint string with a listen backlog, unless it has one.

    @param description: a server endpoint string.
    @param backlog: the backlog to add.
    @return: C{description}, with C{:backlog=N} added to C{tcp:} and
        C{tcp6:} endpoints that give none.
    """
    kind = description.split(":", 1)[0]
    if kind in ("tcp", "tcp6") and "backlog=" not in description:
        return f"{description}:backlog={backlog}"
    return description


class StartupError(SystemExit, Exception):
    """
    Startup cannot go on (a port cannot be opened): one line for the operator.

    A L{SystemExit}, so that C{twistd -n} prints just the message and exits
    with status 1; and an L{Exception}, so that a daemonizing twistd reports
    it to the parent process (which prints it and exits 1) rather than
    leaving the parent waiting.
    """


class ListeningService(Service):
    """
    Listens on a server endpoint string while running.

    Unlike L{twisted.application.internet.StreamServerEndpointService}, a
    failure to listen (a port in use, a bad key file) stops the process with
    one line naming the setting, rather than a logged traceback and a process
    that runs on without its port.
    """

    def __init__(
        self,
        description: str,
        setting: str,
        factory: Any,
        reactor: Any,
        backlog: int | None = None,
    ) -> None:
        """
        @param description: the endpoint string, e.g. C{tcp:3000}.
        @param setting: what the operator configured it with, for messages.
        @param factory: the protocol factory to listen with.
        @param reactor: the reactor to listen on.
        @param backlog: a listen backlog for a TCP endpoint string that gives
            none (see L{withBacklog}).
        """
        self.description = description
        self.backlog = backlog
        self.setting = setting
        self.factory = factory
        self.reactor = reactor
        self.port: Any = None

    def privilegedStartService(self) -> None:
        """
        Listen now: TCP and TLS endpoints do so synchronously, so a failure
        stops startup before the reactor runs.
        """
        super().privilegedStartService()
        description = self.description
        if self.backlog is not None:
            description = withBacklog(description, self.backlog)
        endpoint = serverFromString(self.reactor, description)
        failures: list[Failure] = []
        endpoint.listen(self.factory).addCallbacks(self._listening, failures.append)
        if failures:
            self._failed(failures[0])

    def _listening(self, port: Any) -> None:
        self.port = port
        address = port.getHost()
        log.info(
            "{setting} listening on {host}:{port}",
            setting=self.setting,
            host=getattr(address, "host", "?"),
            port=getattr(address, "port", "?"),
        )

    def _failed(self, failure: Failure) -> None:
        raise StartupError(
            f"wslb: cannot listen on {self.description!r} ({self.setting}): "
            f"{failure.getErrorMessage()}"
        )

    def stopService(self) -> Deferred[None] | None:
        """
        Stop listening.
        """
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return None
        return maybeDeferred(port.stopListening)


class ClosingService(Service):
    """
    Closes every client with 1001 "going away" when the service stops,
    spread over C{drainSeconds} (see L{wslb_twisted.drain}).

    @ivar drainSeconds: the period over which the clients are closed (0: all
        at once); a reload may change it.
    @ivar catchSignals: whether a second SIGTERM or SIGINT during the drain
        closes the remaining clients at once (under twistd; not for a
        service run inside another program).
    @ivar drain: the drain under way, or C{None}.
    """

    def __init__(
        self,
        relay: RelayFactory,
        timeout: float,
        drainSeconds: float = 0.0,
        reactor: Any = None,
        catchSignals: bool = False,
    ) -> None:
        """
        @param relay: the relay whose connections to close.
        @param timeout: seconds allowed for closing handshakes, after the
            drain period, before the remaining connections are cut.
        @param drainSeconds: the period over which to close the clients.
        @param reactor: times the drain and runs the signal handlers; the
            relay's reactor when C{None}.
        @param catchSignals: whether to catch a second stop signal.
        """
        self.relay = relay
        self.timeout = timeout
        self.drainSeconds = drainSeconds
        self.reactor = relay.reactor if reactor is None else reactor
        self.catchSignals = catchSignals
        self.drain: Drain | None = None

    def stopService(self) -> Deferred[None]:
        """
        Close every connection, spread over the drain period; fires when none
        is left.
        """
        super().stopService()
        drain = self.drain = Drain(
            self.relay, self.drainSeconds, self.timeout, self.reactor
        )
        done = drain.start()
        if self.catchSignals and not done.called:
            restore = catchStopSignals(self.reactor, drain.hurry)
            done.addBoth(_after, restore)
        return done


def _after(result: object, call: Callable[[], object]) -> object:
    call()
    return result


class CheckedPoolService(MultiService):
    """
    What every process holding the health checker has (the load balancer,
    or the supervisor of C{--workers}): the settings in force, the backends,
    the one health checker, and SIGHUP reloading the configuration.

    @ivar settings: the settings in force (a reload changes some).
    @ivar reloadSettings: reads the configuration again for a reload, or
        C{None}.
    @ivar reactor: the reactor the service runs on.
    @ivar pool: the backends.
    @ivar checker: the health checker.
    """

    def __init__(
        self,
        settings: Settings,
        reactor: Any,
        reloadSettings: Callable[[], Settings] | None,
        handleSignals: bool,
    ) -> None:
        """
        @param settings: validated configuration.
        @param reactor: the reactor to run on.
        @param reloadSettings: reads and validates the configuration again,
            raising L{ConfigError <wslb_twisted.config.ConfigError>} when it
            is bad; used by C{reload}.
        @param handleSignals: whether SIGHUP reloads (with
            C{reloadSettings}), as under twistd.
        """
        super().__init__()
        self.setName("wslb")
        self.settings = settings
        self.reloadSettings = reloadSettings
        self.reactor = reactor
        self._sighup: SIGHUPHandler | None = None
        if handleSignals and reloadSettings is not None:
            self._sighup = SIGHUPHandler(reactor, self.reload)
        self.pool = BackendPool(list(settings.backends))
        self.checker = HealthChecker(
            self.pool,
            settings.healthInterval,
            settings.healthTimeout,
            reactor=reactor,
            rise=settings.healthRise,
            fall=settings.healthFall,
        )
        self.checker.setServiceParent(self)

    def reload(self) -> bool:
        """
        Read the configuration again and apply what can change live; see
        L{reloadPool}.  A bad configuration changes nothing.

        @return: whether the new configuration was taken.
        """
        if self.reloadSettings is None or not self.running:
            return False
        result = reloadPool(self.reloadSettings, self.settings, self.pool)
        if result is None:
            return False
        self.settings, update = result
        self.applyReload(update)
        self.checker.checkNow(update.joining)
        return True

    def applyReload(self, update: PoolUpdate) -> None:
        """
        Apply a reloaded configuration beyond the pool; C{self.settings} is
        already the new one.

        @param update: what changed in the pool.
        """

    def startService(self) -> None:
        """
        Start everything, and handle SIGHUP once the reactor runs.
        """
        super().startService()
        if self._sighup is not None:
            self.reactor.callWhenRunning(self._installSIGHUP)

    def _installSIGHUP(self) -> None:
        if self.running and self._sighup is not None:
            self._sighup.install()

    def stopService(self) -> Deferred[Any]:
        """
        Stop everything; SIGHUPs are ignored meanwhile, and the previous
        SIGHUP handler is put back once everything has stopped.
        """
        stopped: Deferred[Any] = super().stopService()
        if self._sighup is not None:
            return self._sighup.stopping(stopped)
        return stopped


class LoadBalancerService(CheckedPoolService):
    """
    The whole load balancer: health checker, client port, monitoring port.

    @ivar pool: the backends.
    @ivar relay: the client-facing WebSocket factory.
    @ivar checker: the health checker.
    @ivar clientListener: listens for clients.
    @ivar monitorListener: listens for the monitoring API.
    @ivar closing: closes (drains) the clients when the service stops.
    @ivar settings: the settings in force (a reload changes some).
    @ivar reloadSettings: reads the configuration again for L{reload}, or
        C{None}.
    """

    def __init__(
        self,
        settings: Settings,
        reactor: Any,
        reloadSettings: Callable[[], Settings] | None = None,
        handleSignals: bool = False,
    ) -> None:
        """
        @param settings: validated configuration.
        @param reactor: the reactor to run on.
        @param reloadSettings: reads and validates the configuration again,
            raising L{ConfigError <wslb_twisted.config.ConfigError>} when it
            is bad; used by L{reload}.
        @param handleSignals: whether SIGHUP reloads (with
            C{reloadSettings}) and a second SIGTERM or SIGINT during the
            drain closes every client at once, as under twistd.
        """
        super().__init__(settings, reactor, reloadSettings, handleSignals)
        self._ready = False
        self._ownsProcess = handleSignals
        strategy = availableStrategies()[settings.algorithm]()
        self.relay = RelayFactory(
            self.pool,
            strategy,
            settings,
            reactor=reactor,
            whenReady=self._whenReady,
            isSecure=settings.port.split(":", 1)[0] in ("ssl", "tls"),
        )
        site = makeMonitorSite(
            self.pool, settings.algorithm, reactor, self.relay, self.clientPort
        )
        self.clientListener = ListeningService(
            settings.port, "client port", self.relay, reactor, CLIENT_BACKLOG
        )
        self.monitorListener = ListeningService(
            settings.monitorPort, "monitoring port", site, reactor
        )
        self.closing = ClosingService(
            self.relay,
            SHUTDOWN_TIMEOUT,
            settings.drainSeconds,
            reactor,
            catchSignals=handleSignals,
        )
        self.closing.setServiceParent(self)
        self.clientListener.setServiceParent(self)
        self.monitorListener.setServiceParent(self)

    def clientPort(self) -> int | None:
        """
        The port clients connect to, for the dashboard's quote ticker.

        @return: the client listener's port number, or C{None} while it is
            not listening (or listens on something without a port).
        """
        port = self.clientListener.port
        if port is None:
            return None
        number = getattr(port.getHost(), "port", None)
        return number if isinstance(number, int) else None

    def _whenReady(self) -> Deferred[None]:
        """
        What a client waits for before a backend is picked: the first health
        checks at startup, and nothing after them (backends a reload adds
        join when checked, without holding anyone up).
        """
        if self._ready:
            return succeed(None)
        waiting = self.checker.whenFirstRoundDone()
        waiting.addCallback(self._readyNow)
        return waiting

    def _readyNow(self, result: None) -> None:
        self._ready = True

    def startService(self) -> None:
        """
        Start everything; once the reactor runs, handle SIGHUP and, when
        the process is the load balancer's alone (under twistd), freeze the
        heap (see L{freezeHeap}).
        """
        super().startService()
        if self._ownsProcess:
            self.reactor.callWhenRunning(freezeHeap)

    def applyReload(self, update: PoolUpdate) -> None:
        """
        Take the new drain period, and give the relay a fresh strategy when
        the backends changed (strategies remember backends: turns, weights,
        hash points).
        """
        self.closing.drainSeconds = self.settings.drainSeconds
        if update.anything:
            strategy = availableStrategies()[self.settings.algorithm]()
            self.relay.strategy = strategy


def makeService(
    settings: Settings,
    reactor: Any = None,
    reloadSettings: Callable[[], Settings] | None = None,
    handleSignals: bool = False,
) -> MultiService:
    """
    Build the load balancer from its settings.

    @param settings: validated configuration.
    @param reactor: the reactor to run on; the global one when C{None}.
    @param reloadSettings: reads the configuration again on SIGHUP (see
        L{LoadBalancerService.reload}).
    @param handleSignals: whether to handle SIGHUP and a second stop signal
        (under twistd).
    @return: a service running the health checker, the client port and the
        monitoring port.
    """
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        reactor = globalReactor
    if settings.workers > 1:
        from wslb_twisted.supervisor import SupervisorService

        return SupervisorService(settings, reactor, reloadSettings, handleSignals)
    return LoadBalancerService(settings, reactor, reloadSettings, handleSignals)
