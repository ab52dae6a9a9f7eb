"""
The monitoring API: a L{twisted.web} resource tree answering C{/health} and
C{/status} with the JSON documents of the specification.

The monitor only reads backend state; it never changes it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from wslb_twisted.backends import Backend, BackendPool
from wslb_twisted.dashboard import DashboardResource
from wslb_twisted.jsonresponse import notFoundJSON, respondJSON
from wslb_twisted.metrics import MetricsResource, RelayCounts, makeMetricsRegistry

__all__ = [
    "HealthResource",
    "MonitorResource",
    "StatusResource",
    "isoTimestamp",
    "makeMonitorSite",
]


def isoTimestamp(seconds: float) -> str:
    """
    Format a POSIX time as the monitoring API does.

    @param seconds: seconds since the epoch.
    @return: UTC ISO 8601 with milliseconds and C{Z}, e.g.
        C{"2024-01-01T00:00:00.000Z"}.
    """
    wholeSeconds, milliseconds = divmod(round(seconds * 1000), 1000)
    moment = datetime.fromtimestamp(wholeSeconds, tz=UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{milliseconds:03d}Z"


def _backendJSON(backend: Backend) -> dict[str, Any]:
    lastCheck = backend.lastHealthCheck
    return {
        "id": backend.id,
        "host": backend.host,
        "port": backend.port,
        "health": backend.healthy,
        "activeConnections": backend.activeConnections,
        "weight": backend.weight,
        "lastHealthCheck": None if lastCheck is None else isoTimestamp(lastCheck),
    }


class _JSONResource(Resource):
    """
    A resource answering with JSON, for C{GET} and C{HEAD} only.

    Subclasses implement L{document}.  A request with a path below this
    resource (C{/health/foo}) is answered 404; a trailing slash is accepted.
    """

    isLeaf = True
    allowedMethods = (b"GET", b"HEAD")
    log = Logger()

    def document(self, request: Request) -> tuple[int, object]:
        """
        The answer to a C{GET}.

        @param request: the request being answered.
        @return: the HTTP status code and the JSON-serializable body.
        """
        raise NotImplementedError()

    def render(self, request: Request) -> bytes:
        """
        Answer with JSON: the document for C{GET} and C{HEAD}, a 405 for other
        methods, a 404 for paths below this one and a 500 if the document
        cannot be made.

        @param request: the request being answered.
        @return: the body (empty for C{HEAD}).
        """
        if request.postpath not in ([], [b""]):
            return notFoundJSON(request)
        if request.method not in self.allowedMethods:
            request.setHeader(b"Allow", b", ".join(self.allowedMethods))
            return respondJSON(
                request,
                http.NOT_ALLOWED,
                {
                    "error": "method not allowed",
                    "method": request.method.decode("latin-1"),
                    "allowed": [m.decode("ascii") for m in self.allowedMethods],
                },
            )
        try:
            code, body = self.document(request)
        except Exception:
            self.log.failure("Could not render {path}", path=_path(request))
            return respondJSON(
                request, http.INTERNAL_SERVER_ERROR, {"error": "internal error"}
            )
        return respondJSON(request, code, body)


def _path(request: Request) -> str:
    return request.path.decode("utf-8", "replace")


class _NotFoundResource(Resource):
    """
    Any path the monitor does not know: 404 with a JSON body, whatever the
    method.
    """

    isLeaf = True

    def render(self, request: Request) -> bytes:
        return notFoundJSON(request)


class _PoolResource(_JSONResource):
    """
    A JSON document about the backend pool.

    @ivar pool: the backends reported on.
    @ivar algorithm: the name of the balancing strategy in use.
    @ivar clock: provides C{seconds()} for the C{timestamp}.
    """

    def __init__(self, pool: BackendPool, algorithm: str, clock: IReactorTime) -> None:
        """
        @param pool: the backends to report on.
        @param algorithm: the name of the balancing strategy in use.
        @param clock: provides C{seconds()} for the C{timestamp}.
        """
        super().__init__()
        self.pool = pool
        self.algorithm = algorithm
        self.clock = clock


class HealthResource(_PoolResource):
    """
    C{/health}: 200 when at least one backend is healthy, 503 when none is.
    """

    def document(self, request: Request) -> tuple[int, object]:
        """
        The health document: overall C{status}, counts and every backend.

        C{status} is C{"healthy"} when every backend is healthy, C{"degraded"}
        when some are and C{"unhealthy"} when none is (or there are none).

        @param request: the request being answered.
        @return: the status code and the document.
        """
        backends = list(self.pool)
        healthyCount = sum(1 for backend in backends if backend.healthy)
        if healthyCount == 0:
            status = "unhealthy"
        elif healthyCount == len(backends):
            status = "healthy"
        else:
            status = "degraded"
        body = {
            "status": status,
            "timestamp": isoTimestamp(self.clock.seconds()),
            "loadBalancer": {
                "algorithm": self.algorithm,
                "totalConnections": sum(b.activeConnections for b in backends),
                "backendCount": len(backends),
                "healthyBackends": healthyCount,
            },
            "backends": [_backendJSON(backend) for backend in backends],
        }
        code = http.OK if healthyCount else http.SERVICE_UNAVAILABLE
        return code, body


class StatusResource(_PoolResource):
    """
    C{/status}: 200 with the algorithm, the connection count and every
    backend.
    """

    def document(self, request: Request) -> tuple[int, object]:
        """
        The status document.

        @param request: the request being answered.
        @return: the status code (always 200) and the document.
        """
        backends = list(self.pool)
        body = {
            "loadBalancer": {
                "algorithm": self.algorithm,
                "totalConnections": sum(b.activeConnections for b in backends),
                "backends": [_backendJSON(backend) for backend in backends],
            },
            "timestamp": isoTimestamp(self.clock.seconds()),
        }
        return http.OK, body


class MonitorResource(Resource):
    """
    The root of the monitoring port: C{/health}, C{/status} and the dashboard
    page at C{/}; every other path is a JSON 404.

    @ivar dashboard: the page served at C{/}.
    """

    def __init__(
        self,
        pool: BackendPool,
        algorithm: str,
        clock: IReactorTime,
        clientPort: Callable[[], int | None] | None = None,
    ) -> None:
        """
        @param pool: the backends to report on.
        @param algorithm: the name of the balancing strategy in use.
        @param clock: provides C{seconds()} for timestamps (the reactor, or a
            L{twisted.internet.task.Clock} in tests).
        @param clientPort: returns the load balancer's client port (or
            C{None}), asked for each time the dashboard is served.
        """
        super().__init__()
        self.dashboard = DashboardResource(clientPort)
        self.putChild(b"health", HealthResource(pool, algorithm, clock))
        self.putChild(b"status", StatusResource(pool, algorithm, clock))

    def getChild(self, path: bytes, request: Request) -> IResource:
        """
        The empty child of C{/} itself is the dashboard; any other child not
        registered (C{//health} included) is a 404.

        @param path: the path segment.
        @param request: the request being answered.
        @return: the dashboard, or a resource answering 404.
        """
        if path == b"" and not request.postpath:
            return self.dashboard
        return _NotFoundResource()

    def render(self, request: Request) -> bytes:
        """
        A request for the empty path (never made over HTTP): a JSON 404.

        @param request: the request being answered.
        @return: the 404 body.
        """
        return notFoundJSON(request)


class _QuietSite(Site):
    """
    A L{Site} that keeps no access log: monitoring is scraped every few
    seconds, and a line per scrape would drown the log.
    """

    noisy = False

    def log(self, request: http.Request) -> None:
        pass


def makeMonitorSite(
    pool: BackendPool,
    algorithm: str,
    clock: IReactorTime,
    relay: RelayCounts | None = None,
    clientPort: Callable[[], int | None] | None = None,
) -> Site:
    """
    Make the HTTP factory for the monitoring port, with C{/metrics} for
    Prometheus beside the JSON API.

    @param pool: the backends to report on.
    @param algorithm: the name of the balancing strategy in use.
    @param clock: provides C{seconds()} for timestamps.
    @param relay: the relay, whose connected clients and refusals the metrics
        report; C{None} reports both as 0.
    @param clientPort: returns the load balancer's client port (or C{None}),
        for the dashboard's quote ticker.
    @return: a quiet L{Site} (no factory start/stop lines, no access log).
    """
    root = MonitorResource(pool, algorithm, clock, clientPort)
    registry = makeMetricsRegistry(pool, algorithm, clock, relay)
    root.putChild(b"metrics", MetricsResource(registry))
    site = _QuietSite(root, logPath=None)
    site.displayTracebacks = False
    return site
