"""
Where the demo backend's quotes come from, and the quote message.

A quote source provides L{IQuoteSource}: each call of
L{IQuoteSource.nextQuotes} moves every symbol one step and returns one
L{Quote} per symbol.  Two sources ship:

  - L{RandomWalk}: synthetic prices, each symbol following its own random
    walk seeded from the seed and the symbol, so a run is reproducible and a
    symbol's prices do not depend on which other symbols are served;
  - L{CSVReplay}: the rows of a C{symbol,price[,volume]} file, each symbol's
    rows in file order, starting over at the end.

Nothing here reads the clock or touches the network.
"""

from __future__ import annotations

import csv
import json
import math
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from zope.interface import Attribute, Interface, implementer

__all__ = [
    "DEFAULT_SYMBOLS",
    "CSVReplay",
    "IQuoteSource",
    "Quote",
    "RandomWalk",
    "ReplayRow",
    "encodeMessage",
    "isoTimestamp",
    "normalizeSymbol",
    "parseReplayRows",
    "quoteMessage",
    "readReplayFile",
]

DEFAULT_SYMBOLS: tuple[str, ...] = ("AAPL", "MSFT", "GOOGL", "AMZN", "TSLA")
"""
The symbols served when none are given.
"""

_SYMBOL = re.compile(r"[A-Z][A-Z0-9.\-]{0,9}")

_VOLATILITY = 0.002
"""
Standard deviation of one step of the random walk, relative to the price.
"""


def normalizeSymbol(text: str) -> str | None:
    """
    Make a ticker symbol canonical.

    @param text: a symbol as written by an operator or a client: C{"aapl"}.
    @return: the symbol in upper case (C{"AAPL"}), or C{None} if it is not a
        symbol: 1 to 10 letters, digits, dots or dashes, starting with a
        letter.
    """
    symbol = text.strip().upper()
    if _SYMBOL.fullmatch(symbol) is None:
        return None
    return symbol


@dataclass(frozen=True)
class Quote:
    """
    One price of one symbol.

    @ivar symbol: the ticker symbol, such as C{"AAPL"}.
    @ivar price: the price, rounded to cents.
    @ivar change: the price minus the symbol's previous price (0.0 for its
        first quote), rounded to cents.
    @ivar volume: the shares traded at this step.
    """

    symbol: str
    price: float
    change: float
    volume: int


class IQuoteSource(Interface):
    """
    Produces quotes, one per symbol per step.
    """

    symbols = Attribute(
        "The symbols this source quotes, as a tuple of text, in the order "
        "L{nextQuotes} returns them."
    )

    def nextQuotes() -> list[Quote]:
        """
        Move every symbol one step.

        @return: one L{Quote} per symbol, in the order of C{symbols}.
        """


@implementer(IQuoteSource)
class RandomWalk:
    """
    Synthetic prices: each symbol starts at a price between 50 and 500 and
    moves by a normally distributed step of about 0.2% at each call.

    Each symbol has its own C{random.Random}, seeded with the seed and the
    symbol, so the same seed gives the same prices for a symbol whatever the
    other symbols are.

    @ivar symbols: the symbols quoted.
    @ivar seed: the seed the walks were started from.
    """

    def __init__(self, symbols: Sequence[str], seed: int) -> None:
        """
        @param symbols: the symbols to quote, canonical (see
            L{normalizeSymbol}) and distinct.
        @param seed: makes the run reproducible.
        """
        self.symbols = tuple(symbols)
        self.seed = seed
        self._randoms = {
            symbol: random.Random(f"{seed}/{symbol}") for symbol in self.symbols
        }
        self._prices = {
            symbol: round(self._randoms[symbol].uniform(50, 500), 2)
            for symbol in self.symbols
        }

    def nextQuotes(self) -> list[Quote]:
        """
        Move every symbol one step of its walk.

        @return: one L{Quote} per symbol.
        """
        return [self._step(symbol) for symbol in self.symbols]

    def _step(self, symbol: str) -> Quote:
        randomness = self._randoms[symbol]
        previous = self._prices[symbol]
        moved = previous * math.exp(randomness.gauss(0.0, _VOLATILITY))
        price = max(round(moved, 2), 0.01)
        self._prices[symbol] = price
        volume = randomness.randint(1, 50) * 100
        return Quote(symbol, price, round(price - previous, 2), volume)


@dataclass(frozen=True)
class ReplayRow:
    """
    One row of a replay file.

    @ivar symbol: the canonical symbol.
    @ivar price: the price.
    @ivar volume: the volume, 0 when the file has no volume column.
    """

    symbol: str
    price: float
    volume: int


def readReplayFile(path: str) -> list[ReplayRow]:
    """
    Read a replay file: CSV rows C{symbol,price} or C{symbol,price,volume}.

    Blank lines are skipped, and so is a first row that is a header (its
    first cell is C{symbol}).

    @param path: the file's name.
    @return: the rows, in file order.
    @raise ValueError: one sentence naming the file (and the line) when it
        cannot be read, is empty or has a bad row.
    """
    try:
        with open(path, encoding="utf-8", newline="") as replayFile:
            return parseReplayRows(csv.reader(replayFile), path)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ValueError(f"{path} cannot be read ({reason})") from None


