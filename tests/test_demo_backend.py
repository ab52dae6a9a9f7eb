"""
Tests of the demo quote backend (C{twistd wslb-backend}): its WebSocket
protocol, the quote feed, the health port and its switches, and its
command line.

The backends listen on 127.0.0.1 ephemeral ports and are spoken to by real
Autobahn clients and HTTP requests; the quote ticks and timestamps run on a
L{Clock} that each test steps.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from helpers import RecordingClientFactory, connectClient
from twisted.internet.task import Clock
from twisted.python import usage

from wslb_twisted.demo.backend import BackendService, makeBackendService
from wslb_twisted.demo.backend_tap import Options, makeService
from wslb_twisted.demo.quotes import (
    CSVReplay,
    IQuoteSource,
    RandomWalk,
    readReplayFile,
)

REPO = Path(__file__).resolve().parent.parent
LOCAL = "tcp:0:interface=127.0.0.1"
SYMBOLS = ("AAPL", "MSFT", "GOOGL")
QUOTE_FIELDS = {"type", "symbol", "price", "change", "volume", "ts", "seq", "server"}
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
RECEIVE_TIMEOUT = 10
SUBPROCESS_TIMEOUT = 60


@dataclass
class RunningQuoteBackend:
    """
    A demo backend started in-process on 127.0.0.1 ephemeral ports, ticking
    on C{clock}.
    """

    service: BackendService
    clock: Clock

    @property
    def port(self) -> int:
        return int(self.service.listener.port.getHost().port)

    @property
    def healthPort(self) -> int:
        return int(self.service.healthListener.port.getHost().port)

    @property
    def interval(self) -> float:
        return float(self.service.ticker.step)

    def tick(self, count: int = 1) -> None:
        """
        Step the clock through C{count} quote intervals.
        """
        for _ in range(count):
            self.clock.advance(self.interval)

    def healthURL(self, path: str = "/health") -> str:
        return f"http://127.0.0.1:{self.healthPort}{path}"


StartBackend = Callable[..., RunningQuoteBackend]


@pytest_twisted.async_yield_fixture
async def startQuoteBackend() -> AsyncIterator[StartBackend]:
    """
    A function starting demo backends; all are stopped afterwards, which
    closes their clients.
    """
    started: list[RunningQuoteBackend] = []

    def start(
        source: IQuoteSource | None = None,
        name: str = "backend-test",
        seed: int = 0,
        **overrides: Any,
    ) -> RunningQuoteBackend:
        clock = Clock()
        service = makeBackendService(
            LOCAL,
            LOCAL,
            name,
            RandomWalk(SYMBOLS, seed) if source is None else source,
            clock=clock,
            **overrides,
        )
        service.privilegedStartService()
        service.startService()
        running = RunningQuoteBackend(service, clock)
        started.append(running)
        return running

    yield start
    for running in started:
        if running.service.running:
            await running.service.stopService()


async def receive(client: RecordingClientFactory) -> dict[str, Any]:
    """
    The next message the client receives, decoded; it must be JSON text.
    """
    from twisted.internet import reactor

    d = client.messages.get()
    d.addTimeout(RECEIVE_TIMEOUT, reactor)
    payload, isBinary = await d
    assert not isBinary
    message: dict[str, Any] = json.loads(payload)
    return message


async def connect(backend: RunningQuoteBackend) -> RecordingClientFactory:
    """
    Open a client to the backend and read its welcome.
    """
    client = connectClient(backend.port)
    await client.opened
    welcome = await receive(client)
    assert welcome["type"] == "welcome"
    return client


def send(client: RecordingClientFactory, message: object) -> None:
    """
    Send a message as JSON text.
    """
    assert client.protocolInstance is not None
    client.protocolInstance.sendMessage(json.dumps(message).encode())


async def request(
    client: RecordingClientFactory, message: object
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """
    Send a message and read up to its reply (the first message that is not
    a quote).

    @return: the quotes received before the reply, and the reply.
    """
    send(client, message)
    quotes: list[dict[str, Any]] = []
    while True:
        received = await receive(client)
        if received["type"] != "quote":
            return quotes, received
        quotes.append(received)


async def subscribe(client: RecordingClientFactory, *symbols: str) -> None:
    """
    Subscribe and wait until the backend confirms.
    """
    _, reply = await request(client, {"type": "subscribe", "symbols": list(symbols)})
    assert reply == {"type": "subscribed", "symbols": list(symbols)}


async def quotesUntilSynced(client: RecordingClientFactory) -> list[dict[str, Any]]:
    """
    Every quote the backend sent before now: a round trip marks the end, as
    a connection's messages arrive in order.
    """
    quotes, reply = await request(client, {"type": "unsubscribe", "symbols": ["AAPL"]})
    assert reply["type"] == "unsubscribed"
    return quotes


async def httpRequest(method: str, url: str) -> tuple[int, Any]:
    """
    An HTTP request over a fresh connection.

    @return: the status code and the decoded JSON body.
    """
    import treq

    response = await treq.request(method, url, persistent=False, timeout=10)
    body = await response.content()
    return response.code, json.loads(body)


# The protocol


@pytest_twisted.ensureDeferred
async def test_welcome(startQuoteBackend: StartBackend) -> None:
    """
    On open, the backend sends a welcome with its name and the symbols it
    quotes.
    """
    backend = startQuoteBackend(name="backend-7")
    client = connectClient(backend.port)
    await client.opened
    assert await receive(client) == {
        "type": "welcome",
        "server": "backend-7",
        "symbols": list(SYMBOLS),
    }


@pytest_twisted.ensureDeferred
async def test_subscribeReceivesQuotes(startQuoteBackend: StartBackend) -> None:
    """
    After subscribing to some symbols, a client receives one quote per
    subscribed symbol each tick, and none for the others; each quote has
    every field, the tick's timestamp and the backend's name.
    """
    backend = startQuoteBackend(name="backend-q")
    client = await connect(backend)
    await subscribe(client, "AAPL", "MSFT")
    backend.tick()
    quotes = [await receive(client), await receive(client)]
    assert sorted(quote["symbol"] for quote in quotes) == ["AAPL", "MSFT"]
    for quote in quotes:
        assert set(quote) == QUOTE_FIELDS
        assert quote["type"] == "quote"
        assert quote["server"] == "backend-q"
        assert quote["ts"] == "1970-01-01T00:00:00.500Z"
        assert TIMESTAMP.fullmatch(quote["ts"])
        # The first tick was at the backend's start.
        assert quote["seq"] == 2
        assert isinstance(quote["price"], float) and quote["price"] > 0
        assert isinstance(quote["change"], float)
        assert isinstance(quote["volume"], int) and quote["volume"] > 0
    assert await quotesUntilSynced(client) == []


@pytest_twisted.ensureDeferred
async def test_quotesAreNumberedByTick(startQuoteBackend: StartBackend) -> None:
    """
    A quote's C{seq} is the number of the tick that made it: the same for
    every symbol of a tick, one more at each tick, so that a client can tell
    it missed none.
    """
    backend = startQuoteBackend()
    client = await connect(backend)
    await subscribe(client, "AAPL", "MSFT")
    backend.tick(3)
    quotes = await quotesUntilSynced(client)
    assert [(q["seq"], q["symbol"]) for q in quotes] == [
        (2, "AAPL"),
        (2, "MSFT"),
        (3, "AAPL"),
        (3, "MSFT"),
        (4, "AAPL"),
        (4, "MSFT"),
    ]


@pytest_twisted.ensureDeferred
async def test_subscribeIsCaseInsensitive(startQuoteBackend: StartBackend) -> None:
    """
    Symbols are matched regardless of case, and confirmed in upper case.
    """
    backend = startQuoteBackend()
    client = await connect(backend)
    _, reply = await request(client, {"type": "subscribe", "symbols": ["aapl"]})
    assert reply == {"type": "subscribed", "symbols": ["AAPL"]}


@pytest_twisted.ensureDeferred
async def test_unsubscribeStopsQuotes(startQuoteBackend: StartBackend) -> None:
    """
    After unsubscribing from a symbol, a client receives no more quotes for
    it, and still receives those of its other subscriptions.
    """
    backend = startQuoteBackend()
    client = await connect(backend)
    await subscribe(client, "AAPL", "MSFT")
    _, reply = await request(client, {"type": "unsubscribe", "symbols": ["MSFT"]})
    assert reply == {"type": "unsubscribed", "symbols": ["MSFT"]}
    backend.tick(3)
    quotes = await quotesUntilSynced(client)
    assert [quote["symbol"] for quote in quotes] == ["AAPL"] * 3


MALFORMED = [
    pytest.param(b"not json", "the message is not valid JSON", id="not-json"),
    pytest.param(b"[1, 2]", "the message is not a JSON object", id="array"),
    pytest.param(b'"subscribe"', "the message is not a JSON object", id="string"),
    pytest.param(
        b'{"type": "buy", "symbols": ["AAPL"]}',
        'unknown message type "buy"; expected "subscribe" or "unsubscribe"',
        id="unknown-type",
    ),
    pytest.param(
        b'{"symbols": ["AAPL"]}',
        'unknown message type null; expected "subscribe" or "unsubscribe"',
        id="no-type",
    ),
    pytest.param(
        b'{"type": "subscribe"}',
        '"symbols" must be a non-empty list of symbols',
        id="no-symbols",
    ),
    pytest.param(
        b'{"type": "subscribe", "symbols": "AAPL"}',
        '"symbols" must be a non-empty list of symbols',
        id="symbols-not-list",
    ),
    pytest.param(
        b'{"type": "subscribe", "symbols": []}',
        '"symbols" must be a non-empty list of symbols',
        id="no-symbol",
    ),
    pytest.param(
        b'{"type": "subscribe", "symbols": [42, {"a": 1}]}',
        'unknown symbols 42, {"a": 1} (available: AAPL, MSFT, GOOGL)',
        id="symbols-not-text",
    ),
    pytest.param(
        b'{"type": "unsubscribe", "symbols": ["NOPE"]}',
        'unknown symbol "NOPE" (available: AAPL, MSFT, GOOGL)',
        id="unsubscribe-unknown",
    ),
]


@pytest.mark.parametrize(("payload", "error"), MALFORMED)
@pytest_twisted.ensureDeferred
async def test_malformedMessage(
    startQuoteBackend: StartBackend, payload: bytes, error: str
) -> None:
    """
    A malformed message is answered with an error saying what is wrong, and
    the connection stays open and keeps working.
    """
    backend = startQuoteBackend()
    client = await connect(backend)
    assert client.protocolInstance is not None
    client.protocolInstance.sendMessage(payload)
    assert await receive(client) == {"type": "error", "error": error}
    await subscribe(client, "GOOGL")
    backend.tick()
    assert (await receive(client))["symbol"] == "GOOGL"


@pytest_twisted.ensureDeferred
async def test_binaryMessage(startQuoteBackend: StartBackend) -> None:
    """
    A binary message is answered with an error, and the connection stays
    open and keeps working.
    """
    backend = startQuoteBackend()
    client = await connect(backend)
    assert client.protocolInstance is not None
    client.protocolInstance.sendMessage(b'{"type": "subscribe"}', isBinary=True)
    assert await receive(client) == {
        "type": "error",
        "error": "binary messages are not supported; send JSON text",
    }
    await subscribe(client, "AAPL")
    backend.tick()
    assert (await receive(client))["symbol"] == "AAPL"


@pytest_twisted.ensureDeferred
async def test_unknownSymbolSubscribesNothing(startQuoteBackend: StartBackend) -> None:
    """
    A subscription naming an unknown symbol is refused as a whole: the known
    symbols in it are not subscribed either.
    """
    backend = startQuoteBackend()
    client = await connect(backend)
    _, reply = await request(client, {"type": "subscribe", "symbols": ["AAPL", "XYZ"]})
    assert reply["type"] == "error"
    assert reply["error"].startswith('unknown symbol "XYZ"')
    backend.tick(2)
    assert await quotesUntilSynced(client) == []


@pytest_twisted.ensureDeferred
async def test_rate(startQuoteBackend: StartBackend) -> None:
    """
    With C{rate=4}, one second brings exactly four quotes per subscribed
    symbol, a quarter of a second apart.
    """
    backend = startQuoteBackend(rate=4)
    client = await connect(backend)
    await subscribe(client, "AAPL", "MSFT")
    for _ in range(8):
        backend.clock.advance(0.125)
    quotes = await quotesUntilSynced(client)
    for symbol in ("AAPL", "MSFT"):
        stamps = [quote["ts"] for quote in quotes if quote["symbol"] == symbol]
        assert stamps == [
            "1970-01-01T00:00:00.250Z",
            "1970-01-01T00:00:00.500Z",
            "1970-01-01T00:00:00.750Z",
            "1970-01-01T00:00:01.000Z",
        ]
    assert len(quotes) == 8


async def _prices(backend: RunningQuoteBackend, ticks: int) -> list[tuple[Any, ...]]:
    client = await connect(backend)
    await subscribe(client, *SYMBOLS)
    backend.tick(ticks)
    quotes = await quotesUntilSynced(client)
    return [(q["symbol"], q["price"], q["change"], q["volume"]) for q in quotes]


@pytest_twisted.ensureDeferred
async def test_seedReproducible(startQuoteBackend: StartBackend) -> None:
    """
    Two backends started with the same seed quote the same sequence of
    prices, changes and volumes.
    """
    first = await _prices(startQuoteBackend(seed=1234), 6)
    second = await _prices(startQuoteBackend(seed=1234), 6)
    assert len(first) == 6 * len(SYMBOLS)
    assert first == second


def test_seedsDiffer() -> None:
    """
    Different seeds give different walks.
    """
    first = [RandomWalk(SYMBOLS, 1).nextQuotes() for _ in range(5)]
    second = [RandomWalk(SYMBOLS, 2).nextQuotes() for _ in range(5)]
    assert first != second


def test_walkIndependentOfOtherSymbols() -> None:
    """
    A symbol's walk depends on the seed only, not on which other symbols are
    quoted alongside it.
    """
    alone = RandomWalk(["MSFT"], 5)
    together = RandomWalk(["AAPL", "MSFT", "TSLA"], 5)
    for _ in range(10):
        assert alone.nextQuotes()[0] == together.nextQuotes()[1]


@pytest_twisted.ensureDeferred
async def test_changeIsPriceDifference(startQuoteBackend: StartBackend) -> None:
    """
    Each quote's change is its price minus the symbol's previous price.
    """
    prices = await _prices(startQuoteBackend(), 5)
    aapl = [(price, change) for symbol, price, change, _ in prices if symbol == "AAPL"]
    for (previous, _), (price, change) in zip(aapl, aapl[1:]):
        assert change == round(price - previous, 2)


@pytest_twisted.ensureDeferred
async def test_quoteEncodedOncePerTick(
    startQuoteBackend: StartBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A tick encodes and frames each quote once, however many clients
    subscribe to its symbol, and every subscriber receives the same bytes.
    """
    backend = startQuoteBackend()
    clients = [await connect(backend) for _ in range(3)]
    for client in clients:
        await subscribe(client, "AAPL")
    prepared: list[bytes] = []
    factory = backend.service.factory
    original = factory.prepareMessage

    def counting(payload: bytes, *args: Any, **kwargs: Any) -> Any:
        prepared.append(payload)
        return original(payload, *args, **kwargs)

    monkeypatch.setattr(factory, "prepareMessage", counting)
    backend.tick()
    assert len(prepared) == 1
    for client in clients:
        payload, _ = await client.messages.get()
        assert payload == prepared[0]


