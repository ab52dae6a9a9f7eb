"""
Tests for L{wslb_twisted.monitor}: the monitoring API, served by a real
L{Site} on 127.0.0.1 and fetched over HTTP with treq.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.client import Agent, HTTPConnectionPool

from wslb_twisted.backends import Backend, BackendPool
from wslb_twisted.monitor import isoTimestamp, makeMonitorSite

NOW = 1704067200.25  # 2024-01-01T00:00:00.250Z
ISO_8601_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
BACKEND_KEYS = [
    "id",
    "host",
    "port",
    "health",
    "activeConnections",
    "weight",
    "lastHealthCheck",
]


@dataclass
class Answer:
    """
    One HTTP answer from the monitor.
    """

    code: int
    headers: dict[str, list[str]]
    body: bytes

    def json(self) -> Any:
        """
        The body, parsed.
        """
        return json.loads(self.body)

    def header(self, name: str) -> list[str]:
        """
        All values of a header.
        """
        return self.headers.get(name.lower(), [])


class Monitor:
    """
    A monitoring site on an ephemeral port of 127.0.0.1, its backends and
    clock, and an HTTP client for it.
    """

    def __init__(self) -> None:
        from twisted.internet import reactor

        self.clock = Clock()
        self.clock.advance(NOW)
        self.pool = BackendPool(
            [
                Backend(id="backend-1", host="localhost", port=3001),
                Backend(id="backend-2", host="localhost", port=3002, weight=2),
                Backend(id="backend-3", host="localhost", port=3003),
            ]
        )
        self.site = makeMonitorSite(self.pool, "least-connections", self.clock)
        self.listener = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self._connections = HTTPConnectionPool(reactor, persistent=False)
        self._client = treq.client.HTTPClient(Agent(reactor, pool=self._connections))

    def setHealth(self, *healthy: bool) -> None:
        """
        Record one health check per backend, passing or failing as given.
        """
        for backend, passed in zip(self.pool, healthy, strict=True):
            backend.recordHealth(passed, NOW - 1)

    async def request(self, method: str, path: str) -> Answer:
        """
        Make a request to the monitor and read the whole answer.
        """
        url = f"http://127.0.0.1:{self.listener.getHost().port}{path}"
        response = await self._client.request(method, url)
        body = await treq.content(response)
        headers = {
            name.decode("ascii").lower(): [v.decode("latin-1") for v in values]
            for name, values in response.headers.getAllRawHeaders()
        }
        return Answer(response.code, headers, body)

    async def get(self, path: str) -> Answer:
        """
        C{GET} a path.
        """
        return await self.request("GET", path)

    async def stop(self) -> None:
        """
        Close the client's connections and stop listening.
        """
        await self._connections.closeCachedConnections()
        await self.listener.stopListening()


@pytest_twisted.async_yield_fixture
async def monitor() -> AsyncIterator[Monitor]:
    """
    A running monitor over three backends of unknown health, stopped
    afterwards.
    """
    running = Monitor()
    yield running
    await running.stop()


@pytest_twisted.ensureDeferred
async def test_healthAllHealthy(monitor: Monitor) -> None:
    """
    With every backend healthy, C{/health} answers 200 with status
    C{healthy}.
    """
    monitor.setHealth(True, True, True)
    answer = await monitor.get("/health")
    assert (answer.code, answer.json()["status"]) == (200, "healthy")


@pytest_twisted.ensureDeferred
async def test_healthDegraded(monitor: Monitor) -> None:
    """
    With some backends healthy, C{/health} still answers 200, with status
    C{degraded}.
    """
    monitor.setHealth(True, False, True)
    answer = await monitor.get("/health")
    assert (answer.code, answer.json()["status"]) == (200, "degraded")


@pytest_twisted.ensureDeferred
async def test_healthNoneHealthy(monitor: Monitor) -> None:
    """
    With no backend healthy, C{/health} answers 503 with status
    C{unhealthy}.
    """
    monitor.setHealth(False, False, False)
    answer = await monitor.get("/health")
    assert (answer.code, answer.json()["status"]) == (503, "unhealthy")


@pytest_twisted.ensureDeferred
async def test_healthBeforeFirstCheck(monitor: Monitor) -> None:
    """
    Before any health check, no backend is healthy: 503 C{unhealthy}.
    """
    answer = await monitor.get("/health")
    assert (answer.code, answer.json()["status"]) == (503, "unhealthy")


@pytest_twisted.ensureDeferred
async def test_healthWithoutBackends(monitor: Monitor) -> None:
    """
    A load balancer with no backends at all is C{unhealthy} (503), not
    vacuously healthy.
    """
    monitor.pool.backends.clear()
    answer = await monitor.get("/health")
    assert answer.code == 503
    assert answer.json()["status"] == "unhealthy"
    assert answer.json()["backends"] == []


@pytest_twisted.ensureDeferred
async def test_healthDocumentShape(monitor: Monitor) -> None:
    """
    C{/health} has the keys of the specification, in its order, and reports
    the algorithm and the counts.
    """
    monitor.setHealth(True, False, True)
    monitor.pool.backends[0].connectionOpened()
    monitor.pool.backends[1].connectionOpened()
    monitor.pool.backends[1].connectionOpened()
    document = (await monitor.get("/health")).json()
    assert list(document) == ["status", "timestamp", "loadBalancer", "backends"]
    assert document["loadBalancer"] == {
        "algorithm": "least-connections",
        "totalConnections": 3,
        "backendCount": 3,
        "healthyBackends": 2,
    }
    assert list(document["loadBalancer"]) == [
        "algorithm",
        "totalConnections",
        "backendCount",
        "healthyBackends",
    ]


@pytest_twisted.ensureDeferred
async def test_backendObjects(monitor: Monitor) -> None:
    """
    Each backend is described by the keys of the specification, in its
    order, in configuration order.
    """
    monitor.setHealth(True, False, True)
    monitor.pool.backends[1].connectionOpened()
    backends = (await monitor.get("/health")).json()["backends"]
    assert [list(b) for b in backends] == [BACKEND_KEYS] * 3
    assert backends[1] == {
        "id": "backend-2",
        "host": "localhost",
        "port": 3002,
        "health": False,
        "activeConnections": 1,
        "weight": 2,
        "lastHealthCheck": "2023-12-31T23:59:59.250Z",
    }


@pytest_twisted.ensureDeferred
async def test_lastHealthCheckNullThenSet(monitor: Monitor) -> None:
    """
    C{lastHealthCheck} is C{null} until the backend's first check, then the
    time of its latest check; the document is made afresh for each request.
    """
    before = (await monitor.get("/health")).json()["backends"][0]
    monitor.pool.backends[0].recordHealth(True, NOW + 5)
    after = (await monitor.get("/health")).json()["backends"][0]
    assert (before["lastHealthCheck"], before["health"]) == (None, False)
    assert (after["lastHealthCheck"], after["health"]) == (
        "2024-01-01T00:00:05.250Z",
        True,
    )


@pytest_twisted.ensureDeferred
async def test_timestampFromClock(monitor: Monitor) -> None:
    """
    The C{timestamp} is the clock's time, in UTC ISO 8601 with milliseconds
    and C{Z}.
    """
    monitor.clock.advance(1.5)
    document = (await monitor.get("/health")).json()
    assert ISO_8601_MS.match(document["timestamp"])
    assert document["timestamp"] == "2024-01-01T00:00:01.750Z"


@pytest_twisted.ensureDeferred
async def test_statusDocument(monitor: Monitor) -> None:
    """
    C{/status} answers 200 with the algorithm, the connection count and the
    backends, then the timestamp, in the order of the specification.
    """
    monitor.setHealth(False, False, False)
    monitor.pool.backends[2].connectionOpened()
    answer = await monitor.get("/status")
    document = answer.json()
    assert answer.code == 200
    assert list(document) == ["loadBalancer", "timestamp"]
    assert list(document["loadBalancer"]) == [
        "algorithm",
        "totalConnections",
        "backends",
    ]
    assert document["loadBalancer"]["algorithm"] == "least-connections"
    assert document["loadBalancer"]["totalConnections"] == 1
    assert [b["id"] for b in document["loadBalancer"]["backends"]] == [
        "backend-1",
        "backend-2",
        "backend-3",
    ]
    assert [list(b) for b in document["loadBalancer"]["backends"]] == [BACKEND_KEYS] * 3
    assert ISO_8601_MS.match(document["timestamp"])


@pytest_twisted.ensureDeferred
async def test_statusBackendsSameAsHealth(monitor: Monitor) -> None:
    """
    C{/status} describes the backends exactly as C{/health} does.
    """
    monitor.setHealth(True, False, True)
    health = (await monitor.get("/health")).json()
    status = (await monitor.get("/status")).json()
    assert status["loadBalancer"]["backends"] == health["backends"]


@pytest.mark.parametrize("path", ["/health", "/status"])
@pytest_twisted.ensureDeferred
async def test_jsonHeaders(monitor: Monitor, path: str) -> None:
    """
    Answers are JSON and must not be cached.
    """
    answer = await monitor.get(path)
    assert answer.header("Content-Type") == ["application/json"]
    assert answer.header("Cache-Control") == ["no-store"]


@pytest.mark.parametrize("path", ["/nope", "/health/foo", "/status/x/y", "//health"])
@pytest_twisted.ensureDeferred
async def test_unknownPath(monitor: Monitor, path: str) -> None:
    """
    Unknown paths, including paths below C{/health} and C{/status}, answer 404
    with a JSON body naming the path.
    """
    answer = await monitor.get(path)
    assert answer.code == 404
    assert answer.header("Content-Type") == ["application/json"]
    assert answer.json() == {"error": "not found", "path": path}


@pytest_twisted.ensureDeferred
async def test_rootIsTheDashboard(monitor: Monitor) -> None:
    """
    C{GET /} answers the dashboard page (tested in C{test_dashboard}).
    """
    answer = await monitor.get("/")
    assert answer.code == 200
    assert answer.header("Content-Type") == ["text/html; charset=utf-8"]
    assert b"<title>wslb dashboard</title>" in answer.body


@pytest.mark.parametrize("path", ["/health/", "/health?verbose=1", "/status/"])
@pytest_twisted.ensureDeferred
async def test_trailingSlashAndQuery(monitor: Monitor, path: str) -> None:
    """
    A trailing slash or a query string does not change the answer.
    """
    monitor.setHealth(True, True, True)
    answer = await monitor.get(path)
    assert answer.code == 200
    assert "timestamp" in answer.json()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
@pytest_twisted.ensureDeferred
async def test_otherMethodsNotAllowed(monitor: Monitor, method: str) -> None:
    """
    Methods other than GET and HEAD answer 405 with an C{Allow} header and a
    JSON body.
    """
    answer = await monitor.request(method, "/health")
    assert answer.code == 405
    assert answer.header("Allow") == ["GET, HEAD"]
    assert answer.header("Content-Type") == ["application/json"]
    assert answer.json() == {
        "error": "method not allowed",
        "method": method,
        "allowed": ["GET", "HEAD"],
    }


@pytest_twisted.ensureDeferred
async def test_head(monitor: Monitor) -> None:
    """
    C{HEAD} answers with the status and headers of C{GET} and no body.
    """
    monitor.setHealth(False, False, False)
    get = await monitor.get("/health")
    head = await monitor.request("HEAD", "/health")
    assert head.code == 503
    assert head.body == b""
    assert head.header("Content-Type") == ["application/json"]
    assert head.header("Content-Length") == [str(len(get.body))]


@pytest_twisted.ensureDeferred
async def test_noAccessLog(monitor: Monitor) -> None:
    """
    Scrapes are not logged: the site logs nothing per request.
    """
    logged: list[str] = []

    def observer(event: dict[str, Any]) -> None:
        logged.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    try:
        await monitor.get("/health")
        await monitor.get("/missing")
    finally:
        globalLogPublisher.removeObserver(observer)
    assert [line for line in logged if "/health" in line or "/missing" in line] == []


@pytest_twisted.ensureDeferred
async def test_brokenDocumentIsJSON500(monitor: Monitor) -> None:
    """
    If the document cannot be made, the answer is a JSON 500, not an HTML
    traceback.
    """
    monitor.pool.backends.append(None)  # type: ignore[arg-type]
    logged: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        answer = await monitor.get("/status")
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert (answer.code, answer.json()) == (500, {"error": "internal error"})
    assert answer.header("Content-Type") == ["application/json"]
    assert any(e.get("log_failure") is not None for e in logged)


def test_siteIsQuiet() -> None:
    """
    The monitoring site does not log its starting and stopping.
    """
    site = makeMonitorSite(BackendPool([]), "round-robin", Clock())
    assert site.noisy is False


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (1704067200, "2024-01-01T00:00:00.000Z"),
        (1704067200.123, "2024-01-01T00:00:00.123Z"),
        (1704067200.9996, "2024-01-01T00:00:01.000Z"),
        (1719792000.5, "2024-07-01T00:00:00.500Z"),
    ],
)
def test_isoTimestamp(seconds: float, text: str) -> None:
    """
    L{isoTimestamp} writes UTC with exactly three digits of milliseconds and
    C{Z}, rounding to the nearest millisecond.
    """
    assert isoTimestamp(seconds) == text
