"""
The demo backend's WebSocket side: the quote protocol, the factory that
broadcasts each tick's quotes, and L{makeBackendService}, which runs it with
its health port.

The protocol, as JSON text messages:

  - on open the server sends C{{"type": "welcome", "server": NAME,
    "symbols": [...]}}, the symbols it quotes;
  - the client sends C{{"type": "subscribe", "symbols": ["AAPL", ...]}} and
    the server answers C{{"type": "subscribed", "symbols": [...]}}; from the
    next tick on it sends C{{"type": "quote", "symbol", "price", "change",
    "volume", "ts", "seq", "server"}} for each of them, C{rate} times a
    second.  C{seq} numbers the backend's ticks (1, 2, ... from its start,
    the same for every symbol of a tick), so a client sees consecutive
    C{seq}s for a symbol unless it missed quotes (see backpressure below);
  - C{{"type": "unsubscribe", "symbols": [...]}} stops them, answered with
    C{{"type": "unsubscribed", "symbols": [...]}};
  - anything else (binary, not JSON, not an object, an unknown type, symbols
    that are not a non-empty list of known symbols) is answered with
    C{{"type": "error", "error": "..."}}, changes nothing, and leaves the
    connection open.

The quotes move at every tick, from the backend's start on, whether anyone
subscribes or not: like a market, every client of a backend sees the same
prices.  Each tick encodes each subscribed symbol's quote once, frames it once
(L{PreparedMessage <autobahn.websocket.protocol.PreparedMessage>}) and writes
the same bytes to every subscriber.

Backpressure: every connection registers itself as a streaming producer of
its transport.  When a slow client lets more than the transport's buffer
size (64 KiB) pile up, the transport pauses it; while paused the connection
skips quotes (counted in L{QuoteServerProtocol.skippedQuotes}) instead of
buffering them, and stops reading the client's messages so that replies
cannot pile up either.  Once the buffer drains the next tick's quotes flow
again.  A slow client thus misses quotes but never makes the backend buffer
without bound.
"""

from __future__ import annotations

import json
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import PreparedMessage
from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from wslb_twisted.demo.healthport import BackendHealth, makeHealthSite
from wslb_twisted.demo.quotes import (
    IQuoteSource,
    encodeMessage,
    normalizeSymbol,
    quoteMessage,
)

__all__ = [
    "CLOSE_TIMEOUT",
    "MAX_MESSAGE_SIZE",
    "BackendService",
    "QuoteServerFactory",
    "QuoteServerProtocol",
    "makeBackendService",
]

MAX_MESSAGE_SIZE = 64 * 1024
"""
The largest message, in bytes, a client may send; larger ones close the
connection with 1009.
"""

log = Logger()

CLOSE_TIMEOUT = 2.0
"""
Seconds the clients are given to complete their closing handshakes when the
backend stops, before their connections are cut.
"""


class _ClientError(Exception):
    """
    A client's message cannot be acted on; C{str()} of it is the error sent
    back.
    """