@pytest_twisted.ensureDeferred
async def test_slowClientSkipsQuotes(startQuoteBackend: StartBackend) -> None:
    """
    When quotes are produced faster than a client's connection carries them,
    the backend buffers at most about its transport's buffer size for it and
    skips the rest; once the buffer drains, quotes flow again.
    """
    from helpers import waitUntil

    backend = startQuoteBackend()
    client = await connect(backend)
    await subscribe(client, *SYMBOLS)
    (server,) = backend.service.factory.clients
    ticks = 5000
    for _ in range(ticks):
        # No reactor turn in between: nothing reaches the socket meanwhile.
        backend.service.factory.tick()
    produced = ticks * len(SYMBOLS)
    assert server.paused
    buffered = produced - server.skippedQuotes
    assert 0 < buffered < 1000
    await waitUntil(lambda: not server.paused)
    backend.service.factory.tick()
    quotes, reply = await request(client, {"type": "unsubscribe", "symbols": ["AAPL"]})
    assert reply["type"] == "unsubscribed"
    assert len(quotes) == buffered + len(SYMBOLS)
    assert server.skippedQuotes == produced - buffered


@pytest_twisted.ensureDeferred
async def test_replay(startQuoteBackend: StartBackend, tmp_path: Path) -> None:
    """
    A backend replaying a CSV file sends each symbol's rows in file order,
    one per tick from its start, with the change from the row before, and
    starts over after the last.
    """
    replay = tmp_path / "quotes.csv"
    replay.write_text(
        "symbol,price,volume\n"
        "AAPL,100.00,10\n"
        "MSFT,300.50,20\n"
        "AAPL,101.25,30\n"
        "\n"
        "AAPL,99.75,40\n"
    )
    backend = startQuoteBackend(source=CSVReplay(readReplayFile(str(replay))))
    client = connectClient(backend.port)
    await client.opened
    assert (await receive(client))["symbols"] == ["AAPL", "MSFT"]
    await subscribe(client, "AAPL")
    backend.tick(4)
    quotes = await quotesUntilSynced(client)
    # The first row went to the tick at start, before anyone subscribed.
    assert [(q["price"], q["change"], q["volume"]) for q in quotes] == [
        (101.25, 1.25, 30),
        (99.75, -1.5, 40),
        (100.0, 0.25, 10),
        (101.25, 1.25, 30),
    ]


