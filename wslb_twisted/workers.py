"""
Several worker processes sharing the client port (C{--workers N}).

Python runs one core per process, so with N workers the parent process (the
supervisor) listens on the client port but never accepts: it hands the
listening socket to N child processes, which accept and relay.  The health
checker and the monitoring port stay in the supervisor, so C{/health},
C{/status} and C{/metrics} describe the whole load balancer.

Supervisor and workers talk AMP over each child's standard input and output.
Ten times a second the supervisor sends every worker one L{Sync}: the health
of every backend, and how many connections the other workers hold on each;
the worker answers with its own counters.  So workers follow the one health
checker, least-connections sees every worker's connections (as of the last
sync), and the supervisor's counters are the sums over the workers.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import ip_network
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ProcessDone
from twisted.internet.interfaces import IAddress, ITransport
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from wslb_twisted.backends import Backend, BackendPool
from wslb_twisted.config import ConfigError, Settings
from wslb_twisted.drain import catchStopSignals
from wslb_twisted.reload import backendConfig

log = Logger()

SYNC_INTERVAL = 0.1
"""Seconds between two syncs of the supervisor with each worker."""

RESTART_DELAY = 1.0
"""Seconds before a worker that died is started again."""

STOP_TIMEOUT = 10.0
"""Seconds a worker is given to close its clients before it is killed."""

LISTENING_FD = 3
"""The file descriptor number of the client port in a worker."""

SETTINGS_VARIABLE = "WSLB_WORKER_SETTINGS"
"""The environment variable carrying a worker's settings, as JSON."""

_COUNTERS = (
    "activeConnections",
    "totalConnections",
    "connectFailures",
    "messagesToBackend",
    "messagesToClient",
    "bytesToBackend",
    "bytesToClient",
)


class Sync(amp.Command):
    """
    Supervisor to worker: here is the backends' health and the connections
    the other workers hold; answer with your counters.

    C{health} maps backend ids to booleans, C{elsewhere} maps them to
    connection counts, and the answer's C{stats} holds, per backend id, the
    values of L{_COUNTERS} under C{backends}, plus C{clients} and
    C{refusals} and C{clientCloses}; all JSON.  C{clients} is how many
    clients the other workers hold (for C{maxClients}).
    """

    arguments = [
        (b"health", amp.Unicode()),
        (b"elsewhere", amp.Unicode()),
        (b"clients", amp.Integer()),
    ]
    response = [(b"stats", amp.Unicode())]


class Reconfigure(amp.Command):
    """
    Supervisor to worker: the configuration was reloaded; here are the new
    backend list and drain period.

    C{backends} is a JSON list of objects holding each backend's configured
    fields (L{wslb_twisted.reload.backendConfig}).  The worker updates its
    pool as the supervisor did (see L{wslb_twisted.reload}): backends are
    matched by id, and those it keeps keep their clients and counters.
    """

    arguments = [(b"backends", amp.Unicode()), (b"drainSeconds", amp.Float())]


def settingsToJSON(settings: Settings) -> str:
    """
    Encode the settings a worker needs.
    """
    return json.dumps(
        {
            "algorithm": settings.algorithm,
            "maxRetries": settings.maxRetries,
            "connectTimeout": settings.connectTimeout,
            "maxMessageSize": settings.maxMessageSize,
            "drainSeconds": settings.drainSeconds,
            "maxClients": settings.maxClients,
            "maxConnectionsPerIP": settings.maxConnectionsPerIP,
            "handshakeTimeout": settings.handshakeTimeout,
            "allowedOrigins": settings.allowedOrigins,
            "trustedProxies": [str(n) for n in settings.trustedProxies],
            "isSecure": settings.port.split(":", 1)[0] in ("ssl", "tls"),
            "backends": [
                {
                    "id": b.id,
                    "host": b.host,
                    "port": b.port,
                    "weight": b.weight,
                    "healthPort": b.healthPort,
                    "healthPath": b.healthPath,
                    "maxConnections": b.maxConnections,
                    "tls": b.tls,
                }
                for b in settings.backends
            ],
            "backendCA": settings.backendCA,
        }
    )


