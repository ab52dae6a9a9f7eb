"""
Prometheus metrics for the monitoring port: C{GET /metrics}.

The relay and the health checker count with plain integers on each
L{Backend} and on the relay; nothing is counted for the metrics' sake.  A
custom collector, registered in a registry of its own (not
C{prometheus_client}'s global one), reads those numbers when Prometheus
scrapes, and a plain L{twisted.web} resource answers with the text format on
the reactor thread (C{prometheus_client.twisted} would hand each scrape to a
thread pool, for numbers that take microseconds to read).

Names follow HAProxy's exporter: C{wslb_backend_*} per backend, labelled
C{backend="<id>"}, and C{wslb_*} for the load balancer as a whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sized
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from twisted.internet.interfaces import IReactorTime
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request

from wslb_twisted import __version__
from wslb_twisted.backends import Backend, BackendPool
from wslb_twisted.relay import (
    BACKENDS_FAILED,
    BACKENDS_FULL,
    HANDSHAKE_TIMEOUT,
    NO_HEALTHY_BACKEND,
    ORIGIN_NOT_ALLOWED,
    SHUTTING_DOWN,
    TOO_MANY_CLIENTS,
    TOO_MANY_FROM_ADDRESS,
)

__all__ = [
    "CLIENT_CLOSE_CODES",
    "REFUSAL_REASONS",
    "LoadBalancerCollector",
    "MetricsResource",
    "RelayCounts",
    "makeMetricsRegistry",
]

REFUSAL_REASONS = {
    NO_HEALTHY_BACKEND: "503",
    BACKENDS_FAILED: "503",
    BACKENDS_FULL: "503",
    TOO_MANY_CLIENTS: "503",
    SHUTTING_DOWN: "503",
    TOO_MANY_FROM_ADDRESS: "429",
    ORIGIN_NOT_ALLOWED: "403",
    HANDSHAKE_TIMEOUT: "none",
}
"""
The reasons a client's handshake is refused, with the HTTP status it is
answered with (C{"none"}: the socket is dropped without an answer).  Each is
always exposed (as 0 until it happens) so that C{rate()} and alerts see the
series from the first scrape.
"""

CLIENT_CLOSE_CODES = (1009, 1002)
"""
The close codes the data path fails a client with (message too big,
protocol error), each always exposed.
"""


class RelayCounts(Protocol):
    """
    What the metrics read from the relay
    (L{wslb_twisted.relay.RelayFactory} provides it).
    """

    @property
    def sessions(self) -> Sized:
        """
        The connected clients, one item each.
        """

    @property
    def refusals(self) -> Mapping[str, int]:
        """
        Clients refused so far, by reason (see L{REFUSAL_REASONS}).
        """

    @property
    def clientCloses(self) -> Mapping[int, int]:
        """
        Clients failed by the data path so far, by close code.
        """


_BackendValue = Callable[[Backend], float]

# (family, name without _total, help, value): one sample per backend.
_PER_BACKEND: tuple[
    tuple[type[GaugeMetricFamily] | type[CounterMetricFamily], str, str, _BackendValue],
    ...,
] = (
    (
        GaugeMetricFamily,
        "wslb_backend_up",
        "Whether the backend is in rotation (1) or not (0): its last health "
        "check passed.  0 until its first check passes.",
        lambda backend: 1 if backend.healthy else 0,
    ),
    (
        GaugeMetricFamily,
        "wslb_backend_weight",
        "The backend's configured weight.",
        lambda backend: backend.weight,
    ),
    (
        GaugeMetricFamily,
        "wslb_backend_current_connections",
        "Clients currently assigned to the backend (connecting or open).",
        lambda backend: backend.activeConnections,
    ),
    (
        CounterMetricFamily,
        "wslb_backend_connections",
        "Connection attempts to the backend on behalf of clients, whether "
        "they succeeded or not.",
        lambda backend: backend.totalConnections,
    ),
    (
        CounterMetricFamily,
        "wslb_backend_connection_errors",
        "Connection attempts to the backend that failed: refused, timed out "
        "or a failed WebSocket handshake.",
        lambda backend: backend.connectFailures,
    ),
    (
        CounterMetricFamily,
        "wslb_backend_check_failures",
        "Health checks of the backend that failed.",
        lambda backend: backend.healthCheckFailures,
    ),
    (
        CounterMetricFamily,
        "wslb_backend_check_status_changes",
        "Times the backend's health changed (into or out of rotation); its "
        "first passing check counts as one.",
        lambda backend: backend.stateChanges,
    ),
)

# (name without _total, help, value towards the backend, value towards clients)
_PER_DIRECTION: tuple[tuple[str, str, _BackendValue, _BackendValue], ...] = (
    (
        "wslb_backend_messages",
        "WebSocket messages relayed between the backend and its clients, by direction.",
        lambda backend: backend.messagesToBackend,
        lambda backend: backend.messagesToClient,
    ),
    (
        "wslb_backend_bytes",
        "Message payload bytes relayed between the backend and its clients, "
        "by direction (WebSocket framing not included).",
        lambda backend: backend.bytesToBackend,
        lambda backend: backend.bytesToClient,
    ),
)


class LoadBalancerCollector:
    """
    A C{prometheus_client} collector reading the backends' and the relay's
    counters at scrape time.

    @ivar pool: the backends.
    @ivar algorithm: the name of the balancing strategy in use.
    @ivar clock: provides C{seconds()}, on the same clock as the health
        checker's timestamps (the reactor).
    @ivar relay: the relay's client count, refusals and client closes, or
        C{None} for a monitor without a relay (all then read as 0).
    """

    def __init__(
        self,
        pool: BackendPool,
        algorithm: str,
        clock: IReactorTime,
        relay: RelayCounts | None = None,
    ) -> None:
        """
        @param pool: the backends to report on.
        @param algorithm: the name of the balancing strategy in use.
        @param clock: provides C{seconds()}: the reactor, or a
            L{twisted.internet.task.Clock} in tests.
        @param relay: the relay (L{wslb_twisted.relay.RelayFactory}), or
            C{None}.
        """
        self.pool = pool
        self.algorithm = algorithm
        self.clock = clock
        self.relay = relay

    def collect(self) -> Iterator[Metric]:
        """
        Read every counter now.

        @return: the metric families, each with its samples.
        """
        yield from self._backendMetrics()
        yield from self._loadBalancerMetrics()

    def _backendMetrics(self) -> Iterator[Metric]:
        backends = list(self.pool)
        info = InfoMetricFamily(
            "wslb_backend",
            "The backend's address (host:port of its WebSocket server).",
            labels=["backend", "address"],
        )
        for backend in backends:
            info.add_metric([backend.id, backend.address], {})
        yield info

        for family, name, documentation, value in _PER_BACKEND:
            metric = family(name, documentation, labels=["backend"])
            for backend in backends:
                metric.add_metric([backend.id], value(backend))
            yield metric

        now = self.clock.seconds()
        lastChange = GaugeMetricFamily(
            "wslb_backend_last_change_seconds",
            "Seconds since the backend's health last changed.  No sample "
            "until it first changes (a backend that never passed a check has "
            "none).",
            labels=["backend"],
        )
        for backend in backends:
            if backend.lastChange is not None:
                lastChange.add_metric([backend.id], max(0.0, now - backend.lastChange))
        yield lastChange

        for name, documentation, toBackend, toClient in _PER_DIRECTION:
            counter = CounterMetricFamily(
                name, documentation, labels=["backend", "direction"]
            )
            for backend in backends:
                counter.add_metric([backend.id, "to_backend"], toBackend(backend))
                counter.add_metric([backend.id, "to_client"], toClient(backend))
            yield counter

    def _loadBalancerMetrics(self) -> Iterator[Metric]:
        relay = self.relay
        yield GaugeMetricFamily(
            "wslb_current_clients",
            "Clients connected to the load balancer, including those whose "
            "handshake waits for a backend.",
            value=0 if relay is None else len(relay.sessions),
        )
        refusals = dict.fromkeys(REFUSAL_REASONS, 0)
        if relay is not None:
            refusals.update(relay.refusals)
        refused = CounterMetricFamily(
            "wslb_handshakes_refused",
            "Client handshakes refused, by reason and by the HTTP status "
            "answered (code): 503 for no_healthy_backend, backends_failed "
            "(every backend tried failed), backends_full, too_many_clients and "
            "shutting_down; 429 for too_many_from_address; 403 for "
            'origin_not_allowed; "none" for handshake_timeout (the request '
            "was not complete in time and the socket was dropped).",
            labels=["reason", "code"],
        )
        for reason, count in refusals.items():
            refused.add_metric([reason, REFUSAL_REASONS.get(reason, "")], count)
        yield refused

        closes = dict.fromkeys(CLIENT_CLOSE_CODES, 0)
        if relay is not None:
            closes.update(relay.clientCloses)
        closed = CounterMetricFamily(
            "wslb_client_closes",
            "Clients the load balancer closed for breaking a limit or the "
            "protocol, by close code: 1009 (a message over the size limit) or "
            "1002 (a framing error).",
            labels=["code"],
        )
        for code, count in closes.items():
            closed.add_metric([str(code)], count)
        yield closed

        info = InfoMetricFamily(
            "wslb", "The load balancer's version and balancing algorithm."
        )
        info.add_metric([], {"version": __version__, "algorithm": self.algorithm})
        yield info


def makeMetricsRegistry(
    pool: BackendPool,
    algorithm: str,
    clock: IReactorTime,
    relay: RelayCounts | None = None,
) -> CollectorRegistry:
    """
    Make a registry holding only the load balancer's collector.

    @param pool: the backends to report on.
    @param algorithm: the name of the balancing strategy in use.
    @param clock: provides C{seconds()}.
    @param relay: the relay, or C{None}.
    @return: a registry of its own, so that nothing else registered in the
        process (or in another load balancer in the same process, as in
        tests) mixes in.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LoadBalancerCollector(pool, algorithm, clock, relay))
    return registry


class MetricsResource(Resource):
    """
    C{/metrics}: the registry in Prometheus's text format, made on the
    reactor thread for every C{GET} (and C{HEAD}).

    @ivar registry: the registry exposed.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        """
        @param registry: the registry to expose.
        """
        super().__init__()
        self.registry = registry

    allowedMethods = (b"GET", b"HEAD")

    def render(self, request: Request) -> bytes:
        """
        Answer a method other than C{GET} and C{HEAD} with 405, as the rest
        of the monitoring port does (twisted.web would answer 501 to one it
        does not know).

        @param request: the request being answered.
        @return: the metrics, or a short text.
        """
        if request.method not in self.allowedMethods:
            request.setResponseCode(http.NOT_ALLOWED)
            request.setHeader(b"Allow", b", ".join(self.allowedMethods))
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"method not allowed\n"
        return super().render(request)

    def render_GET(self, request: Request) -> bytes:
        """
        Answer with every metric, read now.

        @param request: the request being answered.
        @return: the exposition (Twisted drops it for C{HEAD}).
        """
        body = generate_latest(self.registry)
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        return body
