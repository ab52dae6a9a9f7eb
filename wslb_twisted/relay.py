"""
The relay: the client-facing WebSocket server, the backend legs it opens, and
the session joining one client to one backend leg.

A client's opening handshake is held (Autobahn's C{onConnect} returns a
Deferred) while the session picks a backend with the strategy and completes a
WebSocket handshake with it; only then does the client get its 101, carrying
the backend's chosen subprotocol.  A backend that refuses, times out or fails
its handshake is skipped and another is tried, up to C{maxRetries} more; when
none works the client gets HTTP 503.

Once both legs are open, L{wslb_twisted.datapath} moves the messages.  The
session owns everything else: which backend leg a client is attached to,
closing, and counting.  Keeping the leg replaceable is what lets a later
session move a live client to another backend.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from wslb_twisted import datapath
from wslb_twisted._autobahn import releasedWhenLost, withoutDebugFormatting
from wslb_twisted.backends import Backend, BackendPool
from wslb_twisted.config import Settings
from wslb_twisted.forwarding import clientAddress, forwardedFor
from wslb_twisted.health import logHealthChange
from wslb_twisted.interfaces import IStrategy
from wslb_twisted.tls import BackendTLS, describeTLSFailure

log = Logger()

_OPEN = WebSocketProtocol.STATE_OPEN

GOING_AWAY = 1001
INTERNAL_ERROR = 1011

NO_HEALTHY_BACKEND = "no_healthy_backend"
"""A client was refused because no backend was in rotation."""
BACKENDS_FAILED = "backends_failed"
"""A client was refused because every backend tried for it failed."""
SHUTTING_DOWN = "shutting_down"
"""A client was refused because the load balancer was stopping."""
BACKENDS_FULL = "backends_full"
"""A client was refused (503) because every healthy backend was full."""
TOO_MANY_CLIENTS = "too_many_clients"
"""A client was refused (503) because C{maxClients} were connected."""
TOO_MANY_FROM_ADDRESS = "too_many_from_address"
"""A client was refused (429) because its address had C{maxConnectionsPerIP}."""
ORIGIN_NOT_ALLOWED = "origin_not_allowed"
"""A client was refused (403) because its C{Origin} is not allowed."""
HANDSHAKE_TIMEOUT = "handshake_timeout"
"""A client was dropped for not sending its request within C{handshakeTimeout}."""

MAX_REQUEST_SIZE = 16 * 1024
"""
The largest opening handshake request accepted from a client, in bytes
(request line and headers): a bigger one is answered with HTTP 431.  It also
bounds what a client may send after its request while the backend is being
connected: beyond it, the client is not read until its 101.  16 KiB is what
HAProxy, Node.js and twisted.web allow.
"""

# Request headers the load balancer does not pass to the backend: those of the
# WebSocket handshake itself (the backend leg makes its own), hop-by-hop
# headers, and those it sets itself.
_NOT_FORWARDED = frozenset(
    {
        "host",
        "upgrade",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "proxy-authorization",
        "proxy-connection",
        "content-length",
        "pragma",
        "cache-control",
        "origin",
        "user-agent",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-real-ip",
    }
)


class ClientLeg(WebSocketServerProtocol):
    """
    The WebSocket connection from a client to the load balancer.

    @ivar countedAddress: the client address this connection is counted
        under in L{RelayFactory.addresses}, from its admission until its
        connection is gone; C{None} outside that time.
    """

    factory: RelayFactory
    session: Session | None = None
    _connectionMade = withoutDebugFormatting(WebSocketServerProtocol._connectionMade)
    _connectionLost = releasedWhenLost(WebSocketServerProtocol._connectionLost)
    countedAddress: str | None = None
    _requestTimer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self.factory.connectionOpened(self)
        super().connectionMade()
        timeout = self.factory.settings.handshakeTimeout
        if timeout > 0:
            self._requestTimer = self.factory.reactor.callLater(
                timeout, self._requestTimedOut
            )

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._cancelRequestTimer()
        super().connectionLost(reason)
        address, self.countedAddress = self.countedAddress, None
        if address is not None:
            self.factory.addressClosed(address)
        self.factory.connectionClosed(self)

    def _requestTimedOut(self) -> None:
        """
        The client has not sent its whole handshake request in time (a
        slowloris, or a dead peer): drop it, answering nothing.
        """
        self._requestTimer = None
        self.factory.countRefusal(HANDSHAKE_TIMEOUT)
        self.transport.abortConnection()  # type: ignore[union-attr]

    def _cancelRequestTimer(self) -> None:
        if self._requestTimer is not None:
            self._requestTimer.cancel()
            self._requestTimer = None

    def processHandshake(self) -> None:
        """
        Parse the client's request once, and only if it fits in
        L{MAX_REQUEST_SIZE}.

        Autobahn would look for a request in every read until the 101 is
        sent: bytes sent after a request held for a backend would be parsed
        as another request, opening another backend connection for this one
        client.  They are frames for the data path instead, which takes them
        over at the 101; beyond L{MAX_REQUEST_SIZE} of them, the client is not
        read until then (L{onOpen} reads it again).
        """
        if self.session is None:
            if self.data.find(b"\r\n\r\n", 0, MAX_REQUEST_SIZE) < 0:
                if len(self.data) >= MAX_REQUEST_SIZE:
                    self.failHandshake("request header too large", 431)
                return
            super().processHandshake()
        waiting = self.session is not None and self.state == self.STATE_CONNECTING
        if waiting and len(self.data) > MAX_REQUEST_SIZE:
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def onConnect(self, request: ConnectionRequest) -> Deferred[Any]:  # type: ignore[override]
        """
        Admit the client within the limits (before any backend is tried),
        then hold its handshake until a backend has accepted its own.

        @raise ConnectionDeny: when a limit refuses the client (see
            L{RelayFactory.admit}).
        """
        self._cancelRequestTimer()
        factory = self.factory
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        address = clientAddress(
            getattr(peer, "host", ""),
            request.headers.get("x-forwarded-for"),
            factory.settings.trustedProxies,
        )
        factory.admit(request.origin, address)
        self.countedAddress = address
        factory.addressOpened(address)
        self.session = Session(factory, self)
        self.session.clientAddress = address
        factory.sessions.add(self.session)
        return self.session.start(request, self.http_request_uri)

    def onOpen(self) -> None:
        """
        The client has its 101: from now on L{datapath} moves the bytes.
        """
        assert self.session is not None
        self.transport.resumeProducing()  # type: ignore[union-attr]
        self.session.clientOpened()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """
        The client's connection is gone, closed or not.
        """
        if self.session is not None:
            self.session.clientClosed(code, reason)


class BackendLeg(WebSocketClientProtocol):
    """
    The WebSocket connection from the load balancer to a backend, on behalf
    of one client.
    """

    factory: BackendLegFactory
    subprotocol: str | None = None
    responseHeaders: dict[str, str] | None = None
    _connectionMade = withoutDebugFormatting(WebSocketClientProtocol._connectionMade)
    _connectionLost = releasedWhenLost(WebSocketClientProtocol._connectionLost)

    def connectionMade(self) -> None:
        self.factory.relay.connectionOpened(self)
        super().connectionMade()
        self.factory.session.legConnected(self)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if self.wasNotCleanReason is None:
            # A failed TLS handshake (a certificate that does not verify)
            # would otherwise read as "peer dropped the TCP connection".
            self.wasNotCleanReason = describeTLSFailure(reason)
        super().connectionLost(reason)
        self.factory.relay.connectionClosed(self)

    def onConnect(self, response: Any) -> None:
        """
        Remember what the backend answered, to pass it on to the client.
        """
        self.subprotocol = response.protocol
        self.responseHeaders = response.headers

    def onOpen(self) -> None:
        """
        The backend accepted the WebSocket: the client may now have its 101.
        """
        self.factory.session.legOpened(self)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """
        The backend connection is gone: before it opened, the attempt failed.
        """
        self.factory.session.legClosed(self, code, reason)


class BackendLegFactory(WebSocketClientFactory):
    """
    Makes the backend leg of one connection attempt.

    One is needed per attempt because Autobahn checks the backend's chosen
    subprotocol against the factory's list; it is a shallow copy of a
    template configured once (see L{RelayFactory.legFactory}), which is much
    cheaper than constructing a new factory.
    """

    protocol = BackendLeg  # type: ignore[assignment]
    noisy = False
    session: Session
    relay: RelayFactory
    backend: Backend

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        """
        The TCP connection to the backend could not be made.
        """
        self.session.attemptFailed(self.backend, reason.getErrorMessage())


class Session:
    """
    One client and the backend leg it is attached to.

    @ivar client: the client leg.
    @ivar backend: the backend counted as serving this client, or C{None}.
    @ivar leg: the backend leg, open or being opened, or C{None}.
    @ivar tried: the backends tried for this client so far, in order.
    @ivar clientAddress: the client's address (trusted-proxy aware), set by
        the client leg when it admits the client, before L{start}.
    """

    def __init__(self, factory: RelayFactory, client: ClientLeg) -> None:
        self.factory = factory
        self.client = client
        self.backend: Backend | None = None
        self.leg: BackendLeg | None = None
        self.tried: list[Backend] = []
        self.clientAddress = ""
        self.clientGone = False
        self.pipe: datapath.Pipe | None = None
        self._handshake: Deferred[Any] | None = None
        self._legFactoryArguments: dict[str, Any] = {}
        self._connector: Any = None
        self._timer: IDelayedCall | None = None
        self._lastFailure = ""
        self._timedOut = False

    # Connecting

    def start(self, request: ConnectionRequest, uri: str) -> Deferred[Any]:
        """
        Find a backend for the client.

        @param request: the client's opening handshake.
        @param uri: the client's request target: path and query string.
        @return: a Deferred firing with the backend's subprotocol (and
            headers for the client) once a backend leg is open, or failing
            with L{ConnectionDeny} when none could be opened.
        """
        factory = self.factory
        headers = request.headers
        peer = self.client.transport.getPeer()  # type: ignore[union-attr]
        peerHost = getattr(peer, "host", "")
        trusted = factory.settings.trustedProxies
        incoming = headers.get("x-forwarded-for")
        forwarded = {
            name: value for name, value in headers.items() if name not in _NOT_FORWARDED
        }
        forwarded["X-Forwarded-For"] = forwardedFor(peerHost, incoming, trusted)
        forwarded["X-Forwarded-Proto"] = "https" if factory.isSecure else "http"
        forwarded["X-Real-IP"] = self.clientAddress
        self._legFactoryArguments = {
            "resource": uri,
            "origin": request.origin if "origin" in headers else None,
            "protocols": request.protocols,
            "useragent": headers.get("user-agent"),
            "headers": forwarded,
        }
        handshake: Deferred[Any] = Deferred()
        self._handshake = handshake
        ready = factory.whenReady()
        if ready.called:
            self._attempt()
        else:
            ready.addCallback(lambda _: self._attempt())
        return handshake

    def _attempt(self) -> None:
        if self.clientGone or self._handshake is None:
            return
        factory = self.factory
        candidates = factory.pool.healthy(exclude=self.tried)
        if not candidates and not self.tried:
            if factory.pool.healthyCount:
                self._refuse(BACKENDS_FULL, "every healthy backend is full")
            else:
                self._refuse(NO_HEALTHY_BACKEND, "no healthy backend")
            return
        if not candidates or len(self.tried) > factory.settings.maxRetries:
            self._refuse(BACKENDS_FAILED, self._lastFailure)
            return
        backend = factory.strategy.pick(candidates, self.clientAddress)
        self.tried.append(backend)
        self.backend = backend
        backend.connectionOpened()
        legFactory = factory.legFactory(self, backend, self._legFactoryArguments)
        timeout = factory.settings.connectTimeout
        if backend.tls:
            self._connector = factory.reactor.connectSSL(
                backend.host,
                backend.port,
                legFactory,
                factory.backendTLS.creatorFor(backend.host),
                timeout=timeout,
            )
        else:
            self._connector = factory.reactor.connectTCP(
                backend.host, backend.port, legFactory, timeout=timeout
            )
        self._timer = factory.reactor.callLater(timeout, self._attemptTimedOut)

    def _attemptTimedOut(self) -> None:
        self._timer = None
        self._timedOut = True
        leg = self.leg
        if leg is not None:
            leg.dropConnection(abort=True)
        else:
            self._connector.disconnect()

    def legConnected(self, leg: BackendLeg) -> None:
        """
        The TCP connection of an attempt is up; its handshake is under way.
        """
        self.leg = leg

    def legOpened(self, leg: BackendLeg) -> None:
        """
        An attempt succeeded: answer the client's handshake.
        """
        self._cancelTimer()
        leg.factory.backend.recordAttempt(True, self.factory.reactor.seconds())
        handshake, self._handshake = self._handshake, None
        if handshake is None or self.clientGone:
            leg.sendCloseFrame(GOING_AWAY, b"client went away")
            return
        headers = {}
        cookie = (leg.responseHeaders or {}).get("set-cookie")
        if cookie is not None:
            headers["Set-Cookie"] = cookie
        handshake.callback((leg.subprotocol, headers))

    def attemptFailed(self, backend: Backend, reason: str) -> None:
        """
        An attempt to open a backend leg failed; try another backend.
        """
        self._cancelTimer()
        self.leg = None
        self._release()
        if self.clientGone:
            return
        backend.connectFailures += 1
        if self._timedOut:
            self._timedOut = False
            timeout = self.factory.settings.connectTimeout
            reason = f"no WebSocket handshake within {timeout:g}s"
        self._lastFailure = f"{backend.id} ({backend.address}): {reason}"
        log.warn(
            "backend {backendId} ({address}) failed for client {client}: {reason}",
            backendId=backend.id,
            address=backend.address,
            client=self.clientAddress,
            reason=reason,
            event="backend_connect_failed",
        )
        if self._handshake is not None:
            self._attemptFailedPassively(backend, reason)
        self._attempt()

    def _attemptFailedPassively(self, backend: Backend, reason: str) -> None:
        """
        Passive health: count a failed attempt against C{backend}, which
        leaves the rotation after C{healthFall} in a row (see
        L{Backend.recordAttempt}); log that change once.  Attempts abandoned
        by the load balancer itself (client gone, shutdown) are not counted.
        """
        factory = self.factory
        when = factory.reactor.seconds()
        if backend.recordAttempt(False, when, factory.settings.healthFall):
            failures = backend.consecutiveConnectFailures
            plural = "" if failures == 1 else "s"
            logHealthChange(
                log,
                backend,
                "healthy",
                f"{failures} consecutive connection failure{plural}",
                source="connections",
                lastFailure=reason,
            )

    def _refuse(self, kind: str, reason: str) -> None:
        handshake, self._handshake = self._handshake, None
        refusals = self.factory.refusals
        refusals[kind] = refusals.get(kind, 0) + 1
        log.warn(
            "refused client {client} after {attempts} attempt(s): {reason}",
            client=self.clientAddress,
            attempts=len(self.tried),
            reason=reason,
            event="client_refused",
        )
        if handshake is not None:
            handshake.errback(Failure(ConnectionDeny(503, "no backend available")))

    def _abandonAttempt(self, reason: str) -> None:
        """
        Stop the attempt under way and answer the client's handshake with 503
        (if the client is still there to read it).
        """
        handshake, self._handshake = self._handshake, None
        self._cancelTimer()
        if self.leg is not None:
            self.leg.dropConnection(abort=True)
        elif self._connector is not None:
            self._connector.disconnect()
        self._release()
        if handshake is not None:
            handshake.errback(Failure(ConnectionDeny(503, reason)))

    def _cancelTimer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _release(self) -> None:
        backend, self.backend = self.backend, None
        if backend is not None:
            backend.connectionClosed()

    # Relaying

    def clientOpened(self) -> None:
        """
        The client has its 101: hand both legs to the data path.
        """
        leg = self.leg
        assert leg is not None and self.backend is not None
        if leg.state != _OPEN:
            # The backend closed between its handshake and the client's.
            self.client.sendCloseFrame(INTERNAL_ERROR, b"backend went away")
            return
        factory = self.factory
        self.pipe = datapath.Pipe(
            self.client,
            leg,
            self.backend,
            factory.settings.maxMessageSize,
            factory.reactor,
            factory.clientCloses,
        )
        self.pipe.start(self.client, leg)
        self.pipe.startLiveness(
            factory.settings.pingInterval, factory.settings.pingTimeout
        )

    def clientClosed(self, code: int | None, reason: str | None) -> None:
        """
        The client's connection is gone.
        """
        self.clientGone = True
        self.factory.sessionEnded(self)
        if self._handshake is not None:
            self._abandonAttempt("client went away")
            return
        if self.pipe is not None:
            self.pipe.clientLost()
        self._release()

    def legClosed(self, leg: BackendLeg, code: int | None, reason: str | None) -> None:
        """
        A backend leg's connection is gone.
        """
        if self._handshake is not None and leg is self.leg:
            self.attemptFailed(
                leg.factory.backend, leg.wasNotCleanReason or "handshake failed"
            )
            return
        if leg is self.leg:
            if self.pipe is not None:
                self.pipe.backendLost()
            elif self.client.state == _OPEN:
                self.client.sendCloseFrame(INTERNAL_ERROR, b"backend went away")
            self._release()

    def shutdown(self) -> None:
        """
        The load balancer is stopping: refuse a client still connecting, and
        close an open one (and its backend) with 1001 "going away".
        """
        if self._handshake is not None:
            refusals = self.factory.refusals
            refusals[SHUTTING_DOWN] = refusals.get(SHUTTING_DOWN, 0) + 1
            self._abandonAttempt("load balancer stopping")
            return
        if self.pipe is not None:
            self.pipe.shutdown()
        elif self.client.state == _OPEN:
            self.client.sendCloseFrame(GOING_AWAY, b"load balancer shutting down")


class RelayFactory(WebSocketServerFactory):
    """
    The client-facing WebSocket server: one L{ClientLeg} per client.

    @ivar pool: the backends.
    @ivar strategy: picks a backend per client.
    @ivar settings: the configuration.
    @ivar sessions: the sessions whose client is connected (admitted, and
        not gone yet): the clients C{maxClients} counts.
    @ivar refusals: clients refused, by reason: with HTTP 503,
        L{NO_HEALTHY_BACKEND}, L{BACKENDS_FAILED}, L{BACKENDS_FULL},
        L{TOO_MANY_CLIENTS} or L{SHUTTING_DOWN}; with 429,
        L{TOO_MANY_FROM_ADDRESS}; with 403, L{ORIGIN_NOT_ALLOWED}; dropped
        without an answer, L{HANDSHAKE_TIMEOUT}.
    @ivar addresses: connected clients by client address (only addresses
        with at least one), for C{maxConnectionsPerIP}.
    @ivar elsewhereClients: clients connected to the other worker processes,
        as of the last sync (see L{wslb_twisted.workers}); 0 without workers.
    @ivar clientCloses: clients the data path closed for breaking a limit
        or the protocol, by close code (1009: message too big; 1002:
        protocol error).
    @ivar backendTLS: how C{wss} backends are connected to and verified.
    """

    protocol = ClientLeg  # type: ignore[assignment]
    noisy = False

    def __init__(
        self,
        pool: BackendPool,
        strategy: IStrategy,
        settings: Settings,
        reactor: Any = None,
        whenReady: Callable[[], Deferred[None]] | None = None,
        isSecure: bool = False,
    ) -> None:
        """
        @param pool: the backends.
        @param strategy: the balancing strategy.
        @param settings: the configuration (retries, timeouts, limits).
        @param reactor: provides L{IReactorTCP}, L{IReactorSSL} and
            L{IReactorTime}; the global reactor when C{None}.
        @param whenReady: returns a Deferred that fires once every backend has
            been health-checked; clients wait for it before a backend is
            picked.
        @param isSecure: whether clients connect over TLS (C{wss}).
        """
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        super().__init__(server=None, reactor=reactor)
        self.pool = pool
        self.strategy = strategy
        self.settings = settings
        self.isSecure = isSecure
        self.whenReady = whenReady or (lambda: succeed(None))
        self.sessions: set[Session] = set()
        self.refusals: dict[str, int] = {}
        self.addresses: dict[str, int] = {}
        self.elsewhereClients = 0
        self.clientCloses: dict[int, int] = {}
        self.connections: set[WebSocketProtocol] = set()
        self._drained: list[Deferred[None]] = []
        self.backendTLS = BackendTLS(settings.backendCA)
        attemptsTime = settings.connectTimeout * (settings.maxRetries + 1)
        self.setProtocolOptions(
            webStatus=False,
            maxMessagePayloadSize=settings.maxMessageSize,
            maxFramePayloadSize=settings.maxMessageSize,
            openHandshakeTimeout=attemptsTime + 10,
            closeHandshakeTimeout=5,
            failByDrop=False,
            echoCloseCodeReason=True,
            perMessageCompressionAccept=lambda offers: None,
        )
        self._legTemplate = WebSocketClientFactory(reactor=reactor)
        self._legTemplate.setProtocolOptions(
            maxMessagePayloadSize=settings.maxMessageSize,
            maxFramePayloadSize=settings.maxMessageSize,
            openHandshakeTimeout=0,
            closeHandshakeTimeout=5,
            failByDrop=False,
            echoCloseCodeReason=True,
        )

    def legFactory(
        self, session: Session, backend: Backend, arguments: dict[str, Any]
    ) -> BackendLegFactory:
        """
        A factory for one attempt to open C{session}'s leg to C{backend}.
        """
        factory = copy.copy(self._legTemplate)
        factory.__class__ = BackendLegFactory
        assert isinstance(factory, BackendLegFactory)
        factory.setSessionParameters(
            url=f"{'wss' if backend.tls else 'ws'}://{backend.host}:{backend.port}",
            origin=arguments["origin"],
            protocols=arguments["protocols"],
            useragent=arguments["useragent"],
            headers=arguments["headers"],
        )
        factory.resource = arguments["resource"]
        factory.session = session
        factory.relay = self
        factory.backend = backend
        return factory

    def sessionEnded(self, session: Session) -> None:
        """
        Forget a session whose client has gone.
        """
        self.sessions.discard(session)

    def admit(self, origin: str, address: str) -> None:
        """
        Check a client whose handshake request has arrived against the
        limits, before any backend is tried: its C{Origin}, the connections
        from its address, then the clients connected.

        @param origin: the request's C{Origin} header (empty when missing).
        @param address: the client address (trusted-proxy aware).
        @raise ConnectionDeny: 403 when C{allowedOrigins} is not empty, has
            no C{*}, and does not hold C{origin} (a missing C{Origin} too);
            429 when C{address} already has C{maxConnectionsPerIP}
            connections; 503 when C{maxClients} clients are connected.  The
            refusal is counted in L{refusals}.
        """
        settings = self.settings
        allowed = settings.allowedOrigins
        if allowed and "*" not in allowed and origin.lower() not in allowed:
            self.countRefusal(ORIGIN_NOT_ALLOWED)
            raise ConnectionDeny(403, "origin not allowed")
        perAddress = settings.maxConnectionsPerIP
        if perAddress and self.addresses.get(address, 0) >= perAddress:
            self.countRefusal(TOO_MANY_FROM_ADDRESS)
            raise ConnectionDeny(429, "too many connections from this address")
        most = settings.maxClients
        if most and len(self.sessions) + self.elsewhereClients >= most:
            self.countRefusal(TOO_MANY_CLIENTS)
            raise ConnectionDeny(503, "too many clients")

    def countRefusal(self, reason: str) -> None:
        """
        Count one refused client under C{reason}.
        """
        self.refusals[reason] = self.refusals.get(reason, 0) + 1

    def addressOpened(self, address: str) -> None:
        """
        Count one more connected client from C{address}.
        """
        self.addresses[address] = self.addresses.get(address, 0) + 1

    def addressClosed(self, address: str) -> None:
        """
        Count one client from C{address} less; forget the address at 0.
        """
        left = self.addresses[address] - 1
        if left:
            self.addresses[address] = left
        else:
            del self.addresses[address]

    def connectionOpened(self, leg: WebSocketProtocol) -> None:
        """
        Track one more open connection (of either leg).
        """
        self.connections.add(leg)

    def connectionClosed(self, leg: WebSocketProtocol) -> None:
        """
        Forget a closed connection; wake L{closeAll} when none is left.
        """
        self.connections.discard(leg)
        if not self.connections and self._drained:
            waiting, self._drained = self._drained, []
            for d in waiting:
                d.callback(None)

    def closeAll(self, timeout: float) -> Deferred[None]:
        """
        Close every client with 1001 and its backend leg, and wait until all
        connections are gone or C{timeout} seconds have passed, after which
        the rest are cut.

        @return: a Deferred that fires when no connection is left.
        """
        for session in list(self.sessions):
            session.shutdown()
        if not self.connections:
            return succeed(None)
        drained: Deferred[None] = Deferred()
        self._drained.append(drained)
        clock: IReactorTime = self.reactor

        def cutTheRest() -> None:
            log.warn(
                "{count} connection(s) did not close in {timeout}s; cutting them",
                count=len(self.connections),
                timeout=timeout,
            )
            for leg in list(self.connections):
                leg.transport.abortConnection()  # type: ignore[attr-defined]

        deadline = clock.callLater(timeout, cutTheRest)
        drained.addBoth(lambda result: deadline.cancel() if deadline.active() else None)
        return drained