def test_replayWithoutVolume(tmp_path: Path) -> None:
    """
    A replay file may leave out the volume column (volume 0) and the header.
    """
    replay = tmp_path / "quotes.csv"
    replay.write_text("tsla, 250.5\nTSLA,251\n")
    source = CSVReplay(readReplayFile(str(replay)))
    assert source.symbols == ("TSLA",)
    assert [(q.price, q.change, q.volume) for q in source.nextQuotes()] == [
        (250.5, 0.0, 0)
    ]
    assert [(q.price, q.change) for q in source.nextQuotes()] == [(251.0, 0.5)]


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ("", "has no quotes"),
        ("AAPL\n", "line 1: expected symbol,price[,volume]"),
        ("AAPL,abc\n", "line 1: price 'abc' is not a positive number"),
        ("AAPL,1,2\nMSFT,-5\n", "line 2: price '-5' is not a positive number"),
        ("AAPL,1,many\n", "line 1: volume 'many' is not a whole number >= 0"),
        ("1AB,1\n", "line 1: '1AB' is not a ticker symbol"),
    ],
)
def test_badReplayFile(tmp_path: Path, content: str, error: str) -> None:
    """
    A bad replay file is refused with the file, the line and what is wrong.
    """
    replay = tmp_path / "quotes.csv"
    replay.write_text(content)
    with pytest.raises(ValueError) as raised:
        readReplayFile(str(replay))
    assert str(replay) in str(raised.value)
    assert error in str(raised.value)