def parseReplayRows(rows: Iterable[list[str]], path: str) -> list[ReplayRow]:
    """
    Parse the rows of a replay file, as L{csv.reader} gives them.

    @param rows: the cells of each line.
    @param path: the file's name, for errors.
    @return: the rows, in file order.
    @raise ValueError: naming the file and line of a bad row, or when there
        is no row.
    """
    parsed: list[ReplayRow] = []
    for number, cells in enumerate(rows, start=1):
        cells = [cell.strip() for cell in cells]
        if not any(cells):
            continue
        if not parsed and cells[0].lower() == "symbol":
            continue
        parsed.append(_parseReplayRow(cells, f"{path}, line {number}"))
    if not parsed:
        raise ValueError(f"{path} has no quotes (expected symbol,price[,volume])")
    return parsed


def _parseReplayRow(cells: list[str], where: str) -> ReplayRow:
    if len(cells) not in (2, 3):
        raise ValueError(f"{where}: expected symbol,price[,volume], not {cells!r}")
    symbol = normalizeSymbol(cells[0])
    if symbol is None:
        raise ValueError(f"{where}: {cells[0]!r} is not a ticker symbol")
    try:
        price = float(cells[1])
    except ValueError:
        price = math.nan
    if not math.isfinite(price) or price <= 0:
        raise ValueError(f"{where}: price {cells[1]!r} is not a positive number")
    volume = 0
    if len(cells) == 3:
        if not cells[2].isdigit():
            raise ValueError(f"{where}: volume {cells[2]!r} is not a whole number >= 0")
        volume = int(cells[2])
    return ReplayRow(symbol, round(price, 2), volume)


@implementer(IQuoteSource)
class CSVReplay:
    """
    Quotes replayed from the rows of a file.

    Each symbol steps through its own rows in file order and starts over
    after its last one; its change is measured from the row replayed before.

    @ivar symbols: the symbols quoted, in order of first appearance in the
        rows (or as selected).
    """

    def __init__(
        self, rows: Sequence[ReplayRow], symbols: Sequence[str] | None = None
    ) -> None:
        """
        @param rows: the rows to replay; at least one.
        @param symbols: the symbols to quote, each of which must have rows;
            C{None} for every symbol in the rows.
        @raise ValueError: when a selected symbol has no rows.
        """
        bySymbol: dict[str, list[ReplayRow]] = {}
        for row in rows:
            bySymbol.setdefault(row.symbol, []).append(row)
        if symbols is None:
            symbols = list(bySymbol)
        missing = [symbol for symbol in symbols if symbol not in bySymbol]
        if missing:
            raise ValueError(
                f"the replay file has no quotes for {', '.join(missing)} "
                f"(it has {', '.join(bySymbol)})"
            )
        self.symbols = tuple(symbols)
        self._rows = {symbol: bySymbol[symbol] for symbol in self.symbols}
        self._positions = dict.fromkeys(self.symbols, 0)
        self._prices: dict[str, float | None] = dict.fromkeys(self.symbols)

    def nextQuotes(self) -> list[Quote]:
        """
        Replay the next row of every symbol.

        @return: one L{Quote} per symbol.
        """
        return [self._step(symbol) for symbol in self.symbols]

    def _step(self, symbol: str) -> Quote:
        rows = self._rows[symbol]
        position = self._positions[symbol]
        row = rows[position]
        self._positions[symbol] = (position + 1) % len(rows)
        previous = self._prices[symbol]
        self._prices[symbol] = row.price
        change = 0.0 if previous is None else round(row.price - previous, 2)
        return Quote(symbol, row.price, change, row.volume)


def isoTimestamp(seconds: float) -> str:
    """
    Format a POSIX time for a quote's C{ts}.

    @param seconds: seconds since the epoch.
    @return: UTC ISO 8601 with milliseconds and C{Z}, such as
        C{"2024-01-01T00:00:00.000Z"}.
    """
    wholeSeconds, milliseconds = divmod(round(seconds * 1000), 1000)
    moment = datetime.fromtimestamp(wholeSeconds, tz=UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{milliseconds:03d}Z"


def quoteMessage(
    quote: Quote, server: str, seconds: float, seq: int
) -> dict[str, object]:
    """
    The message sending a quote to a client.

    @param quote: the quote.
    @param server: the name of the backend sending it.
    @param seconds: when it is sent, in seconds since the epoch.
    @param seq: the number of the backend's tick that made it.
    @return: C{{"type": "quote", "symbol", "price", "change", "volume",
        "ts", "seq", "server"}}.
    """
    return {
        "type": "quote",
        "symbol": quote.symbol,
        "price": quote.price,
        "change": quote.change,
        "volume": quote.volume,
        "ts": isoTimestamp(seconds),
        "seq": seq,
        "server": server,
    }


def encodeMessage(message: dict[str, object]) -> bytes:
    """
    Encode a message for a WebSocket text frame.

    @param message: a JSON-serializable dict.
    @return: compact UTF-8 JSON.
    """
    return json.dumps(message, separators=(",", ":")).encode("utf-8")