class QuoteServerProtocol(WebSocketServerProtocol):
    """
    One client of the quote backend.

    @ivar subscriptions: the symbols this client receives quotes for.
    @ivar paused: whether the transport's buffer is full, so that quotes are
        skipped.
    @ivar skippedQuotes: how many quotes were skipped while paused.
    """

    factory: QuoteServerFactory

    def __init__(self) -> None:
        super().__init__()
        self.subscriptions: set[str] = set()
        self.paused = False
        self.skippedQuotes = 0

    def onOpen(self) -> None:
        """
        Register for backpressure, join the clients and send the welcome.
        """
        self.registerProducer(self, True)
        self.factory.clientOpened(self)
        self.sendJSON(
            {
                "type": "welcome",
                "server": self.factory.name,
                "symbols": list(self.factory.symbols),
            }
        )

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """
        Act on a subscribe or unsubscribe, or answer an error.

        @param payload: the message.
        @param isBinary: whether it came in a binary frame.
        """
        try:
            reply = self._handle(payload, isBinary)
        except _ClientError as error:
            reply = {"type": "error", "error": str(error)}
        except Exception:
            log.failure("Could not handle a message from {peer}", peer=self.peer)
            reply = {"type": "error", "error": "internal error"}
        self.sendJSON(reply)

    def _handle(self, payload: bytes, isBinary: bool) -> dict[str, object]:
        if isBinary:
            raise _ClientError("binary messages are not supported; send JSON text")
        try:
            message = json.loads(payload)
        except ValueError:
            raise _ClientError("the message is not valid JSON") from None
        if not isinstance(message, dict):
            raise _ClientError("the message is not a JSON object")
        kind = message.get("type")
        if kind == "subscribe":
            symbols = self._symbols(message)
            self.factory.subscribe(self, symbols)
            return {"type": "subscribed", "symbols": symbols}
        if kind == "unsubscribe":
            symbols = self._symbols(message)
            self.factory.unsubscribe(self, symbols)
            return {"type": "unsubscribed", "symbols": symbols}
        raise _ClientError(
            f"unknown message type {_shortJSON(kind)}; "
            'expected "subscribe" or "unsubscribe"'
        )

    def _symbols(self, message: dict[str, Any]) -> list[str]:
        given = message.get("symbols")
        if not isinstance(given, list) or not given:
            raise _ClientError('"symbols" must be a non-empty list of symbols')
        symbols: list[str] = []
        unknown: list[str] = []
        for item in given:
            symbol = normalizeSymbol(item) if isinstance(item, str) else None
            if symbol is None or symbol not in self.factory.symbols:
                unknown.append(_shortJSON(item))
            elif symbol not in symbols:
                symbols.append(symbol)
        if unknown:
            raise _ClientError(
                f"unknown symbol{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(unknown)} (available: {', '.join(self.factory.symbols)})"
            )
        return symbols

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """
        Leave the clients and every subscription.
        """
        self.factory.clientClosed(self)

    def sendJSON(self, message: dict[str, object]) -> None:
        """
        Send a message to this client, if its connection is open.

        @param message: a JSON-serializable dict.
        """
        if self.state == self.STATE_OPEN:
            self.sendMessage(encodeMessage(message))

    def sendQuote(self, prepared: PreparedMessage) -> None:
        """
        Send an encoded quote, or skip it while the transport is paused.

        @param prepared: the framed quote, shared by every subscriber.
        """
        if self.state != self.STATE_OPEN:
            return
        if self.paused:
            self.skippedQuotes += 1
            return
        self.sendPreparedMessage(prepared)

    def pauseProducing(self) -> None:
        """
        The transport's buffer is full: skip quotes and stop reading until it
        drains.
        """
        self.paused = True
        if self.transport is not None:
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resumeProducing(self) -> None:
        """
        The transport's buffer drained: send quotes and read again.
        """
        self.paused = False
        if self.transport is not None:
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def stopProducing(self) -> None:
        """
        The connection is going away: send nothing more.
        """
        self.paused = True


