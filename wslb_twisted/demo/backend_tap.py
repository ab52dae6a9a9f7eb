"""
The C{twistd wslb-backend} command: the demo quote backend's options and
the service it runs.

Named by the C{wslb-backend} service maker in
C{twisted/plugins/wslb_plugin.py}.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass

from twisted.application.service import IService
from twisted.python import usage

from wslb_twisted.config import ConfigError, _endpointPort, _Given, _parseListenPort
from wslb_twisted.demo.quotes import (
    DEFAULT_SYMBOLS,
    CSVReplay,
    IQuoteSource,
    RandomWalk,
    normalizeSymbol,
    readReplayFile,
)

__all__ = ["BackendSettings", "Options", "makeService"]

HEALTH_PORT_OFFSET = 1000
"""
Without C{--health-port}, the health port is the WebSocket port plus this.
"""

MAX_RATE = 1000.0
"""
The highest C{--rate} accepted, in quotes per second per symbol.
"""


@dataclass(frozen=True)
class BackendSettings:
    """
    Everything a demo backend is configured with, validated.

    @ivar port: server endpoint string for WebSocket clients.
    @ivar healthPort: server endpoint string for the health port.
    @ivar name: the backend's name.
    @ivar rate: quotes per second per symbol.
    @ivar failHealth: whether C{/health} starts failing.
    @ivar source: where the quotes come from.
    """

    port: str
    healthPort: str
    name: str
    rate: float
    failHealth: bool
    source: IQuoteSource


class Options(usage.Options):
    """
    Options of C{twistd wslb-backend}.

    @ivar settings: the settings worked out in L{postOptions}.
    """

    settings: BackendSettings

    synopsis = "[options]"
    longdesc = (
        "Run a demo WebSocket backend streaming synthetic stock quotes. "
        'Clients send {"type": "subscribe", "symbols": ["AAPL"]} and receive '
        '{"type": "quote", ...} messages.  GET /health on the health port '
        "reports it; POST /fail and POST /recover switch that report."
    )

    optParameters = [
        [
            "port",
            None,
            "3001",
            "WebSocket port number or server endpoint string, such as "
            "tcp:3001:interface=127.0.0.1.",
        ],
        [
            "health-port",
            None,
            None,
            "Health port number or server endpoint string "
            "[default: the WebSocket port + 1000, on the same interface].",
        ],
        [
            "interface",
            None,
            None,
            "Address to listen on when a port is given as a number [default: all].",
        ],
        [
            "name",
            None,
            None,
            "Name in quotes and health answers [default: backend-PORT].",
        ],
        ["rate", None, "2", "Quotes per second per symbol."],
        ["seed", None, "0", "Seed of the random walk; the same seed, the same prices."],
        [
            "symbols",
            None,
            None,
            "Comma-separated symbols to quote "
            f"[default: {','.join(DEFAULT_SYMBOLS)}; with --replay, the file's].",
        ],
        [
            "replay",
            None,
            None,
            "Replay quotes from this CSV file (symbol,price[,volume] rows, "
            "looping) instead of the random walk.",
        ],
    ]
    optFlags = [["fail-health", None, "Start with GET /health failing (503)."]]

    def postOptions(self) -> None:
        """
        Validate the options into L{settings}.

        @raise usage.UsageError: naming the bad option and value, which twistd
            prints without a traceback.
        """
        try:
            self.settings = _settingsFrom(self)
        except ConfigError as error:
            raise usage.UsageError(str(error)) from None


def _settingsFrom(options: usage.Options) -> BackendSettings:
    interface = _parseInterface(options["interface"])
    port, portNumber = _listenPort(_Given("--port", options["port"]), interface)
    if options["health-port"] is not None:
        given = _Given("--health-port", options["health-port"])
        healthPort, _ = _listenPort(given, interface)
    else:
        healthPort = _derivedHealthPort(_Given("--port", options["port"]), port)
    if options["name"] is not None:
        name = _parseName(_Given("--name", options["name"]))
    else:
        name = f"backend-{portNumber}" if portNumber else "backend"
    return BackendSettings(
        port=port,
        healthPort=healthPort,
        name=name,
        rate=_parseRate(_Given("--rate", options["rate"])),
        failHealth=bool(options["fail-health"]),
        source=_sourceFrom(options),
    )


def _parseInterface(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise _Given("--interface", value).bad("is not an IP address") from None


def _listenPort(given: _Given, interface: str | None) -> tuple[str, int | None]:
    """
    Validate a port option into an endpoint string, on C{interface} if the
    option is a bare number.

    @return: the endpoint string and its port number, if it has one.
    """
    endpoint = _parseListenPort(given)
    bare = given.value.strip().isdigit()
    if interface is not None:
        if not bare:
            raise given.bad(
                "is an endpoint string, which --interface does not apply to; "
                "put interface= in it instead"
            )
        endpoint += ":interface=" + interface.replace(":", "\\:")
    return endpoint, _portOf(endpoint)


def _portOf(endpoint: str) -> int | None:
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    return _endpointPort(serverFromString(reactor, endpoint))


def _derivedHealthPort(given: _Given, endpoint: str) -> str:
    """
    The default health port: a plain TCP endpoint on the WebSocket port's
    interface and its port number plus L{HEALTH_PORT_OFFSET} (any free port
    when the WebSocket port is 0).
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP6ServerEndpoint, serverFromString

    listening: object = serverFromString(reactor, endpoint)
    while hasattr(listening, "_wrappedEndpoint"):
        listening = listening._wrappedEndpoint
    port = _endpointPort(listening)
    if port is None:
        raise given.bad(
            "has no port number to derive a health port; give --health-port"
        )
    healthPort = port + HEALTH_PORT_OFFSET if port else 0
    if healthPort > 65535:
        raise given.bad(
            f"has port {port}, so its health port {healthPort} would be out of "
            "range; give --health-port"
        )
    kind = "tcp6" if isinstance(listening, TCP6ServerEndpoint) else "tcp"
    derived = f"{kind}:{healthPort}"
    interface = getattr(listening, "_interface", "")
    if interface and isinstance(interface, str):
        derived += ":interface=" + interface.replace(":", "\\:")
    return derived