def settingsFromJSON(text: str) -> tuple[Settings, bool]:
    """
    Decode what L{settingsToJSON} encoded.

    @return: the settings and whether clients connect over TLS.
    """
    data = json.loads(text)
    settings = Settings(
        algorithm=data["algorithm"],
        maxRetries=data["maxRetries"],
        connectTimeout=data["connectTimeout"],
        maxMessageSize=data["maxMessageSize"],
        drainSeconds=data["drainSeconds"],
        maxClients=data["maxClients"],
        maxConnectionsPerIP=data["maxConnectionsPerIP"],
        handshakeTimeout=data["handshakeTimeout"],
        allowedOrigins=data["allowedOrigins"],
        trustedProxies=[ip_network(n) for n in data["trustedProxies"]],
        backends=[Backend(**b) for b in data["backends"]],
        backendCA=data["backendCA"],
    )
    return settings, data["isSecure"]


def listeningSocket(description: str, reactor: Any) -> socket.socket:
    """
    Bind and listen on a C{tcp:} endpoint string without accepting, so the
    socket can be handed to the workers.

    @raise ConfigError: when the endpoint is not plain TCP.
    """
    endpoint = serverFromString(reactor, description)
    port = getattr(endpoint, "_port", None)
    if type(endpoint).__name__ not in ("TCP4ServerEndpoint", "TCP6ServerEndpoint"):
        raise ConfigError(
            f"--workers needs a tcp: client port; {description!r} is not one"
        )
    interface = getattr(endpoint, "_interface", "") or ""
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((interface, port))
    sock.listen(getattr(endpoint, "_backlog", 50))
    sock.setblocking(False)
    return sock


@dataclass
class WorkerState:
    """
    What the supervisor knows of one worker.

    @ivar number: 1-based, for logs.
    @ivar stats: the counters of its last answer, by backend id.
    """

    number: int
    process: Any = None
    protocol: amp.AMP | None = None
    stats: dict[str, list[int]] = field(default_factory=dict)
    clients: int = 0
    refusals: dict[str, int] = field(default_factory=dict)
    clientCloses: dict[int, int] = field(default_factory=dict)
    ended: Deferred[None] | None = None


@implementer(IAddress)
class _PipeAddress:
    """
    The address of the other end of a child's standard input and output.
    """