def _shortJSON(value: object) -> str:
    shown = json.dumps(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return shown


class QuoteServerFactory(WebSocketServerFactory):
    """
    The quote backend's WebSocket factory: its clients, their subscriptions,
    and the tick that sends quotes.

    @ivar name: the backend's name, sent in every quote's C{server}.
    @ivar source: the L{IQuoteSource} of the quotes.
    @ivar clients: the open connections.
    @ivar subscribers: for each symbol, the connections subscribed to it.
    @ivar ticks: the ticks so far; the last one's number is each of its
        quotes' C{seq}.
    """

    protocol = QuoteServerProtocol  # type: ignore[assignment]
    noisy = False

    def __init__(self, source: IQuoteSource, name: str, clock: IReactorTime) -> None:
        """
        @param source: where the quotes come from.
        @param name: the backend's name.
        @param clock: provides C{seconds()} for the quotes' C{ts}.
        """
        super().__init__(server=None)
        self.setProtocolOptions(
            webStatus=False,
            maxMessagePayloadSize=MAX_MESSAGE_SIZE,
            maxFramePayloadSize=MAX_MESSAGE_SIZE,
        )
        self.name = name
        self.source = source
        self.clients: set[QuoteServerProtocol] = set()
        self.subscribers: dict[str, set[QuoteServerProtocol]] = {
            symbol: set() for symbol in source.symbols
        }
        self._clock = clock
        self.ticks = 0
        self._closeWaiters: list[Deferred[None]] = []

    @property
    def symbols(self) -> tuple[str, ...]:
        """
        The symbols quoted.
        """
        return tuple(self.source.symbols)

    def clientOpened(self, client: QuoteServerProtocol) -> None:
        """
        A client completed its handshake.

        @param client: its connection.
        """
        self.clients.add(client)

    def clientClosed(self, client: QuoteServerProtocol) -> None:
        """
        A client went away: forget it and its subscriptions.

        @param client: its connection.
        """
        self.unsubscribe(client, list(client.subscriptions))
        self.clients.discard(client)
        if not self.clients:
            waiters, self._closeWaiters = self._closeWaiters, []
            for waiter in waiters:
                waiter.callback(None)

    def subscribe(self, client: QuoteServerProtocol, symbols: list[str]) -> None:
        """
        Send a client the quotes of some symbols from the next tick on.

        @param client: its connection.
        @param symbols: known symbols.
        """
        for symbol in symbols:
            self.subscribers[symbol].add(client)
            client.subscriptions.add(symbol)

    def unsubscribe(self, client: QuoteServerProtocol, symbols: list[str]) -> None:
        """
        Stop sending a client the quotes of some symbols.

        @param client: its connection.
        @param symbols: known symbols, subscribed or not.
        """
        for symbol in symbols:
            self.subscribers[symbol].discard(client)
            client.subscriptions.discard(symbol)

    def tick(self) -> None:
        """
        Move every symbol one step and send each quote to its subscribers,
        encoded and framed once.  Never raises, as an exception would stop
        the timer for good.
        """
        try:
            self.ticks += 1
            quotes = self.source.nextQuotes()
            now = self._clock.seconds()
            for quote in quotes:
                subscribers = self.subscribers.get(quote.symbol)
                if not subscribers:
                    continue
                prepared = self.prepareMessage(
                    encodeMessage(quoteMessage(quote, self.name, now, self.ticks))
                )
                for client in list(subscribers):
                    client.sendQuote(prepared)
        except Exception:
            log.failure("Could not send quotes")

    def closeAll(self, reactor: IReactorTime, timeout: float) -> Deferred[None]:
        """
        Close every client with 1001 "going away".

        @param reactor: schedules the deadline.
        @param timeout: seconds allowed for the closing handshakes before the
            remaining connections are cut.
        @return: a L{Deferred} that fires once no client is left.
        """
        if not self.clients:
            return succeed(None)
        done: Deferred[None] = Deferred()
        self._closeWaiters.append(done)
        for client in list(self.clients):
            client.sendCloseFrame(code=1001, reasonUtf8=b"backend stopping")
        deadline = reactor.callLater(timeout, self._abortAll)
        done.addBoth(_cancelling, deadline)
        return done

    def _abortAll(self) -> None:
        for client in list(self.clients):
            if client.transport is not None:
                client.transport.abortConnection()  # type: ignore[attr-defined]


def _cancelling(result: object, call: Any) -> object:
    if call.active():
        call.cancel()
    return result


class _ClosingService(Service):
    """
    Closes every client with 1001 when the backend stops.
    """

    def __init__(self, factory: QuoteServerFactory, reactor: IReactorTime) -> None:
        self.factory = factory
        self.reactor = reactor

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.factory.closeAll(self.reactor, CLOSE_TIMEOUT)


class BackendService(MultiService):
    """
    A whole demo backend: the quote timer, the WebSocket port and the health
    port.  Stopping it stops listening and closes every client with 1001.

    @ivar factory: the WebSocket factory.
    @ivar rate: quotes per second per symbol.
    @ivar health: the health state and switch.
    @ivar ticker: the timer calling L{QuoteServerFactory.tick}.
    @ivar listener: listens for WebSocket clients; its C{port} is the
        listening port once started.
    @ivar healthListener: listens for health checks, likewise.
    """

    def __init__(
        self,
        port: str,
        healthPort: str,
        name: str,
        source: IQuoteSource,
        rate: float,
        failHealth: bool,
        reactor: Any,
        clock: IReactorTime,
    ) -> None:
        """
        See L{makeBackendService}, which fills in the defaults.
        """
        from wslb_twisted.service import ListeningService

        super().__init__()
        self.setName(f"wslb-backend {name}")
        self.factory = QuoteServerFactory(source, name, clock)
        self.health = BackendHealth(
            name, clock, lambda: len(self.factory.clients), failing=failHealth
        )
        self.rate = rate
        self.ticker = TimerService(1.0 / rate, self.factory.tick)
        self.ticker.clock = clock
        self.listener = ListeningService(port, "WebSocket port", self.factory, reactor)
        self.healthListener = ListeningService(
            healthPort, "health port", makeHealthSite(self.health), reactor
        )
        self.ticker.setServiceParent(self)
        _ClosingService(self.factory, reactor).setServiceParent(self)
        self.listener.setServiceParent(self)
        self.healthListener.setServiceParent(self)

    def startService(self) -> None:
        """
        Start quoting and listening, and say so.
        """
        log.info(
            "{name}: quoting {symbols} at {rate} per second per symbol",
            name=self.factory.name,
            symbols=", ".join(self.factory.symbols),
            rate=self.rate,
        )
        super().startService()


def makeBackendService(
    port: str,
    healthPort: str,
    name: str,
    source: IQuoteSource,
    rate: float = 2.0,
    failHealth: bool = False,
    reactor: Any = None,
    clock: IReactorTime | None = None,
) -> BackendService:
    """
    Build a demo backend.

    @param port: server endpoint string for WebSocket clients (C{tcp:3001}).
    @param healthPort: server endpoint string for the health port.
    @param name: the backend's name, in quotes and health answers.
    @param source: where the quotes come from.
    @param rate: quotes per second per symbol, positive.
    @param failHealth: whether C{/health} starts failing.
    @param reactor: the reactor to listen on; the global one when C{None}.
    @param clock: times the ticks and stamps the quotes and the uptime;
        C{reactor} when C{None}.
    @return: the service; it listens when it starts.
    @raise ValueError: when C{rate} is not positive.
    """
    if not rate > 0:
        raise ValueError(f"rate must be positive, not {rate!r}")
    if reactor is None:
        from twisted.internet import reactor
    return BackendService(
        port,
        healthPort,
        name,
        source,
        rate,
        failHealth,
        reactor,
        reactor if clock is None else clock,
    )
