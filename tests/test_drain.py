"""
Draining on SIGTERM: clients are closed with 1001 a few at a time over
--drain-seconds, within a deadline; a second SIGTERM (or SIGINT) closes the
rest at once.
"""

from __future__ import annotations

import json
import signal
from typing import Any

import pytest
import pytest_twisted
from helpers import connectClient, twistdCommand, twistdEnvironment, waitUntil
from test_twistd import TwistdProcess
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from wslb_twisted.drain import HURRY_GRACE, MIN_TICK, Drain, catchStopSignals

WAIT = 20.0
"""Seconds any single wait in these tests may take."""


class FakeSession:
    """
    A relay session that records when it was told to shut down.
    """

    def __init__(self, relay: FakeRelay, opened: bool = True) -> None:
        self.relay = relay
        self.pipe = object() if opened else None
        self.shutdowns: list[float] = []

    def shutdown(self) -> None:
        self.shutdowns.append(self.relay.clock.seconds())

    def leave(self) -> None:
        self.relay.sessions.discard(self)


class FakeRelay:
    """
    A relay whose L{closeAll} is recorded and fired by the test.
    """

    def __init__(self, clock: Clock, opened: int = 0, connecting: int = 0) -> None:
        self.clock = clock
        self.sessions: set[FakeSession] = set()
        self.all = [FakeSession(self) for _ in range(opened)]
        self.all += [FakeSession(self, opened=False) for _ in range(connecting)]
        self.sessions.update(self.all)
        self.closeAlls: list[tuple[float, float, Deferred[None]]] = []

    def closeAll(self, timeout: float) -> Deferred[None]:
        for session in list(self.sessions):
            session.shutdown()
        d: Deferred[None] = Deferred()
        self.closeAlls.append((self.clock.seconds(), timeout, d))
        return d


def _firstShutdowns(relay: FakeRelay) -> list[float]:
    return sorted(s.shutdowns[0] for s in relay.all if s.shutdowns)


def test_zeroSecondsClosesEverythingAtOnce() -> None:
    """
    With a drain period of 0, every client is closed at once, as before
    draining existed, and the connections get the grace period.
    """
    clock = Clock()
    relay = FakeRelay(clock, opened=5)
    done = Drain(relay, 0, 5.0, clock).start()
    assert _firstShutdowns(relay) == [0.0] * 5
    assert [(at, timeout) for at, timeout, _ in relay.closeAlls] == [(0.0, 5.0)]
    relay.closeAlls[0][2].callback(None)
    assert done.called


def test_clientsAreClosedEvenlyOverThePeriod() -> None:
    """
    Ten open clients drained over 2 seconds are closed one every 0.2
    seconds; then the drain waits for the closing handshakes until 2 seconds
    plus the grace after it began.
    """
    clock = Clock()
    relay = FakeRelay(clock, opened=10)
    done = Drain(relay, 2.0, 5.0, clock).start()
    clock.pump([0.2] * 10)
    assert _firstShutdowns(relay) == pytest.approx([0.2 * k for k in range(10)])
    ((at, timeout, closed),) = relay.closeAlls
    assert at == pytest.approx(1.8) and at + timeout == pytest.approx(7.0)
    assert not done.called
    closed.callback(None)
    assert done.called


def test_manyClientsAreClosedInSlices() -> None:
    """
    With more clients than ticks, each tick (at least L{MIN_TICK} apart)
    closes an even slice.
    """
    clock = Clock()
    relay = FakeRelay(clock, opened=1000)
    Drain(relay, 1.0, 5.0, clock).start()
    ticks = int(1.0 / MIN_TICK)
    clock.pump([MIN_TICK] * ticks)
    times = _firstShutdowns(relay)
    assert len(times) == 1000
    perTick = [times.count(pytest.approx(k * MIN_TICK)) for k in range(ticks)]
    assert perTick == [1000 // ticks] * ticks


def test_clientsStillConnectingAreRefusedAtOnce() -> None:
    """
    Clients whose handshake still waits for a backend are refused at once;
    only open conversations are spread.
    """
    clock = Clock()
    relay = FakeRelay(clock, opened=2, connecting=3)
    Drain(relay, 10.0, 5.0, clock).start()
    connecting = [s for s in relay.all if s.pipe is None]
    assert [s.shutdowns for s in connecting] == [[0.0]] * 3
    assert sum(1 for s in relay.all if s.pipe is not None and s.shutdowns) == 1


def test_theDrainEndsEarlyWhenEveryClientHasGone() -> None:
    """
    Clients that leave on their own are not closed again, and once none is
    left the drain stops waiting for the rest of the period.
    """
    clock = Clock()
    relay = FakeRelay(clock, opened=4)
    Drain(relay, 8.0, 5.0, clock).start()
    for session in relay.all:
        session.leave()
    clock.advance(2.0)
    assert sum(len(s.shutdowns) for s in relay.all) == 1
    ((at, timeout, _),) = relay.closeAlls
    assert (at, at + timeout) == (2.0, 13.0)


def test_hurryClosesTheRestAtOnce() -> None:
    """
    A second stop signal (L{Drain.hurry}) closes every remaining client now
    and cuts the connections left after L{HURRY_GRACE}; no more slices run.
    """
    clock = Clock()
    relay = FakeRelay(clock, opened=10)
    drain = Drain(relay, 10.0, 5.0, clock)
    done = drain.start()
    clock.advance(1.0)
    drain.hurry()
    assert _firstShutdowns(relay) == [0.0, 1.0] + [1.0] * 8
    ((at, timeout, closed),) = relay.closeAlls
    assert (at, timeout) == (1.0, HURRY_GRACE)
    clock.advance(20)
    assert len(relay.closeAlls) == 1
    assert all(len(s.shutdowns) <= 2 for s in relay.all)
    closed.callback(None)
    assert done.called


def test_hurryDuringTheFinalWaitShortensTheDeadline() -> None:
    """
    A second stop signal after the last slice gives the remaining
    connections L{HURRY_GRACE} rather than the full grace.
    """
    clock = Clock()
    relay = FakeRelay(clock, opened=1)
    drain = Drain(relay, 2.0, 5.0, clock)
    done = drain.start()
    drain.hurry()
    assert [(at, timeout) for at, timeout, _ in relay.closeAlls] == [
        (0.0, 7.0),
        (0.0, HURRY_GRACE),
    ]
    relay.closeAlls[1][2].callback(None)
    assert done.called


def test_catchStopSignalsHandsTheSignalToTheReactor() -> None:
    """
    While caught, SIGTERM and SIGINT call the handler on the reactor thread;
    afterwards the previous handlers are back.
    """
    calls: list[Any] = []

    class Reactor:
        def callFromThread(self, f: Any, *args: Any) -> None:
            calls.append((f, args))

    hurried: list[None] = []
    before = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
    restore = catchStopSignals(Reactor(), lambda: hurried.append(None))
    try:
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGINT)
        assert hurried == [] and len(calls) == 2
        for f, args in calls:
            f(*args)
        assert hurried == [None, None]
    finally:
        restore()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