@pytest_twisted.ensureDeferred
async def test_stopClosesClients(startQuoteBackend: StartBackend) -> None:
    """
    Stopping the backend closes its clients with 1001 "going away".
    """
    backend = startQuoteBackend()
    client = await connect(backend)
    await backend.service.stopService()
    wasClean, code, _ = await client.closed
    assert (wasClean, code) == (True, 1001)


# The health port


@pytest_twisted.ensureDeferred
async def test_healthReportsClients(startQuoteBackend: StartBackend) -> None:
    """
    C{GET /health} answers 200 with status ok, the name, the uptime by the
    clock and the number of connected clients.
    """
    backend = startQuoteBackend(name="backend-h")
    for _ in range(2):
        await connect(backend)
    backend.clock.advance(12.5)
    code, body = await httpRequest("GET", backend.healthURL())
    assert code == 200
    assert body == {"status": "ok", "name": "backend-h", "uptime": 12.5, "clients": 2}


@pytest_twisted.ensureDeferred
async def test_healthCountsClosedClientsOut(startQuoteBackend: StartBackend) -> None:
    """
    A client that leaves is no longer counted by C{/health}.
    """
    backend = startQuoteBackend()
    client = await connect(backend)
    assert client.protocolInstance is not None
    client.protocolInstance.sendClose(1000)
    await client.closed
    code, body = await httpRequest("GET", backend.healthURL())
    assert (code, body["clients"]) == (200, 0)


