"""
Backends and the pool of them: addresses, weights, health and counters.

The health checker writes a backend's health; the relay counts its
connections; the monitor and the strategies only read.  Nothing here knows
about the network.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field


@dataclass(eq=False)
class Backend:
    """
    One backend WebSocket server and what wslb knows about it.

    @ivar id: the name used in logs and the monitoring API (C{backend-1}).
    @ivar host: host name or address of the WebSocket server.
    @ivar port: TCP port of the WebSocket server.
    @ivar weight: relative share of clients, at least 1.
    @ivar healthPort: TCP port of the backend's HTTP health endpoint.
    @ivar healthPath: path of the health endpoint.
    @ivar maxConnections: most clients at once (0: no limit); a full backend
        is skipped like an unhealthy one.
    @ivar tls: whether the backend speaks C{wss} (WebSocket over TLS).
    @ivar healthy: whether the backend is in rotation; C{False} until its first
        passing health check.
    @ivar lastHealthCheck: POSIX time of the last completed health check, or
        C{None} before the first.
    @ivar lastChange: POSIX time of the last change of C{healthy}, or C{None}.
    @ivar activeConnections: clients currently assigned to this backend
        (connecting or open) by this process.
    @ivar elsewhereConnections: clients assigned to this backend by the other
        worker processes, as of the last sync (see L{wslb_twisted.workers}).
    @ivar totalConnections: clients ever assigned to this backend.
    @ivar connectFailures: connection attempts that failed (refused, timed out
        or a failed WebSocket handshake).
    @ivar healthCheckFailures: health checks that failed.
    @ivar stateChanges: times C{healthy} changed.
    @ivar consecutivePasses: health checks passed in a row, up to now.
    @ivar consecutiveFailures: health checks failed in a row, up to now.
    @ivar consecutiveConnectFailures: connection attempts failed in a row, up
        to now (a successful attempt resets it).
    """

    id: str
    host: str
    port: int
    weight: int = 1
    healthPort: int = 0
    healthPath: str = "/health"
    maxConnections: int = 0
    tls: bool = False
    healthy: bool = False
    lastHealthCheck: float | None = None
    lastChange: float | None = None
    activeConnections: int = 0
    elsewhereConnections: int = 0
    totalConnections: int = 0
    connectFailures: int = 0
    healthCheckFailures: int = 0
    stateChanges: int = 0
    consecutivePasses: int = 0
    consecutiveFailures: int = 0
    consecutiveConnectFailures: int = 0
    messagesToBackend: int = 0
    messagesToClient: int = 0
    bytesToBackend: int = 0
    bytesToClient: int = 0

    def __post_init__(self) -> None:
        if not self.healthPort:
            self.healthPort = self.port + 1000

    @property
    def address(self) -> str:
        """
        C{host:port} of the WebSocket server, for logs.
        """
        return f"{self.host}:{self.port}"

    @property
    def healthURL(self) -> str:
        """
        The URL the health checker requests.
        """
        return f"http://{self.host}:{self.healthPort}{self.healthPath}"

    @property
    def connections(self) -> int:
        """
        Clients assigned to this backend by every worker process.
        """
        return self.activeConnections + self.elsewhereConnections

    def recordHealth(
        self, passed: bool, when: float, rise: int = 1, fall: int = 1
    ) -> bool:
        """
        Record the result of one health check, and apply the rise and fall
        rule (HAProxy's): a backend out of rotation comes back after C{rise}
        passing checks in a row, one in rotation leaves after C{fall} failing
        checks in a row.  A backend never checked before is decided by its
        first check alone, so startup is fast.

        @param passed: whether the check passed.
        @param when: POSIX time the check completed.
        @param rise: consecutive passing checks that bring the backend back.
        @param fall: consecutive failing checks that take it out.
        @return: C{True} when this changed the backend's health.
        """
        firstCheck = self.lastHealthCheck is None
        self.lastHealthCheck = when
        if passed:
            self.consecutivePasses += 1
            self.consecutiveFailures = 0
        else:
            self.healthCheckFailures += 1
            self.consecutiveFailures += 1
            self.consecutivePasses = 0
        if passed == self.healthy:
            return False
        if not firstCheck:
            streak = self.consecutivePasses if passed else self.consecutiveFailures
            if streak < (rise if passed else fall):
                return False
        if passed:
            self.consecutiveConnectFailures = 0
        self._changeHealth(passed, when)
        return True

    def recordAttempt(self, succeeded: bool, when: float, fall: int = 1) -> bool:
        """
        Record the outcome of one connection attempt for a client (passive
        health): C{fall} failed attempts in a row (refused, timed out, failed
        WebSocket handshake) take the backend out of rotation, like failing
        health checks; it then needs C{rise} passing checks to come back (see
        L{recordHealth}).  A successful attempt resets the count.

        @param succeeded: whether the backend accepted the WebSocket.
        @param when: POSIX time of the outcome.
        @param fall: consecutive failed attempts that take the backend out.
        @return: C{True} when this took the backend out of rotation.
        """
        if succeeded:
            self.consecutiveConnectFailures = 0
            return False
        self.consecutiveConnectFailures += 1
        if not self.healthy or self.consecutiveConnectFailures < fall:
            return False
        self.consecutivePasses = 0
        self._changeHealth(False, when)
        return True

    def _changeHealth(self, healthy: bool, when: float) -> None:
        self.healthy = healthy
        self.lastChange = when
        self.stateChanges += 1

    def connectionOpened(self) -> None:
        """
        A client was assigned to this backend.
        """
        self.activeConnections += 1
        self.totalConnections += 1

    def connectionClosed(self) -> None:
        """
        A client assigned to this backend has gone (or its attempt failed).
        """
        self.activeConnections -= 1


@dataclass(eq=False)
class BackendPool:
    """
    The configured backends, in configuration order.
    """

    backends: list[Backend] = field(default_factory=list)

    def __iter__(self) -> Iterator[Backend]:
        return iter(self.backends)

    def __len__(self) -> int:
        return len(self.backends)

    def healthy(self, exclude: Iterable[Backend] = ()) -> list[Backend]:
        """
        The eligible backends, in configuration order: those in rotation
        (healthy) and not full (fewer connections, over every worker, than
        their C{maxConnections}, when they have one).  Strategies only ever
        choose among these.

        @param exclude: backends to leave out (those already tried for a
            client).
        """
        excluded = set(map(id, exclude))
        return [
            b
            for b in self.backends
            if b.healthy
            and not (b.maxConnections and b.connections >= b.maxConnections)
            and id(b) not in excluded
        ]

    @property
    def healthyCount(self) -> int:
        """
        How many backends are in rotation.
        """
        return sum(1 for b in self.backends if b.healthy)

    @property
    def totalConnections(self) -> int:
        """
        Active client connections over all backends.
        """
        return sum(b.activeConnections for b in self.backends)
