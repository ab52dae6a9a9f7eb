"""
Draining on SIGTERM: closing the clients a few at a time over a period, so
that they do not all reconnect (to the other load balancers) at once.

A L{Drain} refuses the clients still waiting for a backend at once (HTTP
503) and closes the others with 1001 "going away" in even slices over
C{seconds}; then it waits for the closing handshakes still under way, and
cuts whatever is left C{grace} seconds after the period.  L{Drain.hurry}
(a second SIGTERM or SIGINT, see L{catchStopSignals}) closes everything at
once and cuts what is left after L{HURRY_GRACE} seconds.  With C{seconds} 0
everything is closed at once.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Callable, Collection, Sequence
from types import FrameType
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

__all__ = ["HURRY_GRACE", "MIN_TICK", "Drain", "catchStopSignals"]

log = Logger()

MIN_TICK = 0.05
"""Fewest seconds between two slices of clients closed."""

HURRY_GRACE = 1.0
"""
Seconds the closing handshakes get after L{Drain.hurry} before the remaining
connections are cut.
"""


class _Session(Protocol):
    """
    What a drain needs of a relay session (L{wslb_twisted.relay.Session}).
    """

    @property
    def pipe(self) -> object:
        """
        The data path once the client is open; C{None} while it connects.
        """

    def shutdown(self) -> None:
        """
        Refuse the client (still connecting) or close it with 1001.
        """


class _Relay(Protocol):
    """
    What a drain needs of the relay (L{wslb_twisted.relay.RelayFactory}).
    """

    @property
    def sessions(self) -> Collection[Any]:
        """
        The sessions whose client is connected.
        """

    def closeAll(self, timeout: float) -> Deferred[None]:
        """
        Close every client and wait for the connections to go, cutting them
        after C{timeout} seconds.
        """


class Drain:
    """
    Closes a relay's clients spread evenly over a period, then stops.

    @ivar seconds: the period over which open clients are closed.
    @ivar grace: seconds allowed after the period for closing handshakes.
    @ivar done: fires once no connection is left (or all were cut).
    @ivar hurried: whether L{hurry} was called.
    """

    def __init__(
        self, relay: _Relay, seconds: float, grace: float, clock: IReactorTime
    ) -> None:
        """
        @param relay: the relay whose clients to close.
        @param seconds: the period; 0 closes everything at once.
        @param grace: seconds allowed, after the period, for the closing
            handshakes before the remaining connections are cut.
        @param clock: times the slices and the deadline.
        """
        self.relay = relay
        self.seconds = seconds
        self.grace = grace
        self.clock = clock
        self.done: Deferred[None] = Deferred()
        self.hurried = False
        self._queue: list[_Session] = []
        self._slices: list[int] = []
        self._tick = 0.0
        self._next: IDelayedCall | None = None
        self._finishing = False

    def start(self) -> Deferred[None]:
        """
        Begin: refuse the connecting clients, close the first slice of the
        open ones, and schedule the rest.

        @return: L{done}.
        """
        sessions = list(self.relay.sessions)
        if self.seconds <= 0 or not sessions:
            if sessions:
                log.info("closing {clients} client(s) with 1001", clients=len(sessions))
            self._finish(self.grace)
            return self.done
        opened = []
        for session in sessions:
            if session.pipe is None:
                # No conversation under way to spare: refuse or close it now.
                session.shutdown()
            else:
                opened.append(session)
        count = len(opened)
        steps = max(1, min(count, int(self.seconds / MIN_TICK)))
        self._tick = self.seconds / steps
        self._queue = opened
        # Slice k closes the clients from _slices[k - 1] to _slices[k].
        self._slices = [math.ceil(count * (k + 1) / steps) for k in range(steps)]
        log.info(
            "draining {clients} client(s) over {seconds:g}s; a second SIGTERM "
            "closes them at once",
            clients=count,
            seconds=self.seconds,
            event="drain_started",
        )
        self._closeSlice(0)
        return self.done

    def _closeSlice(self, step: int) -> None:
        self._next = None
        begin = self._slices[step - 1] if step else 0
        current = self.relay.sessions
        for session in self._queue[begin : self._slices[step]]:
            if session in current:
                session.shutdown()
        if step + 1 < len(self._slices) and current:
            self._next = self.clock.callLater(self._tick, self._closeSlice, step + 1)
        else:
            # What is left of the period, plus the grace.
            remaining = (len(self._slices) - step) * self._tick
            self._finish(remaining + self.grace)

    def hurry(self) -> None:
        """
        Stop spreading: close every client now, and cut the connections left
        after L{HURRY_GRACE} seconds.
        """
        if self.done.called or self.hurried:
            return
        self.hurried = True
        log.info(
            "closing the remaining {clients} client(s) now",
            clients=len(self.relay.sessions),
            event="drain_hurried",
        )
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        self._finishing = False
        self._finish(HURRY_GRACE)

    def _finish(self, timeout: float) -> None:
        if self._finishing:
            return
        self._finishing = True
        self.relay.closeAll(timeout).addCallback(self._closed)

    def _closed(self, result: None) -> None:
        if self._next is not None and self._next.active():
            self._next.cancel()
        if not self.done.called:
            self.done.callback(None)


def catchStopSignals(
    reactor: Any,
    handler: Callable[[], None],
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
) -> Callable[[], None]:
    """
    Until the returned function is called, the stop signals call C{handler}
    on the reactor thread instead of what handled them before (the reactor's
    own handlers, which would only try to stop it again).

    @param reactor: the reactor whose thread runs C{handler}.
    @param handler: what a second stop signal does.
    @param signals: the signals to catch.
    @return: puts the previous handlers back.
    """

    def received(number: int, frame: FrameType | None) -> None:
        reactor.callFromThread(_announce, signal.Signals(number).name, handler)

    previous = {number: signal.signal(number, received) for number in signals}

    def restore() -> None:
        for number, old in previous.items():
            signal.signal(number, signal.SIG_DFL if old is None else old)

    return restore


def _announce(name: str, handler: Callable[[], None]) -> None:
    log.info("{signal} received while draining", signal=name)
    handler()