@pytest_twisted.ensureDeferred
async def test_fail(startQuoteBackend: StartBackend) -> None:
    """
    C{POST /fail} answers 200 with the failing state, and from then on
    C{GET /health} answers 503 with status failing.
    """
    backend = startQuoteBackend(name="backend-f")
    code, body = await httpRequest("POST", backend.healthURL("/fail"))
    assert (code, body["status"], body["name"]) == (200, "failing", "backend-f")
    code, body = await httpRequest("GET", backend.healthURL())
    assert code == 503
    assert body == {
        "status": "failing",
        "name": "backend-f",
        "uptime": 0.0,
        "clients": 0,
    }


@pytest_twisted.ensureDeferred
async def test_recover(startQuoteBackend: StartBackend) -> None:
    """
    C{POST /recover} answers 200 with the healthy state, and from then on
    C{GET /health} answers 200 again.
    """
    backend = startQuoteBackend()
    await httpRequest("POST", backend.healthURL("/fail"))
    code, body = await httpRequest("POST", backend.healthURL("/recover"))
    assert (code, body["status"]) == (200, "ok")
    code, body = await httpRequest("GET", backend.healthURL())
    assert (code, body["status"]) == (200, "ok")


@pytest_twisted.ensureDeferred
async def test_failingKeepsServing(startQuoteBackend: StartBackend) -> None:
    """
    A failing backend still serves its WebSocket clients: failing is only
    what C{/health} reports.
    """
    backend = startQuoteBackend(failHealth=True)
    client = await connect(backend)
    await subscribe(client, "MSFT")
    backend.tick()
    assert (await receive(client))["symbol"] == "MSFT"


