"""
Reloading the configuration on SIGHUP: backends join, leave and change while
clients stay connected; a bad configuration changes nothing.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest_twisted
import treq
from helpers import connectClient, twistdCommand, twistdEnvironment, waitUntil
from test_twistd import TwistdProcess
from twisted.logger import capturedLogs

from wslb_twisted.backends import Backend, BackendPool
from wslb_twisted.config import ConfigError, Settings
from wslb_twisted.reload import (
    SIGHUPHandler,
    applyPoolUpdate,
    describeUpdate,
    planPoolUpdate,
    reloadedSettings,
    reloadPool,
)

WAIT = 15.0
"""Seconds any single wait in these tests may take."""


def _backend(backendId: str, port: int, **fields: Any) -> Backend:
    return Backend(id=backendId, host="10.0.0.1", port=port, **fields)


def _served(backend: Backend, clients: int) -> Backend:
    backend.healthy = True
    backend.lastHealthCheck = 100.0
    for _ in range(clients):
        backend.connectionOpened()
    backend.messagesToClient = 42
    return backend


# The pool update, without the network


def test_unchangedBackendsAreKeptWithTheirStateAndCounters() -> None:
    """
    A backend configured again with the same id and address is the same
    object afterwards: its health, connections and counters are untouched.
    """
    one = _served(_backend("one", 3001), clients=2)
    two = _served(_backend("two", 3002), clients=1)
    update = planPoolUpdate([one, two], [_backend("one", 3001), _backend("two", 3002)])
    assert update.backends[0] is one and update.backends[1] is two
    assert update.kept == [one, two]
    assert not update.anything
    assert (one.healthy, one.activeConnections, one.messagesToClient) == (True, 2, 42)


def test_addedBackendsJoinUnhealthyUntilChecked() -> None:
    """
    A backend with a new id joins the pool out of rotation: it takes clients
    only once a health check has passed.
    """
    one = _served(_backend("one", 3001), clients=0)
    pool = BackendPool([one])
    new = _backend("three", 3003)
    update = planPoolUpdate(pool, [_backend("one", 3001), new])
    applyPoolUpdate(pool, update)
    assert update.added == [new] and update.joining == [new]
    assert pool.backends == [one, new]
    assert not new.healthy and new.lastHealthCheck is None
    assert pool.healthy() == [one]


def test_removedBackendsLeaveThePoolButKeepTheirClients() -> None:
    """
    A backend no longer configured leaves the pool (no new clients, no
    longer listed), while the object its clients' sessions hold keeps
    counting them until they close.
    """
    one = _served(_backend("one", 3001), clients=1)
    two = _served(_backend("two", 3002), clients=3)
    pool = BackendPool([one, two])
    update = planPoolUpdate(pool, [_backend("one", 3001)])
    applyPoolUpdate(pool, update)
    assert update.removed == [two] and update.leaving == [two]
    assert list(pool) == [one]
    assert pool.healthy() == [one]
    assert two.activeConnections == 3
    two.connectionClosed()
    assert two.activeConnections == 2


def test_anIdWithANewAddressIsANewBackend() -> None:
    """
    An id whose host, port or TLS changes names another server: the old
    backend leaves, a new one joins unhealthy, with counters from 0.
    """
    old = _served(_backend("one", 3001), clients=1)
    moved = _backend("one", 4001)
    update = planPoolUpdate([old], [moved])
    assert update.replaced == [(old, moved)]
    assert update.backends == [moved]
    assert update.joining == [moved] and update.leaving == [old]
    assert not moved.healthy and moved.totalConnections == 0


def test_tunableFieldsChangeInPlace() -> None:
    """
    A kept backend takes its new weight, maxConnections, health port and
    health path, and keeps everything else.
    """
    one = _served(_backend("one", 3001, weight=1), clients=2)
    wanted = _backend(
        "one", 3001, weight=3, maxConnections=50, healthPort=9000, healthPath="/ok"
    )
    pool = BackendPool([one])
    update = planPoolUpdate(pool, [wanted])
    assert update.changed == [
        (
            one,
            {
                "weight": (1, 3),
                "maxConnections": (0, 50),
                "healthPort": (4001, 9000),
                "healthPath": ("/health", "/ok"),
            },
        )
    ]
    applyPoolUpdate(pool, update)
    assert pool.backends == [one]
    assert (one.weight, one.maxConnections, one.healthURL) == (
        3,
        50,
        "http://10.0.0.1:9000/ok",
    )
    assert (one.healthy, one.activeConnections) == (True, 2)


def test_thePoolTakesTheNewOrder() -> None:
    """
    The pool lists the backends in the new configuration's order.
    """
    one, two = _backend("one", 3001), _backend("two", 3002)
    update = planPoolUpdate([one, two], [_backend("two", 3002), _backend("one", 3001)])
    assert update.backends == [two, one]
    assert update.reordered and update.anything


def test_onlyLiveSettingsChangeTheRestWaitForARestart() -> None:
    """
    The backends, the drain period and the config file follow the new
    configuration; any other setting that differs keeps its value and is
    named, as its option, as needing a restart.
    """
    current = Settings(algorithm="round-robin", drainSeconds=10.0, maxClients=5)
    loaded = Settings(
        algorithm="weighted",
        drainSeconds=3.0,
        maxClients=5,
        maxConnectionsPerIP=7,
        backends=[_backend("one", 3001)],
        configFile="/etc/wslb.json",
    )
    settings, restart = reloadedSettings(current, loaded)
    assert settings.algorithm == "round-robin"
    assert settings.maxConnectionsPerIP == current.maxConnectionsPerIP
    assert (settings.drainSeconds, settings.configFile) == (3.0, "/etc/wslb.json")
    assert settings.backends == loaded.backends
    assert restart == ["--algorithm", "--max-connections-per-ip"]


def test_summarySaysWhatChanged() -> None:
    """
    The log line of a reload names each added, removed, moved and changed
    backend, and how many clients a removed one keeps.
    """
    one = _served(_backend("one", 3001), clients=0)
    two = _served(_backend("two", 3002), clients=3)
    three = _served(_backend("three", 3003), clients=0)
    update = planPoolUpdate(
        [one, two, three],
        [
            _backend("one", 3001, weight=2),
            _backend("three", 3333),
            _backend("four", 3004),
        ],
    )
    summary = describeUpdate(update, Settings(), Settings(drainSeconds=2))
    assert summary == (
        "four (10.0.0.1:3004) added, in rotation once a health check passes; "
        "two (10.0.0.1:3002) removed, its 3 client(s) stay until they close; "
        "three moved from 10.0.0.1:3003 to 10.0.0.1:3333, its 0 client(s) "
        "stay on the old address until they close; "
        "one weight 1 -> 2; drain-seconds 10 -> 2"
    )


def test_aBadConfigurationChangesNothing() -> None:
    """
    When reading the configuration fails, the pool and settings stay as they
    were and one line says why.
    """
    one = _served(_backend("one", 3001), clients=1)
    pool = BackendPool([one])

    def load() -> Settings:
        raise ConfigError("BACKEND_SERVERS='[' is not valid JSON (oops)")

    with capturedLogs() as events:
        assert reloadPool(load, Settings(backends=[one]), pool) is None
    assert pool.backends == [one] and one.healthy
    rejected = [e for e in events if e.get("event") == "config_reload_rejected"]
    assert len(rejected) == 1
    assert rejected[0]["reason"] == "BACKEND_SERVERS='[' is not valid JSON (oops)"
    assert len(events) == 1


def test_aGoodConfigurationIsLoggedOnce() -> None:
    """
    A reload that applies logs one summary line (and, when settings that
    need a restart changed, one line naming them).
    """
    one = _served(_backend("one", 3001), clients=0)
    pool = BackendPool([one])
    current = Settings(backends=[one])
    wanted = Settings(backends=[_backend("one", 3001), _backend("two", 3002)])
    with capturedLogs() as events:
        result = reloadPool(lambda: wanted, current, pool)
    assert result is not None
    settings, update = result
    assert settings.backends == pool.backends == [one, update.added[0]]
    assert [e["event"] for e in events] == ["config_reloaded"]
    assert events[0]["added"] == ["two"] and events[0]["removed"] == []


def test_sighupHandlerHandsTheWorkToTheReactor() -> None:
    """
    The SIGHUP handler only schedules the reload on the reactor thread, is
    ignored while stopping, and puts the previous handler back.
    """

    class Reactor:
        calls: list[Any] = []

        def callFromThread(self, f: Any, *args: Any) -> None:
            self.calls.append((f, args))

    reactor = Reactor()
    reloads: list[None] = []
    handler = SIGHUPHandler(reactor, lambda: reloads.append(None))
    previous = signal.getsignal(signal.SIGHUP)
    handler.install()
    try:
        signal.raise_signal(signal.SIGHUP)
        assert reloads == [] and len(reactor.calls) == 1
        f, args = reactor.calls.pop()
        f(*args)
        assert reloads == [None]
        handler.paused = True
        signal.raise_signal(signal.SIGHUP)
        f, args = reactor.calls.pop()
        f(*args)
        assert reloads == [None]
    finally:
        handler.uninstall()
    assert signal.getsignal(signal.SIGHUP) == previous


# A load balancer in this process


@pytest_twisted.ensureDeferred
async def test_reloadMovesNewClientsAndKeepsOldOnes(backends, startLB):
    """
    After a reload that removes one backend and adds another, a client of
    the removed backend keeps talking to it, new clients go only to the
    configured backends, the added one once its first check passes, and
    /status lists the new configuration.
    """
    one, two, three = backends
    for backend in backends:
        backend.factory.greeting = backend.name.encode()
    lb = await startLB([one, two])
    onTwo = None
    for _ in range(2):
        client = connectClient(lb.port)
        protocol = await client.opened
        greeting = await client.messages.get()
        if greeting == (b"backend-2", False):
            onTwo = (client, protocol)
    assert onTwo is not None
    kept = lb.backend("backend-1")
    three.health.hold()
    lb.service.reloadSettings = lambda: Settings(backends=[one.spec(), three.spec()])
    assert lb.service.reload()
    assert [b.id for b in lb.service.pool] == ["backend-1", "backend-3"]
    assert lb.backend("backend-1") is kept and kept.activeConnections == 1

    # Until its first check passes, the added backend takes no client.
    await waitUntil(lambda: three.health.held, WAIT)
    client = connectClient(lb.port)
    await client.opened
    assert await client.messages.get() == (b"backend-1", False)
    three.health.release()
    await waitUntil(lambda: lb.backend("backend-3").healthy, WAIT)

    greetings = set()
    for _ in range(4):
        client = connectClient(lb.port)
        await client.opened
        greetings.add((await client.messages.get())[0])
    assert greetings == {b"backend-1", b"backend-3"}

    client, protocol = onTwo
    protocol.sendMessage(b"still here")
    assert await client.messages.get() == (b"still here", False)

    response = await treq.get(f"http://127.0.0.1:{lb.monitorPort}/status")
    status = json.loads(await treq.content(response))
    listed = [b["id"] for b in status["loadBalancer"]["backends"]]
    assert listed == ["backend-1", "backend-3"]


@pytest_twisted.ensureDeferred
async def test_reloadWithABadConfigurationKeepsServing(backends, startLB):
    """
    A reload whose configuration is bad changes nothing: same backends, and
    clients are still served.
    """
    lb = await startLB(backends[:2])
    pool = list(lb.service.pool)

    def bad() -> Settings:
        raise ConfigError("CONFIG_FILE: item 1 has no 'port'")

    lb.service.reloadSettings = bad
    assert not lb.service.reload()
    assert list(lb.service.pool) == pool
    client = connectClient(lb.port)
    await client.opened


@pytest_twisted.ensureDeferred
async def test_reloadRenewsTheStrategyAndTheDrainPeriod(backends, startLB):
    """
    A reload that changes the backends gives the relay a fresh strategy
    (strategies remember backends) and sets the drain period.
    """
    lb = await startLB(backends[:2])
    strategy = lb.service.relay.strategy
    lb.service.reloadSettings = lambda: Settings(
        backends=[backends[0].spec(weight=3)], drainSeconds=4.0
    )
    assert lb.service.reload()
    assert lb.service.relay.strategy is not strategy
    assert lb.service.closing.drainSeconds == 4.0
    assert lb.backend("backend-1").weight == 3


# Real twistd processes


def _spec(backend: Any) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": backend.portNumber,
        "healthPort": backend.healthPortNumber,
        "id": backend.name,
    }


def _writeConfig(path: Path, backends: list[Any]) -> None:
    # Written aside and renamed, so a reload never reads half a file.
    aside = path.with_suffix(".new")
    aside.write_text(json.dumps([_spec(b) for b in backends]))
    os.replace(aside, path)


def _spawn(tmp_path: Path, config: Path, extra: tuple[str, ...] = ()) -> Any:
    from twisted.internet import reactor

    arguments = [
        *twistdCommand(),
        "--pidfile=",
        "-n",
        "wslb",
        "--port=tcp:0:interface=127.0.0.1",
        "--monitor-port=tcp:0:interface=127.0.0.1",
        "--drain-seconds=0",
        f"--config-file={config}",
        *extra,
    ]
    watcher = TwistdProcess()
    process = reactor.spawnProcess(
        watcher, arguments[0], arguments, env=twistdEnvironment(), path=str(tmp_path)
    )
    return watcher, process


async def _within(d: Any, seconds: float = WAIT) -> Any:
    from twisted.internet import reactor

    return await d.addTimeout(seconds, reactor)


async def _status(monitorPort: int) -> dict[str, Any]:
    response = await _within(
        treq.get(f"http://127.0.0.1:{monitorPort}/status", persistent=False)
    )
    return json.loads(await _within(treq.content(response)))  # type: ignore[no-any-return]


async def _eventually(check: Any, timeout: float = WAIT) -> None:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    deadline = reactor.seconds() + timeout
    while not await check():
        assert reactor.seconds() < deadline, f"not true within {timeout}s"
        await deferLater(reactor, 0.05, lambda: None)


async def _stop(watcher: Any, process: Any) -> None:
    if not watcher.ended.called:
        process.signalProcess("TERM")
        try:
            await _within(watcher.ended)
        except Exception:
            process.signalProcess("KILL")
            await watcher.ended


async def _connect(port: int) -> tuple[Any, Any, bytes]:
    """
    A client, its protocol, and the name of the backend serving it.
    """
    client = connectClient(port)
    protocol = await _within(client.opened)
    greeting, _ = await _within(client.messages.get())
    return client, protocol, greeting


async def _reloadAndCheck(backends: list[Any], tmp_path: Path, extra=()) -> None:
    one, two, three = backends
    for backend in backends:
        backend.factory.greeting = backend.name.encode()
    config = tmp_path / "backends.json"
    _writeConfig(config, [one, two])
    watcher, process = _spawn(tmp_path, config, extra)
    try:
        ports = await _within(watcher.listening)
        clients = [await _connect(ports["client"]) for _ in range(4)]
        onTwo = [(c, p) for c, p, name in clients if name == b"backend-2"]
        assert onTwo

        _writeConfig(config, [one, three])
        process.signalProcess("HUP")

        async def reloaded() -> bool:
            listed = (await _status(ports["monitoring"]))["loadBalancer"]["backends"]
            return [(b["id"], b["health"]) for b in listed] == [
                ("backend-1", True),
                ("backend-3", True),
            ]

        await _eventually(reloaded)
        assert "backend-3 (127.0.0.1:" in watcher.output
        assert "backend-2 (127.0.0.1:" in watcher.output

        for client, protocol in onTwo:
            protocol.sendMessage(b"still here")
            assert await _within(client.messages.get()) == (b"still here", False)

        # Workers learn backend-3's health at their next sync.
        servedByTwo = len(two.factory.requests)
        names = set()
        for _ in range(30):
            names.add((await _connect(ports["client"]))[2])
            if b"backend-3" in names:
                break
        assert names <= {b"backend-1", b"backend-3"} and b"backend-3" in names
        assert len(two.factory.requests) == servedByTwo
        assert watcher.output.count("configuration reloaded:") == 1
        assert "Traceback" not in watcher.output
    finally:
        await _stop(watcher, process)


@pytest_twisted.ensureDeferred
async def test_sighupReloadsTheConfigFile(backends, tmp_path):
    """
    Under twistd, SIGHUP re-reads the --config-file: /status lists the new
    backends, clients of the removed one keep working, and new clients go
    only to the configured backends.
    """
    await _reloadAndCheck(backends, tmp_path)


@pytest_twisted.ensureDeferred
async def test_sighupReloadsEveryWorker(backends, tmp_path):
    """
    With --workers, the supervisor reloads and every worker follows: new
    clients, whichever worker accepts them, go only to the configured
    backends, and clients of the removed one keep working.
    """
    await _reloadAndCheck(backends, tmp_path, ("--workers=2",))


@pytest_twisted.ensureDeferred
async def test_sighupWithABadConfigFileKeepsTheOldOne(backends, tmp_path):
    """
    SIGHUP with a bad config file logs one line saying why, and the load
    balancer keeps its backends and keeps serving.
    """
    for backend in backends:
        backend.factory.greeting = backend.name.encode()
    config = tmp_path / "backends.json"
    _writeConfig(config, backends[:2])
    watcher, process = _spawn(tmp_path, config)
    try:
        ports = await _within(watcher.listening)
        await _connect(ports["client"])
        config.write_text('[{"host": "127.0.0.1", "id": "backend-9"}]')
        process.signalProcess("HUP")
        await waitUntil(lambda: "reload rejected" in watcher.output, WAIT)
        lines = [line for line in watcher.output.splitlines() if "reload" in line]
        assert len(lines) == 2, lines  # "SIGHUP received" and the rejection
        assert lines[1].endswith(
            "configuration reload rejected, keeping the current configuration: "
            f"{config}: item 1 has no 'port'"
        )
        listed = (await _status(ports["monitoring"]))["loadBalancer"]["backends"]
        assert [b["id"] for b in listed] == ["backend-1", "backend-2"]
        await _connect(ports["client"])
        assert not watcher.ended.called
        assert "Traceback" not in watcher.output
    finally:
        await _stop(watcher, process)
