"""
The one-process demo: three quote backends behind the load balancer.
"""

from __future__ import annotations

import json

import pytest_twisted
from helpers import connectClient, twistdCommand, twistdEnvironment
from test_twistd import TwistdProcess


async def _subscribe(port: int, symbol: str = "AAPL") -> tuple[object, str]:
    client = connectClient(port)
    protocol = await client.opened
    welcome = json.loads((await client.messages.get())[0])
    assert welcome["type"] == "welcome"
    protocol.sendMessage(
        json.dumps({"type": "subscribe", "symbols": [symbol]}).encode()
    )
    assert json.loads((await client.messages.get())[0])["type"] == "subscribed"
    quote = json.loads((await client.messages.get())[0])
    assert quote["type"] == "quote"
    assert quote["symbol"] == symbol
    assert quote["server"] == welcome["server"]
    return client, quote["server"]


@pytest_twisted.ensureDeferred
async def test_demoServesQuotesFromEveryBackendInTurn():
    """
    The demo's load balancer spreads clients over its three quote backends,
    and each client receives quotes naming the backend serving it; the demo
    stops cleanly, closing its clients with 1001.
    """
    from wslb_twisted.demo.demo import DemoService

    demo = DemoService(basePort=0, rate=50.0)
    demo.privilegedStartService()
    demo.startService()
    try:
        await demo.loadBalancer.checker.whenFirstRoundDone()
        port = demo.loadBalancer.clientListener.port.getHost().port
        served = []
        clients = []
        for _ in range(3):
            client, server = await _subscribe(port)
            served.append(server)
            clients.append(client)
        assert served == ["backend-1", "backend-2", "backend-3"]
    finally:
        await demo.stopService()
    for client in clients:
        assert (await client.closed)[1] == 1001


@pytest_twisted.ensureDeferred
async def test_twistdDemoStartsAndStops(tmp_path):
    """
    C{twistd -n wslb-demo} runs the demo, serves a client through the load
    balancer, and stops on SIGTERM without a traceback.
    """
    from twisted.internet import reactor

    watcher = TwistdProcess()
    arguments = [*twistdCommand(), "--pidfile=", "-n", "wslb-demo", "--base-port=0"]
    process = reactor.spawnProcess(
        watcher, arguments[0], arguments, env=twistdEnvironment(), path=str(tmp_path)
    )
    try:
        ports = await watcher.listening
        await _subscribe(ports["client"])
    finally:
        process.signalProcess("TERM")
        await watcher.ended
    assert "wslb demo running" in watcher.output
    assert "Traceback" not in watcher.output
