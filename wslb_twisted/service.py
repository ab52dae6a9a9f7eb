"""
Wiring: the health checker, the relay and the monitoring site as one service.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python.failure import Failure

from wslb_twisted.backends import BackendPool
from wslb_twisted.config import Settings
from wslb_twisted.health import HealthChecker
from wslb_twisted.monitor import makeMonitorSite
from wslb_twisted.plugin import availableStrategies
from wslb_twisted.relay import RelayFactory

log = Logger()

SHUTDOWN_TIMEOUT = 5.0


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
        self, description: str, setting: str, factory: Any, reactor: Any
    ) -> None:
        """
        @param description: the endpoint string, e.g. C{tcp:3000}.
        @param setting: what the operator configured it with, for messages.
        @param factory: the protocol factory to listen with.
        @param reactor: the reactor to listen on.
        """
        self.description = description
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
        endpoint = serverFromString(self.reactor, self.description)
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
    Closes every client with 1001 "going away" when the service stops.
    """

    def __init__(self, relay: RelayFactory, timeout: float) -> None:
        """
        @param relay: the relay whose connections to close.
        @param timeout: seconds allowed for closing handshakes before the
            remaining connections are cut.
        """
        self.relay = relay
        self.timeout = timeout

    def stopService(self) -> Deferred[None]:
        """
        Close every connection; fires when none is left.
        """
        super().stopService()
        clients = len(self.relay.sessions)
        if clients:
            log.info("closing {clients} client(s) with 1001", clients=clients)
        return self.relay.closeAll(self.timeout)


class LoadBalancerService(MultiService):
    """
    The whole load balancer: health checker, client port, monitoring port.

    @ivar pool: the backends.
    @ivar relay: the client-facing WebSocket factory.
    @ivar checker: the health checker.
    @ivar clientListener: listens for clients.
    @ivar monitorListener: listens for the monitoring API.
    """

    def __init__(self, settings: Settings, reactor: Any) -> None:
        """
        @param settings: validated configuration.
        @param reactor: the reactor to run on.
        """
        super().__init__()
        self.setName("wslb")
        self.settings = settings
        self.pool = BackendPool(list(settings.backends))
        strategy = availableStrategies()[settings.algorithm]()
        self.checker = HealthChecker(
            self.pool, settings.healthInterval, settings.healthTimeout, reactor=reactor
        )
        self.relay = RelayFactory(
            self.pool,
            strategy,
            settings,
            reactor=reactor,
            whenReady=self.checker.whenFirstRoundDone,
            isSecure=settings.port.split(":", 1)[0] in ("ssl", "tls"),
        )
        site = makeMonitorSite(
            self.pool, settings.algorithm, reactor, self.relay, self.clientPort
        )
        self.clientListener = ListeningService(
            settings.port, "client port", self.relay, reactor
        )
        self.monitorListener = ListeningService(
            settings.monitorPort, "monitoring port", site, reactor
        )
        self.checker.setServiceParent(self)
        ClosingService(self.relay, SHUTDOWN_TIMEOUT).setServiceParent(self)
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


def makeService(settings: Settings, reactor: Any = None) -> MultiService:
    """
    Build the load balancer from its settings.

    @param settings: validated configuration.
    @param reactor: the reactor to run on; the global one when C{None}.
    @return: a service running the health checker, the client port and the
        monitoring port.
    """
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        reactor = globalReactor
    if settings.workers > 1:
        from wslb_twisted.supervisor import SupervisorService

        return SupervisorService(settings, reactor)
    return LoadBalancerService(settings, reactor)
