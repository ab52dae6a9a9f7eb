"""
Limits: how many clients, how many from one address, how long a handshake
request may take, which Origins, how many clients per backend, and how big a
message; each enforced with its own answer and counted in C{/metrics}.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from autobahn.websocket.types import ConnectionDeny
from helpers import BackendServerProtocol, connectClient, waitUntil
from test_metrics import scrape
from test_workers import _spawn, _stop, eventually
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Factory, Protocol

from wslb_twisted.backends import Backend
from wslb_twisted.config import Settings
from wslb_twisted.forwarding import parseTrustedProxies
from wslb_twisted.metrics import REFUSAL_REASONS
from wslb_twisted.workers import settingsFromJSON, settingsToJSON


async def _refused(client):
    """
    Wait for C{client}'s handshake to fail; return the status line it read.
    """
    with pytest.raises(ConnectionError):
        await client.opened
    return client.statusLine


async def _leave(client):
    """
    Close an open client and wait until its connection is gone.
    """
    client.protocolInstance.sendClose(1000)
    await client.closed


class _HalfRequest(Protocol):
    """
    A slowloris: sends the start of a handshake request, then nothing.
    """

    def connectionMade(self):
        self.received = b""
        self.transport.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgr")

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        from twisted.internet import reactor

        self.factory.lost.callback(
            (reactor.seconds() - self.factory.started, self.received)
        )


def _slowloris(port: int) -> Deferred[tuple[float, bytes]]:
    """
    Start a slowloris on 127.0.0.1:C{port}.

    @return: fires with the seconds it stayed connected and what it read.
    """
    from twisted.internet import reactor

    factory = ClientFactory.forProtocol(_HalfRequest)
    factory.lost = Deferred()
    # From before the connection exists: the load balancer may see it (and
    # start its timer) before this side's connectionMade runs.
    factory.started = reactor.seconds()
    reactor.connectTCP("127.0.0.1", port, factory)
    return factory.lost


async def _echoes(client) -> None:
    protocol = await client.opened
    protocol.sendMessage(b"ping?")
    assert await client.messages.get() == (b"ping?", False)


# Max clients


@pytest_twisted.ensureDeferred
async def test_clientBeyondMaxClientsGets503(backends, startLB):
    """
    With C{maxClients} clients connected, one more is answered HTTP 503 at its
    handshake, before any backend is tried, and counted as
    C{too_many_clients}.
    """
    lb = await startLB(backends, maxClients=2)
    for _ in range(2):
        await connectClient(lb.port).opened
    requests = sum(len(b.factory.requests) for b in backends)
    assert "503" in await _refused(connectClient(lb.port))
    assert sum(len(b.factory.requests) for b in backends) == requests
    assert lb.service.relay.refusals == {"too_many_clients": 1}


@pytest_twisted.ensureDeferred
async def test_clientLeavingMakesRoomUnderMaxClients(backends, startLB):
    """
    Once a client leaves, a new client fits under C{maxClients} again.
    """
    lb = await startLB(backends, maxClients=2)
    first = connectClient(lb.port)
    await first.opened
    await connectClient(lb.port).opened
    assert "503" in await _refused(connectClient(lb.port))
    await _leave(first)
    await waitUntil(lambda: len(lb.service.relay.sessions) == 1)
    await _echoes(connectClient(lb.port))


# Per-address limit


@pytest_twisted.ensureDeferred
async def test_addressBeyondItsLimitGets429WhileAnotherGetsIn(backends, startLB):
    """
    An address with C{maxConnectionsPerIP} connections gets HTTP 429 for one
    more, counted as C{too_many_from_address}, while a client from another
    address is served.
    """
    lb = await startLB(backends, maxConnectionsPerIP=2)
    for _ in range(2):
        await connectClient(lb.port).opened
    assert "429" in await _refused(connectClient(lb.port))
    await _echoes(connectClient(lb.port, sourceAddress="127.0.0.2"))
    assert lb.service.relay.refusals == {"too_many_from_address": 1}
    assert lb.service.relay.addresses == {"127.0.0.1": 2, "127.0.0.2": 1}


@pytest_twisted.ensureDeferred
async def test_addressLimitCountsTheClientBehindATrustedProxy(backends, startLB):
    """
    Behind a trusted proxy, connections are counted per forwarded client
    address, not per proxy: a second connection forwarded for the same client
    gets 429, one forwarded for another client through the same proxy is
    served.
    """
    lb = await startLB(
        backends,
        maxConnectionsPerIP=1,
        trustedProxies=parseTrustedProxies(["127.0.0.1"]),
    )

    def forwardedFor(address):
        return connectClient(lb.port, headers={"X-Forwarded-For": address})

    await forwardedFor("203.0.113.7").opened
    assert "429" in await _refused(forwardedFor("203.0.113.7"))
    await _echoes(forwardedFor("203.0.113.8"))
    assert lb.service.relay.addresses == {"203.0.113.7": 1, "203.0.113.8": 1}


@pytest_twisted.ensureDeferred
async def test_closedClientNoLongerCountsForItsAddress(backends, startLB):
    """
    A client that closes stops counting against its address: the next one
    from that address gets in.
    """
    lb = await startLB(backends, maxConnectionsPerIP=1)
    first = connectClient(lb.port)
    await first.opened
    await _leave(first)
    await waitUntil(lambda: lb.service.relay.addresses == {})
    await _echoes(connectClient(lb.port))


@pytest_twisted.ensureDeferred
async def test_clientRefusedFor503NoLongerCountsForItsAddress(backends, startLB):
    """
    A client refused because no backend is healthy stops counting against
    its address once its connection is gone.
    """
    for backend in backends:
        backend.health.code = 500
    lb = await startLB(backends, maxConnectionsPerIP=1)
    client = connectClient(lb.port)
    assert "503" in await _refused(client)
    await client.closed
    await waitUntil(lambda: lb.service.relay.addresses == {})
    assert lb.service.relay.refusals == {"no_healthy_backend": 1}


@pytest_twisted.ensureDeferred
async def test_clientLeavingWhileConnectingNoLongerCountsForItsAddress(
    backends, startLB
):
    """
    A client that goes away while its backend's handshake is still under way
    (the attempt is abandoned) stops counting against its address.
    """
    from twisted.internet import reactor

    silent = Factory.forProtocol(Protocol)
    accepted: list[Protocol] = []
    silent.buildProtocol = lambda addr: accepted.append(Protocol()) or accepted[-1]
    port = reactor.listenTCP(0, silent, interface="127.0.0.1")
    try:
        spec = Backend(
            id="silent",
            host="127.0.0.1",
            port=port.getHost().port,
            healthPort=backends[0].healthPortNumber,
        )
        lb = await startLB([spec], maxConnectionsPerIP=1)
        client = connectClient(lb.port)
        await waitUntil(lambda: accepted and client.connection is not None)
        assert lb.service.relay.addresses == {"127.0.0.1": 1}
        client.connection.transport.abortConnection()
        await client.closed
        await waitUntil(lambda: lb.service.relay.addresses == {})
        assert len(lb.service.relay.sessions) == 0
    finally:
        for protocol in accepted:
            if protocol.transport is not None:
                protocol.transport.abortConnection()
        await port.stopListening()


# Handshake timeout


@pytest_twisted.ensureDeferred
async def test_slowlorisIsDroppedAfterTheHandshakeTimeout(backends, startLB):
    """
    A client that sends half a handshake request and stops is dropped,
    without an answer, once C{handshakeTimeout} has passed since it
    connected (well before Autobahn's overall handshake timeout); a normal
    client is served meanwhile.  The drop is counted as C{handshake_timeout}.
    """
    lb = await startLB(backends, handshakeTimeout=0.5)
    dropped = _slowloris(lb.port)
    await _echoes(connectClient(lb.port))
    seconds, received = await dropped
    assert received == b""
    assert 0.5 <= seconds < 3
    assert lb.service.relay.refusals == {"handshake_timeout": 1}


@pytest_twisted.ensureDeferred
async def test_handshakeTimeoutStopsOnceTheRequestIsComplete(backends, startLB):
    """
    The handshake timeout bounds only the client's request: a client whose
    backend takes longer than it to accept is served, not dropped.
    """
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    class SlowBackend(BackendServerProtocol):
        def onConnect(self, request):
            return deferLater(
                reactor, 1.0, BackendServerProtocol.onConnect, self, request
            )

    backends[0].factory.protocol = SlowBackend
    lb = await startLB(backends[:1], handshakeTimeout=0.5)
    await _echoes(connectClient(lb.port))
    assert lb.service.relay.refusals == {}


# Allowed Origins


@pytest_twisted.ensureDeferred
async def test_originNotAllowedGets403(backends, startLB):
    """
    A client whose C{Origin} is not in C{allowedOrigins} gets HTTP 403 at its
    handshake, counted as C{origin_not_allowed}; no backend is tried.
    """
    lb = await startLB(backends, allowedOrigins=["https://good.example"])
    client = connectClient(lb.port, origin="https://evil.example")
    assert "403" in await _refused(client)
    assert all(b.factory.requests == [] for b in backends)
    assert lb.service.relay.refusals == {"origin_not_allowed": 1}


@pytest_twisted.ensureDeferred
async def test_allowedOriginIsServedWhateverItsCase(backends, startLB):
    """
    A client whose C{Origin} is in C{allowedOrigins} is served; scheme and
    host compare without regard to case.
    """
    lb = await startLB(backends, allowedOrigins=["https://good.example:8443"])
    await _echoes(connectClient(lb.port, origin="HTTPS://Good.Example:8443"))


@pytest_twisted.ensureDeferred
async def test_missingOriginGets403WhenOriginsAreListed(backends, startLB):
    """
    With C{allowedOrigins} set, a client sending no C{Origin} at all (not a
    browser) is refused with 403 too.
    """
    lb = await startLB(backends, allowedOrigins=["https://good.example"])
    assert "403" in await _refused(connectClient(lb.port))


@pytest_twisted.ensureDeferred
async def test_starAllowsAnyOrigin(backends, startLB):
    """
    C{*} among C{allowedOrigins} allows any Origin, and none.
    """
    lb = await startLB(backends, allowedOrigins=["https://good.example", "*"])
    await _echoes(connectClient(lb.port, origin="https://other.example"))
    await _echoes(connectClient(lb.port))


# Per-backend max connections


@pytest_twisted.ensureDeferred
async def test_fullBackendIsSkipped(backends, startLB):
    """
    A backend holding its C{maxConnections} clients is skipped like an
    unhealthy one: further clients go to the other backend.
    """
    lb = await startLB(backends[:2])
    lb.backend("backend-1").maxConnections = 1
    for _ in range(4):
        await connectClient(lb.port).opened
    assert len(backends[0].factory.requests) == 1
    assert len(backends[1].factory.requests) == 3
    assert lb.backend("backend-1").connectFailures == 0


@pytest_twisted.ensureDeferred
async def test_everyBackendFullMeans503(backends, startLB):
    """
    When every healthy backend is full, a client gets HTTP 503, counted as
    C{backends_full}; once a client leaves, its backend takes a new one.
    """
    lb = await startLB(backends[:2])
    for backend in lb.service.pool:
        backend.maxConnections = 1
    first = connectClient(lb.port)
    await first.opened
    await connectClient(lb.port).opened
    assert "503" in await _refused(connectClient(lb.port))
    assert lb.service.relay.refusals == {"backends_full": 1}
    await _leave(first)
    await waitUntil(lambda: lb.service.pool.totalConnections == 1)
    await _echoes(connectClient(lb.port))


# Message size and the metrics


@pytest_twisted.ensureDeferred
async def test_oversizeMessageCountedAsClientClose1009(backends, startLB):
    """
    A client closed with 1009 for a message over C{maxMessageSize} is
    counted in C{wslb_client_closes_total{code="1009"}}.
    """
    lb = await startLB(backends[:1], maxMessageSize=1024)
    client = connectClient(lb.port)
    protocol = await client.opened
    protocol.sendMessage(b"x" * 1025, True)
    assert (await client.closed)[1] == 1009
    answer = await scrape(lb.monitorPort)
    assert answer.value("wslb_client_closes_total", code="1009") == 1
    assert answer.value("wslb_client_closes_total", code="1002") == 0


@pytest_twisted.ensureDeferred
async def test_metricsCountEachRefusalWithItsReasonAndCode(backends, startLB):
    """
    C{wslb_handshakes_refused_total} counts each refusal under its reason,
    labelled with the HTTP status the client read (C{none} for a dropped
    slowloris); reasons that did not happen are exposed as 0.
    """
    lb = await startLB(
        backends,
        allowedOrigins=["https://good.example"],
        maxConnectionsPerIP=1,
        maxClients=1,
        handshakeTimeout=0.5,
    )
    good = "https://good.example"
    await connectClient(lb.port, origin=good).opened
    assert "429" in await _refused(connectClient(lb.port, origin=good))
    other = "127.0.0.2"
    evil = connectClient(lb.port, sourceAddress=other, origin="https://evil.example")
    assert "403" in await _refused(evil)
    assert "503" in await _refused(
        connectClient(lb.port, sourceAddress=other, origin=good)
    )
    await _slowloris(lb.port)
    answer = await scrape(lb.monitorPort)
    counts = {
        (reason, code): answer.value(
            "wslb_handshakes_refused_total", reason=reason, code=code
        )
        for reason, code in REFUSAL_REASONS.items()
    }
    assert counts == {
        ("no_healthy_backend", "503"): 0,
        ("backends_failed", "503"): 0,
        ("backends_full", "503"): 0,
        ("too_many_clients", "503"): 1,
        ("shutting_down", "503"): 0,
        ("too_many_from_address", "429"): 1,
        ("origin_not_allowed", "403"): 1,
        ("handshake_timeout", "none"): 1,
    }
    assert answer.value("wslb_current_clients") == 1


# Workers


def test_limitsReachTheWorkers() -> None:
    """
    The limit settings, and each backend's C{maxConnections}, are part of
    what a worker process is given.
    """
    settings = Settings(
        maxClients=7,
        maxConnectionsPerIP=3,
        handshakeTimeout=2.5,
        allowedOrigins=["https://good.example"],
        maxMessageSize=4096,
        backends=[Backend(id="b", host="10.0.0.5", port=8080, maxConnections=9)],
    )
    decoded, _ = settingsFromJSON(settingsToJSON(settings))
    assert decoded.maxClients == 7
    assert decoded.maxConnectionsPerIP == 3
    assert decoded.handshakeTimeout == 2.5
    assert decoded.allowedOrigins == ["https://good.example"]
    assert decoded.maxMessageSize == 4096
    assert decoded.backends[0].maxConnections == 9


@pytest_twisted.ensureDeferred
async def test_maxClientsCountsEveryWorkersClients(backends, tmp_path):
    """
    With C{--workers 2}, C{maxClients} bounds the load balancer as a whole:
    once one client is in (and the workers have synced), every further
    client is refused with 503, whichever worker accepts it, and the
    supervisor's C{/metrics} counts those refusals.
    """
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    watcher, process = _spawn(backends, tmp_path, ["--max-clients=1"])
    try:
        ports = await watcher.listening
        await connectClient(ports["client"]).opened

        async def counted():
            answer = await scrape(ports["monitoring"])
            return answer.value("wslb_current_clients") == 1

        await eventually(counted)
        # One more sync carries that count to the other worker.
        await deferLater(reactor, 0.3, lambda: None)
        for _ in range(6):
            assert "503" in await _refused(connectClient(ports["client"]))

        async def refusalsCounted():
            answer = await scrape(ports["monitoring"])
            value = answer.value(
                "wslb_handshakes_refused_total", reason="too_many_clients", code="503"
            )
            return value == 6

        await eventually(refusalsCounted)
    finally:
        await _stop(watcher, process)


def test_admitChecksOriginThenAddressThenClients() -> None:
    """
    C{RelayFactory.admit} answers the most specific refusal first: a bad
    Origin (403) before an address over its limit (429), and that before a
    full load balancer (503).
    """
    from twisted.internet.task import Clock

    from wslb_twisted.backends import BackendPool
    from wslb_twisted.relay import RelayFactory
    from wslb_twisted.strategies import RoundRobinStrategy

    settings = Settings(
        maxClients=1,
        maxConnectionsPerIP=1,
        allowedOrigins=["https://good.example"],
    )
    relay = RelayFactory(
        BackendPool([]), RoundRobinStrategy(), settings, reactor=Clock()
    )
    relay.elsewhereClients = 1
    relay.addressOpened("10.0.0.1")

    def code(origin: str, address: str) -> int:
        with pytest.raises(ConnectionDeny) as refused:
            relay.admit(origin, address)
        return refused.value.code

    assert code("https://evil.example", "10.0.0.1") == 403
    assert code("https://good.example", "10.0.0.1") == 429
    assert code("https://good.example", "10.0.0.2") == 503