@pytest.mark.parametrize(
    ("method", "path", "code"),
    [
        ("GET", "/", 404),
        ("GET", "/healthz", 404),
        ("GET", "/health/deeper", 404),
        ("POST", "/nothing", 404),
        ("GET", "/fail", 405),
        ("POST", "/health", 405),
    ],
)
@pytest_twisted.ensureDeferred
async def test_healthOtherRequests(
    startQuoteBackend: StartBackend, method: str, path: str, code: int
) -> None:
    """
    Other paths answer a JSON 404, and other methods on the known paths a
    JSON 405, without switching the health.
    """
    backend = startQuoteBackend()
    answered, body = await httpRequest(method, backend.healthURL(path))
    assert answered == code
    assert "error" in body
    answered, body = await httpRequest("GET", backend.healthURL())
    assert (answered, body["status"]) == (200, "ok")


@pytest_twisted.ensureDeferred
async def test_failHealthOption() -> None:
    """
    A backend started with C{--fail-health} answers C{/health} with 503 from
    the start.
    """
    options = Options()
    options.parseOptions(
        ["--port", LOCAL, "--health-port", LOCAL, "--name", "sick", "--fail-health"]
    )
    service = makeService(options)
    assert isinstance(service, BackendService)
    service.privilegedStartService()
    service.startService()
    try:
        port = service.healthListener.port.getHost().port
        code, body = await httpRequest("GET", f"http://127.0.0.1:{port}/health")
        assert (code, body["status"], body["name"]) == (503, "failing", "sick")
    finally:
        await service.stopService()


