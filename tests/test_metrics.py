"""
Tests for L{wslb_twisted.metrics}: C{GET /metrics} on a real load balancer,
scraped over HTTP after real client traffic, and the collector on a
L{Clock} where the behaviour is about time.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import pytest_twisted
import treq
from helpers import connectClient, waitUntil
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock

from wslb_twisted import __version__
from wslb_twisted.backends import Backend, BackendPool
from wslb_twisted.metrics import REFUSAL_REASONS, makeMetricsRegistry

#: Every family the README documents, by its exposed name.
DOCUMENTED = {
    "wslb_backend_info": "gauge",
    "wslb_backend_up": "gauge",
    "wslb_backend_weight": "gauge",
    "wslb_backend_current_connections": "gauge",
    "wslb_backend_connections_total": "counter",
    "wslb_backend_connection_errors_total": "counter",
    "wslb_backend_check_failures_total": "counter",
    "wslb_backend_check_status_changes_total": "counter",
    "wslb_backend_last_change_seconds": "gauge",
    "wslb_backend_messages_total": "counter",
    "wslb_backend_bytes_total": "counter",
    "wslb_current_clients": "gauge",
    "wslb_handshakes_refused_total": "counter",
    "wslb_client_closes_total": "counter",
    "wslb_info": "gauge",
}


@dataclass
class Scrape:
    """
    One answer from C{/metrics}, parsed.

    @ivar code: the HTTP status.
    @ivar contentType: the C{Content-Type} header.
    @ivar text: the body.
    @ivar samples: every sample's value by name and labels.
    """

    code: int
    contentType: str
    text: str
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    def value(self, name: str, **labels: str) -> float | None:
        """
        The value of one sample, or C{None} when there is no such sample.
        """
        return self.samples.get((name, frozenset(labels.items())))


async def scrape(port: int) -> Scrape:
    """
    C{GET /metrics} from a monitoring port on 127.0.0.1 and parse it.
    """
    response = await treq.get(f"http://127.0.0.1:{port}/metrics", persistent=False)
    text = (await treq.content(response)).decode("utf-8")
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    contentType = response.headers.getRawHeaders("content-type", [""])[0]
    return Scrape(response.code, contentType, text, samples)


# Over HTTP, on a real load balancer


@pytest_twisted.ensureDeferred
async def test_scrapeIsPrometheusTextWithHelp(backends, startLB):
    """
    C{GET /metrics} answers 200 in Prometheus's text format, with the
    content type C{prometheus_client} names for it, and every documented
    metric family has its type and help text; counters end in C{_total}
    exactly once.
    """
    lb = await startLB(backends)
    answer = await scrape(lb.monitorPort)
    assert answer.code == 200
    assert answer.contentType == CONTENT_TYPE_LATEST
    types = dict(
        line.split(" ")[2:4]
        for line in answer.text.splitlines()
        if line.startswith("# TYPE ")
    )
    assert types == DOCUMENTED
    helped = {
        line.split(" ")[2]
        for line in answer.text.splitlines()
        if line.startswith("# HELP ") and len(line.split(" ", 3)[3]) > 10
    }
    assert helped == set(DOCUMENTED)
    assert "_total_total" not in answer.text


@pytest_twisted.ensureDeferred
async def test_connectedClientIsCounted(backends, startLB):
    """
    A connected client is one current connection on the backend serving it
    (none on the others), one connection in that backend's total, and one
    current client of the load balancer.
    """
    lb = await startLB(backends)
    client = connectClient(lb.port)
    await client.opened
    answer = await scrape(lb.monitorPort)
    assert [
        answer.value("wslb_backend_current_connections", backend=b.name)
        for b in backends
    ] == [1, 0, 0]
    assert answer.value("wslb_backend_connections_total", backend="backend-1") == 1
    assert answer.value("wslb_current_clients") == 1


@pytest_twisted.ensureDeferred
async def test_departedClientIsNoLongerCurrent(backends, startLB):
    """
    Once a client has left, its backend's current connections and the load
    balancer's current clients are back to 0, while the connection total
    keeps it.
    """
    lb = await startLB(backends)
    client = connectClient(lb.port)
    protocol = await client.opened
    protocol.sendClose(1000)
    await client.closed
    await waitUntil(lambda: not lb.service.relay.sessions)
    answer = await scrape(lb.monitorPort)
    assert answer.value("wslb_backend_current_connections", backend="backend-1") == 0
    assert answer.value("wslb_current_clients") == 0
    assert answer.value("wslb_backend_connections_total", backend="backend-1") == 1


@pytest_twisted.ensureDeferred
async def test_messagesAndBytesByDirection(backends, startLB):
    """
    Messages and their payload bytes are counted on the backend serving the
    client, per direction: 5 messages of 100 bytes from the client, and
    their 5 echoes plus a 5-byte greeting from the backend.
    """
    backends[0].factory.greeting = b"hello"
    lb = await startLB(backends[:1])
    client = connectClient(lb.port)
    protocol = await client.opened
    assert await client.messages.get() == (b"hello", False)
    for n in range(5):
        protocol.sendMessage(bytes([n]) * 100, isBinary=True)
    for n in range(5):
        assert await client.messages.get() == (bytes([n]) * 100, True)
    answer = await scrape(lb.monitorPort)
    toBackend = {"backend": "backend-1", "direction": "to_backend"}
    toClient = {"backend": "backend-1", "direction": "to_client"}
    assert answer.value("wslb_backend_messages_total", **toBackend) == 5
    assert answer.value("wslb_backend_bytes_total", **toBackend) == 500
    assert answer.value("wslb_backend_messages_total", **toClient) == 6
    assert answer.value("wslb_backend_bytes_total", **toClient) == 505


@pytest_twisted.ensureDeferred
async def test_failingHealthCheckMeansDown(backends, startLB):
    """
    When a backend's health endpoint starts answering 500, its
    C{wslb_backend_up} becomes 0 (the others stay 1), the failed checks are
    counted, and its health has changed twice: up at the first check, then
    down.
    """
    lb = await startLB(backends[:2], healthInterval=0.1, healthTimeout=1.0)
    backends[0].health.code = 500
    await waitUntil(lambda: not lb.backend("backend-1").healthy)
    answer = await scrape(lb.monitorPort)
    assert answer.value("wslb_backend_up", backend="backend-1") == 0
    assert answer.value("wslb_backend_up", backend="backend-2") == 1
    failures = answer.value("wslb_backend_check_failures_total", backend="backend-1")
    assert failures is not None and failures >= 1
    assert answer.value("wslb_backend_check_failures_total", backend="backend-2") == 0
    assert (
        answer.value("wslb_backend_check_status_changes_total", backend="backend-1")
        == 2
    )


@pytest_twisted.ensureDeferred
async def test_refusedHandshakeCountedByReason(backends, startLB):
    """
    A client refused with 503 because no backend is healthy is counted under
    C{reason="no_healthy_backend"}; the other reasons are exposed as 0.
    """
    for backend in backends:
        backend.health.code = 500
    lb = await startLB(backends)
    client = connectClient(lb.port)
    with pytest.raises(ConnectionError):
        await client.opened
    assert "503" in client.statusLine
    answer = await scrape(lb.monitorPort)
    assert {
        reason: answer.value("wslb_handshakes_refused_total", reason=reason, code="503")
        for reason in ("no_healthy_backend", "backends_failed", "shutting_down")
    } == {"no_healthy_backend": 1, "backends_failed": 0, "shutting_down": 0}


@pytest_twisted.ensureDeferred
async def test_connectFailureCounted(backends, startLB):
    """
    A backend that passes its health check but refuses WebSocket connections
    has its failed attempt counted as a connection error; the client is
    served by the next backend.
    """
    await backends[0].port.stopListening()
    lb = await startLB(backends[:2])
    client = connectClient(lb.port)
    await client.opened
    answer = await scrape(lb.monitorPort)
    errors = "wslb_backend_connection_errors_total"
    assert answer.value(errors, backend="backend-1") == 1
    assert answer.value(errors, backend="backend-2") == 0
    assert answer.value("wslb_backend_current_connections", backend="backend-2") == 1



@pytest_twisted.ensureDeferred
async def test_otherMethodsAre405(backends, startLB):
    """
    C{/metrics} answers methods other than C{GET} and C{HEAD} with 405 and
    an C{Allow} header, like the rest of the monitoring port, even methods
    twisted.web does not know (which it would answer with 501).
    """
    lb = await startLB(backends[:1])
    url = f"http://127.0.0.1:{lb.monitorPort}/metrics"
    for method in ("POST", "DELETE", "BREW"):
        response = await treq.request(method, url, persistent=False)
        await treq.content(response)
        assert response.code == 405, method
        assert response.headers.getRawHeaders("allow") == ["GET, HEAD"]
    head = await treq.head(url, persistent=False)
    assert head.code == 200


# The collector, without HTTP


def test_lastChangeSecondsFollowsTheClock() -> None:
    """
    C{wslb_backend_last_change_seconds} has no sample until the backend's
    health first changes, then counts the seconds since the last change on
    the injected clock.
    """
    clock = Clock()
    clock.advance(1000)
    backend = Backend(id="backend-1", host="localhost", port=3001)
    registry = makeMetricsRegistry(BackendPool([backend]), "round-robin", clock)
    name, labels = "wslb_backend_last_change_seconds", {"backend": "backend-1"}

    assert registry.get_sample_value(name, labels) is None
    backend.recordHealth(True, clock.seconds())
    clock.advance(42)
    assert registry.get_sample_value(name, labels) == 42
    backend.recordHealth(False, clock.seconds())
    clock.advance(1.5)
    assert registry.get_sample_value(name, labels) == 1.5


def test_identityMetrics() -> None:
    """
    C{wslb_info} carries the version and the algorithm, C{wslb_backend_info}
    each backend's address, and C{wslb_backend_weight} its weight.
    """
    pool = BackendPool(
        [
            Backend(id="a", host="10.0.0.5", port=8080),
            Backend(id="b", host="10.0.0.6", port=8080, weight=3),
        ]
    )
    registry = makeMetricsRegistry(pool, "least-connections", Clock())
    info = {"algorithm": "least-connections", "version": __version__}
    assert registry.get_sample_value("wslb_info", info) == 1
    for backend in pool:
        address = {"backend": backend.id, "address": backend.address}
        assert registry.get_sample_value("wslb_backend_info", address) == 1
        weight = registry.get_sample_value(
            "wslb_backend_weight", {"backend": backend.id}
        )
        assert weight == backend.weight


def test_withoutRelayClientsAndRefusalsAreZero() -> None:
    """
    A monitor made without a relay reports no current clients, and every
    refusal reason (with the HTTP status it is answered with) and every
    client close code as 0, rather than leaving the series out.
    """
    registry = makeMetricsRegistry(BackendPool([]), "round-robin", Clock())
    assert registry.get_sample_value("wslb_current_clients") == 0
    for reason, code in REFUSAL_REASONS.items():
        value = registry.get_sample_value(
            "wslb_handshakes_refused_total", {"reason": reason, "code": code}
        )
        assert value == 0
    assert set(REFUSAL_REASONS) >= {
        "no_healthy_backend",
        "backends_failed",
        "backends_full",
        "too_many_clients",
        "shutting_down",
        "too_many_from_address",
        "origin_not_allowed",
        "handshake_timeout",
    }
    for code in ("1009", "1002"):
        value = registry.get_sample_value("wslb_client_closes_total", {"code": code})
        assert value == 0
