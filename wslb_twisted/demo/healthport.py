"""
The demo backend's health port: C{GET /health}, and the switches C{POST
/fail} and C{POST /recover} that let a user watch the load balancer take the
backend out of rotation and put it back.

Failing is only what C{/health} reports: the backend keeps serving its
WebSocket clients, as a backend whose health check broke would.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from wslb_twisted.jsonresponse import notFoundJSON, respondJSON

__all__ = ["BackendHealth", "HealthPortResource", "makeHealthSite"]


class BackendHealth:
    """
    What the health port reports, and the switch between healthy and
    failing.

    @ivar name: the backend's name.
    @ivar failing: whether C{/health} answers 503.
    @ivar startedAt: when the backend started, by C{clock}.
    """

    log = Logger()

    def __init__(
        self,
        name: str,
        clock: IReactorTime,
        clientCount: Callable[[], int],
        failing: bool = False,
    ) -> None:
        """
        @param name: the backend's name.
        @param clock: provides C{seconds()} for the uptime.
        @param clientCount: returns the number of WebSocket clients connected.
        @param failing: whether to start failing (C{--fail-health}).
        """
        self.name = name
        self.failing = failing
        self._clock = clock
        self._clientCount = clientCount
        self.startedAt = clock.seconds()

    def document(self) -> dict[str, object]:
        """
        The health document.

        @return: C{{"status": "ok" or "failing", "name", "uptime" (seconds),
            "clients"}}.
        """
        return {
            "status": "failing" if self.failing else "ok",
            "name": self.name,
            "uptime": round(self._clock.seconds() - self.startedAt, 3),
            "clients": self._clientCount(),
        }

    def setFailing(self, failing: bool) -> None:
        """
        Switch between healthy and failing, logging a change.

        @param failing: whether C{/health} should answer 503 from now on.
        """
        if failing != self.failing:
            self.failing = failing
            self.log.info(
                "{name}: health switched to {status}",
                name=self.name,
                status="failing" if failing else "ok",
            )


class _Endpoint(Resource):
    """
    One path of the health port, answering only C{allowedMethods} (405 JSON
    otherwise) and nothing below it (404 JSON).
    """

    isLeaf = True
    allowedMethods: tuple[bytes, ...] = ()

    def __init__(self, health: BackendHealth) -> None:
        super().__init__()
        self.health = health

    def render(self, request: Request) -> bytes:
        if request.postpath not in ([], [b""]):
            return notFoundJSON(request)
        if request.method not in self.allowedMethods:
            request.setHeader(b"Allow", b", ".join(self.allowedMethods))
            return respondJSON(
                request,
                http.NOT_ALLOWED,
                {
                    "error": "method not allowed",
                    "allowed": [m.decode("ascii") for m in self.allowedMethods],
                },
            )
        code, body = self.answer()
        return respondJSON(request, code, body)

    def answer(self) -> tuple[int, object]:
        raise NotImplementedError()


class _Health(_Endpoint):
    allowedMethods = (b"GET", b"HEAD")

    def answer(self) -> tuple[int, object]:
        code = http.SERVICE_UNAVAILABLE if self.health.failing else http.OK
        return code, self.health.document()


class _Switch(_Endpoint):
    allowedMethods = (b"POST",)

    def __init__(self, health: BackendHealth, failing: bool) -> None:
        super().__init__(health)
        self.failing = failing

    def answer(self) -> tuple[int, object]:
        self.health.setFailing(self.failing)
        return http.OK, self.health.document()


class _NotFound(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        return notFoundJSON(request)


class HealthPortResource(Resource):
    """
    The root of the health port.

      - C{GET /health}: 200 with L{BackendHealth.document} while healthy, 503
        while failing;
      - C{POST /fail}: start failing; 200 with the document;
      - C{POST /recover}: be healthy again; 200 with the document.

    Every other path is a JSON 404, and another method on these paths a JSON
    405.
    """

    def __init__(self, health: BackendHealth) -> None:
        """
        @param health: the state reported and switched.
        """
        super().__init__()
        self.putChild(b"health", _Health(health))
        self.putChild(b"fail", _Switch(health, failing=True))
        self.putChild(b"recover", _Switch(health, failing=False))

    def getChild(self, path: bytes, request: Request) -> IResource:
        """
        Any other child, the empty one of C{/} included, is a JSON 404.

        @param path: the path segment.
        @param request: the request being answered.
        @return: a resource answering 404.
        """
        return _NotFound()

    def render(self, request: Request) -> bytes:
        """
        Nothing lives at the root: a JSON 404.

        @param request: the request being answered.
        @return: the 404 body.
        """
        return notFoundJSON(request)


class _QuietSite(Site):
    """
    A L{Site} without an access log: the load balancer checks every few
    seconds, and a line per check would drown the log.
    """

    noisy = False

    def log(self, request: http.Request) -> None:
        pass


def makeHealthSite(health: BackendHealth) -> Site:
    """
    Make the HTTP factory for the health port.

    @param health: the state reported and switched.
    @return: a quiet L{Site} serving L{HealthPortResource}.
    """
    site = _QuietSite(HealthPortResource(health), logPath=None)
    site.displayTracebacks = False
    return site