# The command line


def parse(*arguments: str) -> Options:
    """
    Parse C{twistd wslb-backend} options.
    """
    options = Options()
    options.parseOptions(list(arguments))
    return options


def test_optionDefaults() -> None:
    """
    By default the backend listens on 3001, its health port on 4001, is
    named after its port, quotes five symbols twice a second, and is
    healthy.
    """
    settings = parse().settings
    assert (settings.port, settings.healthPort) == ("tcp:3001", "tcp:4001")
    assert settings.name == "backend-3001"
    assert settings.rate == 2.0
    assert settings.failHealth is False
    assert settings.source.symbols == ("AAPL", "MSFT", "GOOGL", "AMZN", "TSLA")


@pytest.mark.parametrize(
    ("arguments", "port", "healthPort"),
    [
        (["--port", "3002"], "tcp:3002", "tcp:4002"),
        (["--port", "3002", "--health-port", "5000"], "tcp:3002", "tcp:5000"),
        (
            ["--port", "3003", "--interface", "127.0.0.1"],
            "tcp:3003:interface=127.0.0.1",
            "tcp:4003:interface=127.0.0.1",
        ),
        (
            ["--port", "3003", "--interface", "::1"],
            "tcp:3003:interface=\\:\\:1",
            "tcp:4003:interface=\\:\\:1",
        ),
        (
            ["--port", "tcp:3005:interface=127.0.0.1"],
            "tcp:3005:interface=127.0.0.1",
            "tcp:4005:interface=127.0.0.1",
        ),
        (["--port", "tcp6:3006"], "tcp6:3006", "tcp6:4006:interface=\\:\\:"),
        (["--port", LOCAL], LOCAL, LOCAL),
    ],
)
def test_healthPortOption(arguments: list[str], port: str, healthPort: str) -> None:
    """
    The health port is the one given, or else the WebSocket port + 1000 on
    the same interface; a port given as a number listens on C{--interface}.
    """
    settings = parse(*arguments).settings
    assert (settings.port, settings.healthPort) == (port, healthPort)


def test_symbolsAndSeedOptions() -> None:
    """
    C{--symbols} and C{--seed} choose the random walk's symbols and seed.
    """
    source = parse("--symbols", "tsla, nvda,TSLA", "--seed", "9").settings.source
    assert isinstance(source, RandomWalk)
    assert (source.symbols, source.seed) == (("TSLA", "NVDA"), 9)


