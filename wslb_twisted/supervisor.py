"""
The main process of C{--workers N}: the health checker, the monitoring port
and the workers (see L{wslb_twisted.workers}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from wslb_twisted.config import ConfigError, Settings
from wslb_twisted.monitor import makeMonitorSite
from wslb_twisted.reload import PoolUpdate
from wslb_twisted.service import (
    CheckedPoolService,
    ListeningService,
    StartupError,
    withBacklog,
)
from wslb_twisted.workers import WorkerPool, listeningSocket

log = Logger()


class SupervisorService(CheckedPoolService):
    """
    Runs the workers on a listening socket it opens (and never accepts on),
    checks the backends' health for all of them, and serves the monitoring
    API about all of them.

    @ivar pool: the backends, with the workers' counters summed in.
    @ivar checker: the one health checker.
    @ivar workers: the worker processes.
    @ivar monitorListener: listens for the monitoring API.
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
        @param settings: validated configuration, with C{workers} above 1.
        @param reactor: the reactor to run on.
        @param reloadSettings: reads and validates the configuration again,
            for L{reload}.
        @param handleSignals: whether SIGHUP reloads and a second SIGTERM or
            SIGINT while stopping is passed on to the workers (under twistd).
        """
        super().__init__(settings, reactor, reloadSettings, handleSignals)
        self.workers = WorkerPool(self.pool, settings, settings.workers, reactor)
        self.workers.catchSignals = handleSignals
        self._clientPort: int | None = None
        site = makeMonitorSite(
            self.pool, settings.algorithm, reactor, self.workers, self.clientPort
        )
        self.monitorListener = ListeningService(
            settings.monitorPort, "monitoring port", site, reactor
        )
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
            sock = listeningSocket(withBacklog(self.settings.port), self.reactor)
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

    def applyReload(self, update: PoolUpdate) -> None:
        """
        Send each worker the new settings over AMP (L{Reconfigure
        <wslb_twisted.workers.Reconfigure>}); workers started from now on get
        them too.
        """
        self.workers.reconfigure(self.settings)
