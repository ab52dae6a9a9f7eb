"""
The one-process demo: three quote backends and the load balancer in front of
them, on the port table of the seed (3000-3004, health on 4001-4003).
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService
from twisted.logger import Logger

from wslb_twisted.backends import Backend
from wslb_twisted.config import Settings
from wslb_twisted.demo.backend import BackendService, makeBackendService
from wslb_twisted.demo.quotes import DEFAULT_SYMBOLS, RandomWalk
from wslb_twisted.service import LoadBalancerService

log = Logger()

BACKENDS = 3


def _endpoint(port: int, interface: str) -> str:
    return f"tcp:{port}:interface={interface}"


class DemoService(MultiService):
    """
    Three demo backends and a load balancer in one process.

    The backends start listening first; the load balancer is built once
    their ports are known, so the whole demo can also run on ephemeral ports
    (C{basePort=0}) for tests.

    @ivar backends: the quote backends.
    @ivar loadBalancer: the load balancer, once started.
    """

    def __init__(
        self,
        basePort: int = 3000,
        interface: str = "127.0.0.1",
        algorithm: str = "round-robin",
        rate: float = 2.0,
        healthInterval: float = 2.0,
        reactor: Any = None,
    ) -> None:
        """
        @param basePort: the load balancer's port; backend N listens on
            C{basePort + N} with health on C{basePort + N + 1000}, monitoring
            on C{basePort + 4}.  0 picks ephemeral ports for everything.
        @param interface: the address everything listens on.
        @param algorithm: the balancing strategy.
        @param rate: quotes per second per symbol from each backend.
        @param healthInterval: seconds between health checks.
        @param reactor: the reactor; the global one when C{None}.
        """
        super().__init__()
        self.setName("wslb-demo")
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        self._reactor = reactor
        self._basePort = basePort
        self._interface = interface
        self._algorithm = algorithm
        self._healthInterval = healthInterval
        self.loadBalancer: LoadBalancerService | None = None

        def port(offset: int) -> str:
            return _endpoint(basePort + offset if basePort else 0, interface)

        self.backends: list[BackendService] = [
            makeBackendService(
                port(n),
                port(n + 1000),
                f"backend-{n}",
                RandomWalk(DEFAULT_SYMBOLS, seed=n),
                rate=rate,
                reactor=reactor,
            )
            for n in range(1, BACKENDS + 1)
        ]
        for backend in self.backends:
            backend.setServiceParent(self)

    def privilegedStartService(self) -> None:
        """
        Listen with the backends, then build the load balancer in front of
        them and listen with it too.
        """
        super().privilegedStartService()
        specs = []
        for n, backend in enumerate(self.backends, start=1):
            specs.append(
                Backend(
                    id=f"backend-{n}",
                    host=self._interface,
                    port=backend.listener.port.getHost().port,
                    healthPort=backend.healthListener.port.getHost().port,
                )
            )
        port = self._basePort
        settings = Settings(
            port=_endpoint(port, self._interface),
            monitorPort=_endpoint(port + 4 if port else 0, self._interface),
            algorithm=self._algorithm,
            healthInterval=self._healthInterval,
            healthTimeout=min(1.0, self._healthInterval),
            backends=specs,
        )
        self.loadBalancer = LoadBalancerService(settings, self._reactor)
        self.loadBalancer.setServiceParent(self)
        self.loadBalancer.privilegedStartService()

    def startService(self) -> None:
        """
        Start everything and say where to look.
        """
        super().startService()
        assert self.loadBalancer is not None
        host = self._interface
        lbPort = self.loadBalancer.clientListener.port.getHost().port
        monitor = self.loadBalancer.monitorListener.port.getHost().port
        backends = ", ".join(
            f"{b.factory.name} ws://{host}:{b.listener.port.getHost().port}"
            for b in self.backends
        )
        log.info(
            "wslb demo running.\n"
            "  Dashboard:      http://{host}:{monitor}/\n"
            "  Load balancer:  ws://{host}:{lbPort}  "
            '(send {{"type": "subscribe", "symbols": ["AAPL"]}})\n'
            "  Monitoring:     http://{host}:{monitor}/health  /status\n"
            "  Backends:       {backends}\n"
            "  Make a backend fail its health check: "
            "curl -X POST http://{host}:{healthPort}/fail  (and /recover)",
            host=host,
            lbPort=lbPort,
            monitor=monitor,
            backends=backends,
            healthPort=self.backends[0].healthListener.port.getHost().port,
        )