# Real twistd processes


def _spawn(backends: list[Any], extra: tuple[str, ...]) -> Any:
    from twisted.internet import reactor

    specs = [
        {
            "host": "127.0.0.1",
            "port": b.portNumber,
            "healthPort": b.healthPortNumber,
            "id": b.name,
        }
        for b in backends
    ]
    arguments = [
        *twistdCommand(),
        "--pidfile=",
        "-n",
        "wslb",
        "--port=tcp:0:interface=127.0.0.1",
        "--monitor-port=tcp:0:interface=127.0.0.1",
        "--backends=" + json.dumps(specs),
        *extra,
    ]
    watcher = TwistdProcess()
    process = reactor.spawnProcess(
        watcher, arguments[0], arguments, env=twistdEnvironment()
    )
    return watcher, process


async def _within(d: Any, seconds: float = WAIT) -> Any:
    from twisted.internet import reactor

    return await d.addTimeout(seconds, reactor)


async def _clients(port: int, count: int) -> list[tuple[Any, list[float]]]:
    """
    Open C{count} clients; each comes with a list that receives the time it
    was closed.
    """
    from twisted.internet import reactor

    opened = []
    for _ in range(count):
        client = connectClient(port)
        await _within(client.opened)
        closedAt: list[float] = []
        client.closed.addCallback(
            lambda result, at=closedAt: at.append(reactor.seconds()) or result
        )
        opened.append((client, closedAt))
    return opened


async def _end(watcher: Any, process: Any) -> Any:
    try:
        return await _within(watcher.ended, 30)
    finally:
        if not watcher.ended.called:
            process.signalProcess("KILL")
            await watcher.ended


@pytest.mark.parametrize("workers", [1, 2])
@pytest_twisted.ensureDeferred
async def test_sigtermClosesClientsSpreadOverTheDrainPeriod(backends, workers):
    """
    With --drain-seconds 2, SIGTERM closes ten clients with 1001 spread over
    about 2 seconds (not all at once), all within the period and the
    closing handshakes' grace, and the process exits reporting SIGTERM.
    """
    from twisted.internet import reactor

    watcher, process = _spawn(
        backends[:2], ("--drain-seconds=2", f"--workers={workers}")
    )
    try:
        ports = await _within(watcher.listening)
        clients = await _clients(ports["client"], 10)
        signalled = reactor.seconds()
        process.signalProcess("TERM")
        for client, _ in clients:
            wasClean, code, _ = await _within(client.closed)
            assert (wasClean, code) == (True, 1001)
        times = sorted(at[0] for _, at in clients)
        assert times[-1] - times[0] >= 1.0, times
        assert times[-1] - signalled <= 2.0 + 2.0, times
        reason = await _end(watcher, process)
        assert reason.signal == signal.SIGTERM, watcher.output
        assert "Traceback" not in watcher.output
    finally:
        if not watcher.ended.called:
            process.signalProcess("KILL")
            await watcher.ended


@pytest.mark.parametrize(
    ("workers", "second"), [(1, "TERM"), (1, "INT"), (2, "TERM")]
)
@pytest_twisted.ensureDeferred
async def test_aSecondSignalClosesTheRestAtOnce(backends, workers, second):
    """
    A second SIGTERM (or SIGINT) during a 10-second drain closes every
    remaining client with 1001 at once, and the process exits, still
    reporting SIGTERM.
    """
    from twisted.internet import reactor

    watcher, process = _spawn(
        backends[:2], ("--drain-seconds=10", f"--workers={workers}")
    )
    try:
        ports = await _within(watcher.listening)
        clients = await _clients(ports["client"], 10)
        signalled = reactor.seconds()
        process.signalProcess("TERM")
        await waitUntil(lambda: any(at for _, at in clients), WAIT)
        assert not all(at for _, at in clients)
        hurried = reactor.seconds()
        process.signalProcess(second)
        for client, _ in clients:
            wasClean, code, _ = await _within(client.closed)
            assert (wasClean, code) == (True, 1001)
        last = max(at[0] for _, at in clients)
        assert last - hurried <= 3.0
        assert last - signalled < 10.0
        reason = await _end(watcher, process)
        assert reason.signal == signal.SIGTERM, watcher.output
        assert "Traceback" not in watcher.output
    finally:
        if not watcher.ended.called:
            process.signalProcess("KILL")
            await watcher.ended
