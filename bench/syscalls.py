"""
Syscalls the load balancer makes per relayed message, counted with strace.

    bench/syscalls.py [--messages 5000] [--python PYTHON]

Starts a quote-like backend (one ~150-byte message per millisecond, so each
message is its own read, as in a dashboard's fan-out) and a client in this
process, the load balancer under C{strace -c -f} in another, relays
--messages messages backend -> client, and prints the load balancer's
syscalls per message.  Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    if shutil.which("strace") is None:
        print("strace is not installed (apt-get install strace)", file=sys.stderr)
        return 2

    from autobahn.twisted.websocket import (
        WebSocketClientFactory,
        WebSocketClientProtocol,
        WebSocketServerFactory,
        WebSocketServerProtocol,
    )
    from twisted.internet import reactor, task
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    total = args.messages
    payload = (
        b'{"type":"quote","symbol":"AAPL","price":187.42,"change":-0.13,'
        b'"volume":1200,"ts":"2026-11-27T00:00:00.000Z","server":"backend-1"}'
    ).ljust(150, b" ")

    class Pusher(WebSocketServerProtocol):
        def onOpen(self) -> None:
            self.sent = 0
            self.loop = task.LoopingCall(self.push)
            self.loop.start(0.001)

        def push(self) -> None:
            if self.sent >= total:
                self.loop.stop()
                return
            self.sendMessage(payload)
            self.sent += 1

        def onClose(self, *args: object) -> None:
            if getattr(self, "loop", None) is not None and self.loop.running:
                self.loop.stop()

    backendFactory = WebSocketServerFactory()
    backendFactory.protocol = Pusher
    backendPort = reactor.listenTCP(0, backendFactory, interface="127.0.0.1")
    health = Resource()
    health.putChild(b"health", Resource())
    health.children[b"health"].render_GET = lambda request: b"ok"  # type: ignore[attr-defined]
    healthPort = reactor.listenTCP(0, Site(health), interface="127.0.0.1")

    lbPort, monitorPort = freePort(), freePort()
    backends = (
        f'[{{"host":"127.0.0.1","port":{backendPort.getHost().port},'
        f'"healthPort":{healthPort.getHost().port}}}]'
    )
    out = tempfile.NamedTemporaryFile(suffix=".strace", delete=False).name
    twistd = os.path.join(os.path.dirname(args.python), "twistd")
    lb = subprocess.Popen(
        [
            "strace",
            "-c",
            "-f",
            "-o",
            out,
            twistd,
            "--pidfile=",
            "-n",
            "wslb",
            f"--port=tcp:{lbPort}:interface=127.0.0.1",
            f"--monitor-port=tcp:{monitorPort}:interface=127.0.0.1",
            f"--backends={backends}",
            "--health-interval=60000",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", lbPort), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)

    received = [0]

    class Counter(WebSocketClientProtocol):
        def onMessage(self, data: bytes, isBinary: bool) -> None:
            received[0] += 1
            if received[0] >= total:
                self.sendClose(1000)

        def onClose(self, *args: object) -> None:
            reactor.stop()

    clientFactory = WebSocketClientFactory(f"ws://127.0.0.1:{lbPort}/")
    clientFactory.protocol = Counter
    reactor.callLater(0.5, reactor.connectTCP, "127.0.0.1", lbPort, clientFactory)
    reactor.callLater(60 + total / 500, reactor.stop)
    reactor.run()

    # Stop the traced twistd (strace's child); strace exits with it.
    children = subprocess.run(
        ["pgrep", "-P", str(lb.pid)], capture_output=True, text=True
    ).stdout.split()
    for child in children:
        os.kill(int(child), signal.SIGTERM)
    try:
        lb.wait(timeout=30)
    except subprocess.TimeoutExpired:
        lb.kill()
        lb.wait()
    report = open(out).read()
    os.unlink(out)
    calls = {}
    for line in report.splitlines():
        match = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$", line)
        if match and match.group(2) != "total":
            calls[match.group(2)] = int(match.group(1))
    relayCalls = {
        name: count
        for name, count in calls.items()
        if name.startswith(("epoll", "recv", "send", "write", "poll", "select"))
    }
    n = max(received[0], 1)
    print(f"relayed {received[0]} messages of {len(payload)} bytes")
    print(f"{'syscall':<16}{'calls':>10}{'per message':>14}")
    for name, count in sorted(relayCalls.items(), key=lambda item: -item[1]):
        print(f"{name:<16}{count:>10}{count / n:>14.2f}")
    relayTotal = sum(relayCalls.values())
    print(f"{'relay total':<16}{relayTotal:>10}{relayTotal / n:>14.2f}")
    print("(startup syscalls such as imports are left out)")
    return 0 if received[0] >= total else 1


if __name__ == "__main__":
    sys.exit(main())
