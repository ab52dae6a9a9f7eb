"""
A real C{twistd -n wslb} process: serving clients, stopping on SIGTERM, and
selecting a third-party strategy plugin by name.
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest_twisted
from helpers import connectClient, twistdCommand, twistdEnvironment
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol


class TwistdProcess(ProcessProtocol):
    """
    Watches a twistd subprocess: its output, the ports it listens on, and its
    end.
    """

    def __init__(self) -> None:
        self.output = ""
        self.listening: Deferred[dict[str, int]] = Deferred()
        self.ended: Deferred[object] = Deferred()
        self.ports: dict[str, int] = {}

    def outReceived(self, data: bytes) -> None:
        self.output += data.decode("utf-8", "replace")
        for name, port in re.findall(
            r"(client|monitoring) port listening on [^:]+:(\d+)", self.output
        ):
            self.ports[name] = int(port)
        if len(self.ports) == 2 and not self.listening.called:
            self.listening.callback(self.ports)

    errReceived = outReceived

    def processEnded(self, reason: object) -> None:
        if not self.listening.called:
            self.listening.errback(RuntimeError(f"twistd ended:\n{self.output}"))
        self.ended.callback(reason.value)  # type: ignore[attr-defined]


def spawnLoadBalancer(
    backends, extra: list[str] = (), path: list[str] | None = None
) -> tuple[TwistdProcess, object]:
    """
    Start C{twistd -n wslb} on ephemeral ports in front of C{backends}.
    """
    from twisted.internet import reactor

    arguments = [
        *twistdCommand(),
        "--pidfile=",
        "-n",
        "wslb",
        "--port=tcp:0:interface=127.0.0.1",
        "--monitor-port=tcp:0:interface=127.0.0.1",
        "--drain-seconds=0",
        *extra,
    ]
    # The test backends' health ports are not port + 1000: give them as JSON.
    specs = [
        {
            "host": "127.0.0.1",
            "port": b.portNumber,
            "healthPort": b.healthPortNumber,
            "id": b.name,
        }
        for b in backends
    ]
    arguments.append("--backends=" + json.dumps(specs))
    watcher = TwistdProcess()
    env = twistdEnvironment(path=path)
    process = reactor.spawnProcess(
        watcher, arguments[0], arguments, env=env, path=str(Path.cwd())
    )
    return watcher, process


@pytest_twisted.ensureDeferred
async def test_sigtermClosesClientsWith1001(backends, tmp_path):
    """
    On SIGTERM, twistd closes every client with 1001 (going away) and its
    backend connection cleanly, then exits, reporting the signal.
    """
    watcher, process = spawnLoadBalancer(backends[:1])
    try:
        ports = await watcher.listening
        client = connectClient(ports["client"])
        protocol = await client.opened
        protocol.sendMessage(b"still here")
        assert await client.messages.get() == (b"still here", False)
        process.signalProcess("TERM")
        wasClean, code, _ = await client.closed
        assert (wasClean, code) == (True, 1001)
        backendClose = await backends[0].factory.closes.get()
        assert backendClose[:2] == (True, 1001)
        reason = await watcher.ended
        assert reason.signal == signal.SIGTERM, watcher.output
        assert "Traceback" not in watcher.output
    finally:
        if not watcher.ended.called:
            process.signalProcess("KILL")
            await watcher.ended


THIRD_PARTY = """
from zope.interface import implementer

from wslb_twisted.interfaces import IStrategy
from wslb_twisted.plugin import StrategyPlugin


@implementer(IStrategy)
class AlwaysLast:
    name = "always-last"

    def pick(self, backends, clientAddress):
        return backends[-1]


alwaysLast = StrategyPlugin("always-last", AlwaysLast, "the last healthy backend")
"""


@pytest_twisted.ensureDeferred
async def test_thirdPartyStrategyPlugin(backends, tmp_path):
    """
    A strategy defined outside the package, in a C{twisted/plugins/}
    directory on the Python path, is selected with C{--algorithm NAME}.
    """
    plugins = tmp_path / "twisted" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "always_last_strategy.py").write_text(THIRD_PARTY)
    watcher, process = spawnLoadBalancer(
        backends, ["--algorithm=always-last"], path=[str(tmp_path)]
    )
    try:
        ports = await watcher.listening
        for _ in range(3):
            client = connectClient(ports["client"])
            await client.opened
        assert [len(b.factory.requests) for b in backends] == [0, 0, 3]
    finally:
        process.signalProcess("TERM")
        await watcher.ended


@pytest_twisted.ensureDeferred
async def test_portInUseIsOneLine(backends, tmp_path):
    """
    A client port already in use stops startup with one line naming it, a
    non-zero exit and no traceback.
    """
    from twisted.internet import reactor

    taken = backends[0].portNumber
    watcher = TwistdProcess()
    arguments = [
        *twistdCommand(),
        "--pidfile=",
        "-n",
        "wslb",
        f"--port=tcp:{taken}:interface=127.0.0.1",
        "--monitor-port=tcp:0:interface=127.0.0.1",
    ]
    reactor.spawnProcess(
        watcher, arguments[0], arguments, env=twistdEnvironment(), path=str(tmp_path)
    )
    reason = await watcher.ended
    assert reason.exitCode != 0
    assert f"cannot listen on 'tcp:{taken}:interface=127.0.0.1' (client port)" in (
        watcher.output
    )
    assert "Traceback" not in watcher.output


def test_portInUseStopsADaemonToo(backends, tmp_path):
    """
    Daemonized (no C{-n}), a client port already in use makes twistd exit
    non-zero with the reason, instead of leaving it waiting on its child.
    """
    import subprocess

    taken = backends[0].portNumber
    result = subprocess.run(
        [
            *twistdCommand(),
            f"--pidfile={tmp_path / 'wslb.pid'}",
            f"--logfile={tmp_path / 'wslb.log'}",
            "wslb",
            f"--port=tcp:{taken}:interface=127.0.0.1",
            "--monitor-port=tcp:0:interface=127.0.0.1",
        ],
        env=twistdEnvironment(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "cannot listen on" in result.stdout + result.stderr
    assert not (tmp_path / "wslb.pid").exists()