def _parseName(given: _Given) -> str:
    name = given.value.strip()
    if not name or not name.isprintable() or len(name) > 64:
        raise given.bad("is not a name (1 to 64 printable characters)")
    return name


def _parseRate(given: _Given) -> float:
    try:
        rate = float(given.value)
    except ValueError:
        rate = math.nan
    if not (math.isfinite(rate) and 0 < rate <= MAX_RATE):
        raise given.bad(
            f"is not a number of quotes per second above 0 and at most {MAX_RATE:g}"
        )
    return rate


def _parseSeed(given: _Given) -> int:
    try:
        return int(given.value.strip())
    except ValueError:
        raise given.bad("is not an integer") from None


def _parseSymbols(given: _Given) -> list[str]:
    symbols: list[str] = []
    for item in given.value.split(","):
        symbol = normalizeSymbol(item)
        if symbol is None:
            raise given.bad(
                f"has {item.strip()!r}, which is not a ticker symbol (1 to 10 "
                "letters, digits, dots or dashes, starting with a letter)"
            )
        if symbol not in symbols:
            symbols.append(symbol)
    return symbols


def _sourceFrom(options: usage.Options) -> IQuoteSource:
    symbols = None
    if options["symbols"] is not None:
        symbols = _parseSymbols(_Given("--symbols", options["symbols"]))
    seed = _parseSeed(_Given("--seed", options["seed"]))
    if options["replay"] is None:
        return RandomWalk(DEFAULT_SYMBOLS if symbols is None else symbols, seed)
    try:
        return CSVReplay(readReplayFile(options["replay"]), symbols)
    except ValueError as error:
        raise ConfigError(f"--replay: {error}") from None


def makeService(options: Options) -> IService:
    """
    Make the demo backend's service from parsed options.

    @param options: the parsed L{Options}.
    @return: the service twistd runs.
    """
    from wslb_twisted.demo.backend import makeBackendService

    settings = options.settings
    return makeBackendService(
        settings.port,
        settings.healthPort,
        settings.name,
        settings.source,
        rate=settings.rate,
        failHealth=settings.failHealth,
    )