@implementer(ITransport)
class _ChildPipes:
    """
    The transport AMP talks to a worker over: the child's standard input to
    write, its standard output (fed in by L{WorkerProcess}) to read.
    """

    def __init__(self, process: Any) -> None:
        self._process = process

    def write(self, data: bytes) -> None:
        self._process.write(data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self._process.writeSequence(list(data))

    def loseConnection(self) -> None:
        self._process.closeStdin()

    def getPeer(self) -> _PipeAddress:
        return _PipeAddress()

    def getHost(self) -> _PipeAddress:
        return _PipeAddress()


class WorkerProcess(ProcessProtocol):
    """
    The supervisor's end of one worker: AMP over the child's standard input
    and output, its standard error relayed to the log line by line.
    """

    def __init__(self, supervisor: WorkerPool, state: WorkerState) -> None:
        self.supervisor = supervisor
        self.state = state
        self.amp = amp.AMP()
        self._errors = b""

    def connectionMade(self) -> None:
        self.amp.makeConnection(_ChildPipes(self.transport))
        self.state.protocol = self.amp

    def outReceived(self, data: bytes) -> None:
        self.amp.dataReceived(data)

    def errReceived(self, data: bytes) -> None:
        lines = (self._errors + data).split(b"\n")
        self._errors = lines.pop()
        for line in lines:
            log.info(
                "worker {worker}: {line}",
                worker=self.state.number,
                line=line.decode("utf-8", "replace"),
            )

    def processEnded(self, reason: Failure) -> None:
        self.state.protocol = None
        self.amp.connectionLost(reason)
        self.supervisor.workerEnded(self.state, reason)


class WorkerPool(Service):
    """
    Runs the workers, restarts those that die, and keeps them and the
    supervisor's view of the backends in sync.

    @ivar workers: the workers' states.
    @ivar sessions: a sized stand-in for the connected clients of all
        workers (for the metrics, which read C{len(relay.sessions)}).
    @ivar refusals: handshakes refused by all workers, by reason.
    @ivar clientCloses: clients failed by all workers' data paths, by close
        code.
    """

    def __init__(
        self,
        pool: BackendPool,
        settings: Settings,
        count: int,
        reactor: Any,
    ) -> None:
        """
        @param pool: the supervisor's backends, whose health the checker
            writes and whose counters this pool fills in.
        @param settings: the configuration handed to the workers.
        @param count: how many workers to run.
        @param reactor: spawns the processes and times the syncs.
        """
        self.pool = pool
        self.settings = settings
        self.listening: socket.socket | None = None
        self.reactor = reactor
        self.workers = [WorkerState(n) for n in range(1, count + 1)]
        self._retired: dict[str, list[int]] = {}
        self._retiredRefusals: dict[str, int] = {}
        self._retiredCloses: dict[int, int] = {}
        self._sync = LoopingCall(self._syncAll)
        self._sync.clock = reactor
        self._stopping = False
        self.catchSignals = False

    # What the monitor reads

    @property
    def sessions(self) -> list[None]:
        """
        One item per client connected to any worker.
        """
        return [None] * sum(w.clients for w in self.workers)

    @property
    def refusals(self) -> dict[str, int]:
        """
        Handshakes refused by every worker so far, by reason.
        """
        total = dict(self._retiredRefusals)
        for worker in self.workers:
            for reason, count in worker.refusals.items():
                total[reason] = total.get(reason, 0) + count
        return total

    @property
    def clientCloses(self) -> dict[int, int]:
        """
        Clients failed by every worker's data path so far, by close code.
        """
        total = dict(self._retiredCloses)
        for worker in self.workers:
            for code, count in worker.clientCloses.items():
                total[code] = total.get(code, 0) + count
        return total

    # Running

    def startService(self) -> None:
        """
        Start the workers on C{self.listening}, and the syncs.
        """
        assert self.listening is not None, "no listening socket to hand over"
        super().startService()
        for state in self.workers:
            self._spawn(state)
        self._sync.start(SYNC_INTERVAL, now=False)

    def _spawn(self, state: WorkerState) -> None:
        if self._stopping:
            return
        env = dict(os.environ)
        env[SETTINGS_VARIABLE] = settingsToJSON(self.settings)
        env["WSLB_WORKER_NUMBER"] = str(state.number)
        state.stats, state.clients, state.refusals = {}, 0, {}
        state.clientCloses = {}
        state.ended = Deferred()
        state.process = self.reactor.spawnProcess(
            WorkerProcess(self, state),
            sys.executable,
            [sys.executable, "-m", "wslb_twisted.worker"],
            env=env,
            childFDs={0: "w", 1: "r", 2: "r", LISTENING_FD: self._listeningFD()},
        )
        log.info(
            "worker {worker} started (pid {pid})",
            worker=state.number,
            pid=state.process.pid,
        )

    def _listeningFD(self) -> int:
        assert self.listening is not None
        return self.listening.fileno()

    def workerEnded(self, state: WorkerState, reason: Failure) -> None:
        """
        A worker's process ended: keep its counters, and start it again
        unless the load balancer is stopping.
        """
        self._retire(state)
        ended, state.ended = state.ended, None
        if ended is not None:
            ended.callback(None)
        if self._stopping:
            return
        log.warn(
            "worker {worker} ended ({reason}); starting it again in {delay}s",
            worker=state.number,
            reason=reason.getErrorMessage()
            if not reason.check(ProcessDone)
            else "exited",
            delay=RESTART_DELAY,
        )
        self.reactor.callLater(RESTART_DELAY, self._spawn, state)

    def _retire(self, state: WorkerState) -> None:
        # Counters are monotonic: what a dead worker counted stays counted.
        for backendId, values in state.stats.items():
            kept = self._retired.setdefault(backendId, [0] * len(_COUNTERS))
            for index in range(1, len(_COUNTERS)):
                kept[index] += values[index]
        for reason, count in state.refusals.items():
            self._retiredRefusals[reason] = self._retiredRefusals.get(reason, 0) + count
        for code, count in state.clientCloses.items():
            self._retiredCloses[code] = self._retiredCloses.get(code, 0) + count
        state.stats, state.clients, state.refusals = {}, 0, {}
        state.clientCloses = {}
        self._updatePool()

    def _syncAll(self) -> None:
        health = json.dumps({b.id: b.healthy for b in self.pool})
        totals = {b.id: b.activeConnections for b in self.pool}
        clients = sum(state.clients for state in self.workers)
        for state in self.workers:
            protocol = state.protocol
            if protocol is None:
                continue
            own = {i: v[0] for i, v in state.stats.items()}
            elsewhere = json.dumps({i: totals[i] - own.get(i, 0) for i in totals})
            d = protocol.callRemote(
                Sync,
                health=health,
                elsewhere=elsewhere,
                clients=clients - state.clients,
            )
            d.addCallbacks(self._synced, self._syncFailed, callbackArgs=(state,))

    def _synced(self, answer: dict[str, str], state: WorkerState) -> None:
        stats = json.loads(answer["stats"])
        state.clients = stats["clients"]
        state.refusals = stats["refusals"]
        state.clientCloses = {int(c): n for c, n in stats["clientCloses"].items()}
        state.stats = stats["backends"]
        self._updatePool()

    def _syncFailed(self, failure: Failure) -> None:
        # A worker that died mid-sync; workerEnded deals with it.
        pass

    def reconfigure(self, settings: Settings) -> None:
        """
        The configuration was reloaded and C{self.pool} updated: tell every
        worker the new backend list, and spawn workers with the new settings
        from now on.

        @param settings: the settings now in force.
        """
        self.settings = settings
        ids = {backend.id for backend in settings.backends}
        for backendId in list(self._retired):
            if backendId not in ids:
                del self._retired[backendId]
        backends = json.dumps([backendConfig(b) for b in settings.backends])
        for state in self.workers:
            if state.protocol is not None:
                d = state.protocol.callRemote(
                    Reconfigure,
                    backends=backends,
                    drainSeconds=settings.drainSeconds,
                )
                d.addErrback(self._syncFailed)

    def _updatePool(self) -> None:
        for backend in self.pool:
            values = list(self._retired.get(backend.id, [0] * len(_COUNTERS)))
            for state in self.workers:
                theirs = state.stats.get(backend.id)
                if theirs is not None:
                    for index, value in enumerate(theirs):
                        values[index] += value
            for name, value in zip(_COUNTERS, values):
                setattr(backend, name, value)

    def stopService(self) -> Deferred[Any]:
        """
        Stop the workers: each drains its clients over the drain period
        (closing them with 1001); those that take longer than the period and
        L{STOP_TIMEOUT} are killed.  With C{catchSignals}, a second SIGTERM
        or SIGINT meanwhile is passed on to the workers, which then close
        their remaining clients at once.
        """
        super().stopService()
        self._stopping = True
        if self._sync.running:
            self._sync.stop()
        waiting = []
        timeout = self.settings.drainSeconds + STOP_TIMEOUT
        for state in self.workers:
            if state.ended is None or state.process is None:
                continue
            waiting.append(state.ended)
            try:
                state.process.signalProcess("TERM")
            except OSError:
                continue
            killer = self.reactor.callLater(timeout, _kill, state.process)
            state.ended.addBoth(_cancelling, killer)
        if self.listening is not None:
            self.listening.close()
        if not waiting:
            return succeed(None)
        stopped = DeferredList(waiting)
        if self.catchSignals:
            restore = catchStopSignals(self.reactor, self._hurryWorkers)
            stopped.addBoth(_calling, restore)
        return stopped

    def _hurryWorkers(self) -> None:
        """
        A second stop signal: pass it on to the workers still running.
        """
        for state in self.workers:
            if state.ended is not None and state.process is not None:
                try:
                    state.process.signalProcess("TERM")
                except OSError:
                    pass


def _calling(result: object, call: Any) -> object:
    call()
    return result


def _kill(process: Any) -> None:
    try:
        process.signalProcess("KILL")
    except OSError:
        pass


def _cancelling(result: object, call: Any) -> object:
    if call.active():
        call.cancel()
    return result


def workerStats(
    pool: Iterable[Backend],
    clients: int,
    refusals: dict[str, int],
    clientCloses: dict[int, int],
) -> str:
    """
    A worker's answer to L{Sync}: its counters, as JSON.
    """
    return json.dumps(
        {
            "backends": {b.id: [getattr(b, name) for name in _COUNTERS] for b in pool},
            "clients": clients,
            "refusals": refusals,
            "clientCloses": clientCloses,
        }
    )
