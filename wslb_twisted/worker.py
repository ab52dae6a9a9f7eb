"""
A worker process of C{--workers N}: accepts clients on the listening socket
it inherits and relays them, following the supervisor's health checks (see
L{wslb_twisted.workers}).

Run by the supervisor as C{python -m wslb_twisted.worker}; not by hand.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import sys
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import connectionDone
from twisted.logger import FileLogObserver, Logger, formatEvent, globalLogBeginner
from twisted.protocols import amp
from twisted.python.failure import Failure

from wslb_twisted.backends import Backend, BackendPool
from wslb_twisted.drain import Drain, catchStopSignals
from wslb_twisted.plugin import availableStrategies
from wslb_twisted.relay import RelayFactory
from wslb_twisted.reload import applyPoolUpdate, planPoolUpdate
from wslb_twisted.workers import (
    LISTENING_FD,
    SETTINGS_VARIABLE,
    Reconfigure,
    Sync,
    settingsFromJSON,
    workerStats,
)

log = Logger()

SHUTDOWN_TIMEOUT = 5.0


class Readiness:
    """
    Fires the Deferreds of clients waiting for the first sync, which brings
    the backends' health.
    """

    def __init__(self) -> None:
        self.ready = False
        self._waiting: list[Deferred[None]] = []

    def wait(self) -> Deferred[None]:
        """
        A Deferred firing once the health of the backends is known.
        """
        if self.ready:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        return d

    def fire(self) -> None:
        """
        The health is known: release the waiting clients.
        """
        if self.ready:
            return
        self.ready = True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)


class WorkerAMP(amp.AMP):
    """
    The worker's end of the supervisor connection.
    """

    def __init__(
        self, pool: BackendPool, relay: RelayFactory, readiness: Readiness, reactor: Any
    ) -> None:
        super().__init__()
        self.pool = pool
        self.relay = relay
        self.readiness = readiness
        self.reactor = reactor

    @Sync.responder
    def sync(self, health: str, elsewhere: str, clients: int) -> dict[str, str]:
        """
        Take the backends' health and the other workers' connection and
        client counts; answer with this worker's counters.
        """
        healthy = json.loads(health)
        others = json.loads(elsewhere)
        for backend in self.pool:
            backend.healthy = bool(healthy.get(backend.id, False))
            backend.elsewhereConnections = int(others.get(backend.id, 0))
        self.readiness.fire()
        relay = self.relay
        relay.elsewhereClients = clients
        stats = workerStats(
            self.pool, len(relay.sessions), relay.refusals, relay.clientCloses
        )
        return {"stats": stats}

    @Reconfigure.responder
    def reconfigure(self, backends: str, drainSeconds: float) -> dict[str, str]:
        """
        Follow a reload: update the pool to the new backend list as the
        supervisor did, and take the new drain period.  New backends stay out
        of rotation until a sync says they are healthy.
        """
        relay = self.relay
        wanted = [Backend(**config) for config in json.loads(backends)]
        update = planPoolUpdate(self.pool, wanted)
        applyPoolUpdate(self.pool, update)
        if update.anything:
            relay.strategy = availableStrategies()[relay.settings.algorithm]()
        relay.settings.drainSeconds = drainSeconds
        return {}

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        The supervisor is gone: stop, closing the clients with 1001.
        """
        super().connectionLost(reason)
        if self.reactor.running:
            self.reactor.stop()


def main() -> None:
    """
    Run one worker until the supervisor stops it.
    """
    from twisted.internet import reactor
    from twisted.internet.stdio import StandardIO

    number = os.environ.get("WSLB_WORKER_NUMBER", "?")
    globalLogBeginner.beginLoggingTo(
        [FileLogObserver(sys.stderr, lambda event: (formatEvent(event) or "") + "\n")],
        redirectStandardIO=False,
    )
    settings, isSecure = settingsFromJSON(os.environ[SETTINGS_VARIABLE])
    pool = BackendPool(list(settings.backends))
    readiness = Readiness()
    relay = RelayFactory(
        pool,
        availableStrategies()[settings.algorithm](),
        settings,
        reactor=reactor,
        whenReady=readiness.wait,
        isSecure=isSecure,
    )
    probe = socket.socket(fileno=os.dup(LISTENING_FD))
    family = probe.family
    probe.close()
    port = reactor.adoptStreamPort(  # type: ignore[attr-defined]
        LISTENING_FD, family, relay
    )
    os.close(LISTENING_FD)

    def stop() -> Deferred[Any]:
        port.stopListening()
        drain = Drain(relay, relay.settings.drainSeconds, SHUTDOWN_TIMEOUT, reactor)
        done = drain.start()
        if not done.called:
            # The supervisor passes a second SIGTERM on.
            restore = catchStopSignals(reactor, drain.hurry, [signal.SIGTERM])

            def restoring(result: object) -> object:
                restore()
                return result

            done.addBoth(restoring)
        return done

    # Stopping is the supervisor's call: a Ctrl-C reaches the workers too,
    # and would count as the second signal of the supervisor's SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    reactor.addSystemEventTrigger("before", "shutdown", stop)
    StandardIO(WorkerAMP(pool, relay, readiness, reactor))
    log.info("worker {number} accepting clients", number=number)

    def freezeHeap() -> None:
        # As wslb_twisted.service.freezeHeap: full collections need not walk
        # what lives as long as the process.
        gc.collect()
        gc.freeze()

    reactor.callWhenRunning(freezeHeap)
    reactor.run()


if __name__ == "__main__":
    main()
