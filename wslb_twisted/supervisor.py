"""
The main process of C{--workers N}: the health checker, the monitoring port
and the workers (see L{wslb_twisted.workers}).
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService
from twisted.logger import Logger

from wslb_twisted.backends import BackendPool
from wslb_twisted.config import ConfigError, Settings
from wslb_twisted.health import HealthChecker
from wslb_twisted.monitor import makeMonitorSite
from wslb_twisted.service import ListeningService, StartupError
from wslb_twisted.workers import WorkerPool, listeningSocket

log = Logger()


class SupervisorService(MultiService):
    """
    Runs the workers on a listening socket it opens (and never accepts on),
    checks the backends' health for all of them, and serves the monitoring
    API about all of them.

    @ivar pool: the backends, with the workers' counters summed in.
    @ivar checker: the one health checker.
    @ivar workers: the worker processes.
    @ivar monitorListener: listens for the monitoring API.
    """

    def __init__(self, settings: Settings, reactor: Any) -> None:
        """
        @param settings: validated configuration, with C{workers} above 1.
        @param reactor: the reactor to run on.
        """
        super().__init__()
        self.setName("wslb")
        self.settings = settings
        self.reactor = reactor
        self.pool = BackendPool(list(settings.backends))
        self.checker = HealthChecker(
            self.pool, settings.healthInterval, settings.healthTimeout, reactor=reactor
        )
        self.workers = WorkerPool(self.pool, settings, settings.workers, reactor)
        self._clientPort: int | None = None
        site = makeMonitorSite(
            self.pool, settings.algorithm, reactor, self.workers, self.clientPort
        )
        self.monitorListener = ListeningService(
            settings.monitorPort, "monitoring port", site, reactor
        )
        self.checker.setServiceParent(self)
        self.monitorListener.setServiceParent(self)

    def clientPort(self) -> int | None:
        """
        The port clients connect to, for the dashboard's quote ticker.
        """
        return self._clientPort

    def privilegedStartService(self) -> None:
        """
        Open the client port, then everything else.

        @raise StartupError: with one line naming the problem, when the client
            port cannot be opened.
        """
        try:
            sock = listeningSocket(self.settings.port, self.reactor)
        except ConfigError as error:
            raise StartupError(f"wslb: {error}") from None
        except OSError as error:
            raise StartupError(
                f"wslb: cannot listen on {self.settings.port!r} (client port): "
                f"{error.strerror or error}"
            ) from None
        host, self._clientPort = sock.getsockname()[:2]
        log.info(
            "client port listening on {host}:{port} ({workers} workers)",
            host=host,
            port=self._clientPort,
            workers=self.settings.workers,
        )
        self.workers.listening = sock
        self.workers.setServiceParent(self)
        super().privilegedStartService()