def test_replayOptionSelectsSymbols(tmp_path: Path) -> None:
    """
    With C{--replay}, C{--symbols} selects among the file's symbols.
    """
    replay = tmp_path / "quotes.csv"
    replay.write_text("AAPL,1\nMSFT,2\nTSLA,3\n")
    settings = parse("--replay", str(replay), "--symbols", "TSLA,AAPL").settings
    assert settings.source.symbols == ("TSLA", "AAPL")


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        (["--port", "http"], "--port='http' is not a port number in 1-65535"),
        (["--port", "70000"], "--port='70000' is not a port number in 1-65535"),
        (["--port", "65000"], "--port='65000' has port 65000, so its health port"),
        (["--health-port", "0"], "--health-port='0' is not a port number"),
        (["--port", "unix:/tmp/b.sock"], "--port='unix:/tmp/b.sock' has no port"),
        (["--interface", "localhost"], "--interface='localhost' is not an IP"),
        (
            ["--port", "tcp:3001", "--interface", "127.0.0.1"],
            "--port='tcp:3001' is an endpoint string, which --interface",
        ),
        (["--rate", "0"], "--rate='0' is not a number of quotes per second"),
        (["--rate", "fast"], "--rate='fast' is not a number"),
        (["--rate", "nan"], "--rate='nan' is not a number"),
        (["--seed", "1.5"], "--seed='1.5' is not an integer"),
        (["--symbols", "AAPL,,MSFT"], "--symbols='AAPL,,MSFT' has '', which is not"),
        (["--name", " "], "--name=' ' is not a name"),
        (["--replay", "/nonexistent.csv"], "--replay: /nonexistent.csv cannot be read"),
    ],
)
def test_badOption(arguments: list[str], error: str) -> None:
    """
    A bad option value is refused with a usage error naming the option and
    the value.
    """
    with pytest.raises(usage.UsageError) as raised:
        parse(*arguments)
    assert error in str(raised.value)
    assert "\n" not in str(raised.value)


def test_replayOptionUnknownSymbol(tmp_path: Path) -> None:
    """
    C{--symbols} naming a symbol the replay file lacks is refused.
    """
    replay = tmp_path / "quotes.csv"
    replay.write_text("AAPL,1\n")
    with pytest.raises(usage.UsageError) as raised:
        parse("--replay", str(replay), "--symbols", "MSFT")
    assert str(raised.value) == (
        "--replay: the replay file has no quotes for MSFT (it has AAPL)"
    )


def twistdCommand() -> list[str]:
    """
    The twistd of the Python running the tests: the script beside
    C{sys.executable}, or the module when there is none.
    """
    script = Path(sys.executable).with_name("twistd")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def twistdEnvironment() -> dict[str, str]:
    """
    The environment with this checkout first on the path.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    return env


@pytest.mark.parametrize(
    ("arguments", "sentence"),
    [
        (["--rate", "-1"], "--rate='-1' is not a number of quotes per second"),
        (["--port", "nope"], "--port='nope' is not a port number in 1-65535"),
    ],
)
def test_twistdBadOption(tmp_path: Path, arguments: list[str], sentence: str) -> None:
    """
    C{twistd -n wslb-backend} with a bad option value exits non-zero with a
    usage error naming it, and no traceback.
    """
    result = subprocess.run(
        [*twistdCommand(), "--pidfile=", "-n", "wslb-backend", *arguments],
        cwd=tmp_path,
        env=twistdEnvironment(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert sentence in output, output
    assert "Traceback" not in output, output


def _freePort() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_twistdRuns(tmp_path: Path) -> None:
    """
    C{twistd -n wslb-backend} serves C{/health} on the health port given,
    under the name given, and stops cleanly on SIGTERM.
    """
    port, healthPort = _freePort(), _freePort()
    process = subprocess.Popen(
        [
            *twistdCommand(),
            "--pidfile=",
            "-n",
            "wslb-backend",
            "--port",
            str(port),
            "--health-port",
            str(healthPort),
            "--interface",
            "127.0.0.1",
            "--name",
            "from-twistd",
        ],
        cwd=tmp_path,
        env=twistdEnvironment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        body = _pollHealth(f"http://127.0.0.1:{healthPort}/health", process)
        assert (body["status"], body["name"]) == ("ok", "from-twistd")
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=SUBPROCESS_TIMEOUT)
    # twistd ends by re-raising the signal it stopped on.
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "Server Shut Down." in output, output
    assert "Traceback" not in output, output


def _pollHealth(url: str, process: subprocess.Popen[str]) -> Any:
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"twistd exited: {process.communicate()[0]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {SUBPROCESS_TIMEOUT}s")
