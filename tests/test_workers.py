"""
Several worker processes (C{--workers N}): one client port, one health
checker and one monitoring view for all of them.
"""

from __future__ import annotations

import json
import os
import signal

import pytest_twisted
import treq
from helpers import connectClient, twistdCommand, twistdEnvironment, waitUntil
from test_twistd import TwistdProcess


def _spawn(backends, tmp_path, extra=()):
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
        "--workers=2",
        "--port=tcp:0:interface=127.0.0.1",
        "--monitor-port=tcp:0:interface=127.0.0.1",
        "--health-interval=200",
        "--drain-seconds=0",
        "--backends=" + json.dumps(specs),
        *extra,
    ]
    watcher = TwistdProcess()
    process = reactor.spawnProcess(
        watcher, arguments[0], arguments, env=twistdEnvironment(), path=str(tmp_path)
    )
    return watcher, process


async def eventually(check, timeout=10.0):
    """
    Wait until the coroutine function C{check} returns true, polling the
    supervisor (whose view follows the workers' syncs, ten times a second).
    """
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    deadline = reactor.seconds() + timeout
    while not await check():
        assert reactor.seconds() < deadline, f"not true within {timeout}s"
        await deferLater(reactor, 0.05, lambda: None)


async def _totalConnections(monitorPort):
    return (await _status(monitorPort))["loadBalancer"]["totalConnections"]


async def _status(monitorPort):
    response = await treq.get(
        f"http://127.0.0.1:{monitorPort}/status", persistent=False
    )
    return json.loads(await treq.content(response))


def _workerPids(pid: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry))
    return children


async def _stop(watcher, process):
    if not watcher.ended.called:
        process.signalProcess("TERM")
    return await watcher.ended


@pytest_twisted.ensureDeferred
async def test_workersShareThePortAndOneMonitoringView(backends, tmp_path):
    """
    With two workers, clients are served through one port, two worker
    processes run, and the supervisor's /status counts every worker's
    connections.
    """
    watcher, process = _spawn(backends, tmp_path)
    try:
        ports = await watcher.listening
        await waitUntil(lambda: len(_workerPids(process.pid)) == 2)
        clients = []
        for n in range(6):
            client = connectClient(ports["client"])
            protocol = await client.opened
            protocol.sendMessage(b"hello %d" % n)
            assert await client.messages.get() == (b"hello %d" % n, False)
            clients.append(client)

        async def allCounted():
            return await _totalConnections(ports["monitoring"]) == 6

        await eventually(allCounted)
        assert sum(len(b.factory.requests) for b in backends) == 6
    finally:
        await _stop(watcher, process)


@pytest_twisted.ensureDeferred
async def test_leastConnectionsSeesEveryWorker(backends, tmp_path):
    """
    Least-connections balances by the connections of all workers: clients
    opened one after another (each counted by the supervisor before the
    next) spread evenly over the backends, whichever worker accepts them.
    """
    watcher, process = _spawn(backends[:2], tmp_path, ["--algorithm=least-connections"])
    try:
        ports = await watcher.listening
        for n in range(1, 9):
            client = connectClient(ports["client"])
            await client.opened

            async def counted(n=n):
                return await _totalConnections(ports["monitoring"]) == n

            await eventually(counted)
        assert [len(b.factory.requests) for b in backends[:2]] == [4, 4]
    finally:
        await _stop(watcher, process)


@pytest_twisted.ensureDeferred
async def test_workersFollowTheOneHealthChecker(backends, tmp_path):
    """
    When a backend fails its health check in the supervisor, no worker sends
    it new clients.
    """
    watcher, process = _spawn(backends[:2], tmp_path)
    try:
        ports = await watcher.listening
        backends[0].health.code = 500

        async def outOfRotation():
            status = await _status(ports["monitoring"])
            return not status["loadBalancer"]["backends"][0]["health"]

        await eventually(outOfRotation)
        # The workers learn it at their next sync, a tenth of a second later;
        # nothing outside them shows when that happened, so give them ten.
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        await deferLater(reactor, 1.0, lambda: None)
        before = len(backends[0].factory.requests)
        for _ in range(6):
            client = connectClient(ports["client"])
            await client.opened
        assert len(backends[0].factory.requests) == before
        assert len(backends[1].factory.requests) >= 6
    finally:
        await _stop(watcher, process)


@pytest_twisted.ensureDeferred
async def test_sigtermStopsEveryWorkerClosingClientsWith1001(backends, tmp_path):
    """
    SIGTERM to the supervisor closes the clients of every worker with 1001
    and ends every process.
    """
    watcher, process = _spawn(backends, tmp_path)
    ports = await watcher.listening
    await waitUntil(lambda: len(_workerPids(process.pid)) == 2)
    pids = _workerPids(process.pid)
    clients = []
    for _ in range(4):
        client = connectClient(ports["client"])
        await client.opened
        clients.append(client)
    reason = await _stop(watcher, process)
    for client in clients:
        assert (await client.closed)[:2] == (True, 1001)
    assert reason.signal == signal.SIGTERM
    for pid in pids:
        assert (
            not os.path.exists(f"/proc/{pid}")
            or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
        )
    assert "Traceback" not in watcher.output


@pytest_twisted.ensureDeferred
async def test_deadWorkerIsReplaced(backends, tmp_path):
    """
    A worker that dies is started again, and clients keep being served.
    """
    watcher, process = _spawn(backends, tmp_path)
    try:
        ports = await watcher.listening
        await waitUntil(lambda: len(_workerPids(process.pid)) == 2)
        first = _workerPids(process.pid)
        os.kill(first[0], signal.SIGKILL)
        await waitUntil(
            lambda: (
                len(_workerPids(process.pid)) == 2
                and set(_workerPids(process.pid)) != set(first)
            ),
            timeout=15,
        )
        for _ in range(4):
            client = connectClient(ports["client"])
            await client.opened
        assert "worker 1 ended" in watcher.output or "worker 2 ended" in watcher.output
    finally:
        await _stop(watcher, process)


def test_workersMustBeAPositiveCount():
    """
    WORKERS=0 (or anything that is not 1-64) is refused, naming the setting.
    """
    import pytest

    from wslb_twisted.config import ConfigError, loadSettings

    with pytest.raises(ConfigError) as caught:
        loadSettings({}, {"WORKERS": "0"})
    assert str(caught.value).startswith("WORKERS='0' is not a number of worker")
    assert loadSettings({"workers": "4"}, {}).workers == 4


def test_workersNeedATcpPort(tmp_path):
    """
    Workers share a plain TCP listening socket: another kind of client port
    stops startup with one line.
    """
    import subprocess

    result = subprocess.run(
        [
            *twistdCommand(),
            "--pidfile=",
            "-n",
            "wslb",
            "--workers=2",
            "--port=unix:" + str(tmp_path / "wslb.sock"),
            "--monitor-port=tcp:0:interface=127.0.0.1",
        ],
        env=twistdEnvironment(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "--workers needs a tcp: client port" in output
    assert "Traceback" not in output
