"""
Real servers and clients on 127.0.0.1 for the tests: small Autobahn backends
with HTTP health endpoints, a recording WebSocket client, and a load balancer
started in-process on ephemeral ports.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    DeferredQueue,
    inlineCallbacks,
)
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from wslb_twisted.backends import Backend
from wslb_twisted.config import Settings


class BackendServerProtocol(WebSocketServerProtocol):
    """
    A test backend: echoes every message, and obeys a few text commands:

      - C{"close:CODE:REASON"}: close with that code and reason;
      - C{"blast:COUNT:SIZE"}: write COUNT binary messages of SIZE bytes at
        once, ignoring backpressure (they pile up in its own transport when
        the load balancer stops reading), then fire C{factory.blasted};
      - C{"drop"}: drop the TCP connection without a closing handshake;
      - C{"stream:SIZE"}: stream binary messages of SIZE bytes, numbered
        from 0 in their first 8 bytes, for as long as its transport takes
        them: its transport pauses it when its buffer is full (firing
        C{factory.streamPaused}) and resumes it when the buffer drains.
    """

    factory: BackendServerFactory

    def onConnect(self, request: Any) -> Any:
        if self.factory.refuseHandshake:
            raise ConnectionDeny(403, "refused by test backend")
        self.factory.requests.append(request)
        self.factory.uris.append(self.http_request_uri)
        for wanted in request.protocols:
            if wanted in self.factory.subprotocols:
                return wanted
        return None

    def onOpen(self) -> None:
        self.factory.clients.append(self)
        if self.factory.greeting is not None:
            self.sendMessage(self.factory.greeting)
        self.factory.opened.put(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.received.append((payload, isBinary))
        if not isBinary and payload.startswith(b"close:"):
            _, code, reason = payload.decode().split(":", 2)
            self.sendClose(int(code), reason) if int(code) == 1000 or int(
                code
            ) >= 3000 else self.sendCloseFrame(int(code), reason.encode())
            return
        if not isBinary and payload.startswith(b"blast:"):
            _, count, size = payload.split(b":")
            for n in range(int(count)):
                self.sendMessage(n.to_bytes(4, "big") * (int(size) // 4), True)
            self.factory.blasted.callback(self)
            return
        if not isBinary and payload == b"drop":
            self.transport.abortConnection()
            return
        if not isBinary and payload.startswith(b"stream:"):
            self._streamChunk = b"x" * int(payload.split(b":")[1])
            self.transport.registerProducer(self, True)
            self._streaming = True
            self.streamed = 0
            self.sent = 0
            self.resumeProducing()
            return
        if self.factory.echo:
            self.sendMessage(payload, isBinary)

    def resumeProducing(self) -> None:
        self._streaming = True
        while self._streaming and self.state == self.STATE_OPEN:
            self.sendMessage(self.sent.to_bytes(8, "big") + self._streamChunk[8:], True)
            self.sent += 1
            self.streamed += len(self._streamChunk)

    def pauseProducing(self) -> None:
        if self._streaming:
            self._streaming = False
            paused, self.factory.streamPaused = self.factory.streamPaused, Deferred()
            paused.callback(self)

    def stopProducing(self) -> None:
        self._streaming = False

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self in self.factory.clients:
            self.factory.clients.remove(self)
        self.factory.closes.put((wasClean, code, reason))


class BackendServerFactory(WebSocketServerFactory):
    protocol = BackendServerProtocol

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.requests: list[Any] = []
        self.uris: list[str] = []
        self.clients: list[BackendServerProtocol] = []
        self.received: list[tuple[bytes, bool]] = []
        self.opened: DeferredQueue[BackendServerProtocol] = DeferredQueue()
        self.closes: DeferredQueue[tuple[bool, int | None, str | None]] = (
            DeferredQueue()
        )
        self.streamPaused: Deferred[BackendServerProtocol] = Deferred()
        self.blasted: Deferred[BackendServerProtocol] = Deferred()
        self.subprotocols: set[str] = {"quotes.v2", "quotes.v1"}
        self.refuseHandshake = False
        self.echo = True
        self.greeting: bytes | None = None
        self.setProtocolOptions(
            maxMessagePayloadSize=0,
            maxFramePayloadSize=0,
            echoCloseCodeReason=True,
            failByDrop=False,
        )


class HealthResource(Resource):
    """
    C{GET /health}: answers with C{self.code}.
    """

    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.code = 200

    def hold(self) -> None:
        """
        Keep health requests waiting until L{release}.
        """
        self.held: list[Any] | None = []

    def release(self) -> None:
        """
        Answer the held health requests, and stop holding new ones.
        """
        held, self.held = self.held or [], None
        for request in held:
            request.write(self._answer(request))
            request.finish()

    held: list[Any] | None = None

    def render_GET(self, request: Any) -> Any:
        if self.held is not None:
            self.held.append(request)
            return NOT_DONE_YET
        return self._answer(request)

    def _answer(self, request: Any) -> bytes:
        request.setResponseCode(self.code)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"name": self.name, "ok": self.code == 200}).encode()


@dataclass
class RunningBackend:
    """
    A test backend listening on 127.0.0.1, with its health endpoint.
    """

    name: str
    factory: BackendServerFactory
    health: HealthResource
    port: Any
    healthPort: Any

    def __post_init__(self) -> None:
        self.portNumber = int(self.port.getHost().port)
        self.healthPortNumber = int(self.healthPort.getHost().port)

    def spec(self, weight: int = 1) -> Backend:
        return Backend(
            id=self.name,
            host="127.0.0.1",
            port=self.portNumber,
            weight=weight,
            healthPort=self.healthPortNumber,
        )

    def stop(self) -> Deferred[Any]:
        for client in list(self.factory.clients):
            client.transport.abortConnection()
        return DeferredList(
            [
                Deferred.fromCoroutine(_maybe(self.port.stopListening())),
                Deferred.fromCoroutine(_maybe(self.healthPort.stopListening())),
            ]
        )


async def _maybe(result: Any) -> None:
    if isinstance(result, Deferred):
        await result


def startBackend(name: str) -> RunningBackend:
    """
    Start a test backend and its health endpoint on ephemeral ports.
    """
    from twisted.internet import reactor

    factory = BackendServerFactory(name)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    health = HealthResource(name)
    root = Resource()
    root.putChild(b"health", health)
    site = Site(root)
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]
    healthPort = reactor.listenTCP(0, site, interface="127.0.0.1")
    return RunningBackend(name, factory, health, port, healthPort)


class RecordingClient(WebSocketClientProtocol):
    """
    A test client: records what it receives and how it was closed.
    """

    factory: RecordingClientFactory

    def connectionMade(self) -> None:
        self.factory.connection = self
        super().connectionMade()

    def onConnect(self, response: Any) -> None:
        self.factory.response = response

    def onOpen(self) -> None:
        self.factory.protocolInstance = self
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.messages.put((payload, isBinary))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.factory.opened.called:
            self.factory.opened.errback(
                ConnectionError(f"handshake failed: {self.factory.failure or reason}")
            )
        self.factory.closed.callback((wasClean, code, reason))

    def processHandshake(self) -> Any:
        end = self.data.find(b"\r\n\r\n")
        if end >= 0 and self.factory.statusLine is None:
            self.factory.statusLine = self.data[: self.data.find(b"\r\n")].decode()
        return super().processHandshake()

    def failHandshake(self, reason: str) -> None:
        self.factory.failure = reason
        super().failHandshake(reason)


class RecordingClientFactory(WebSocketClientFactory):
    protocol = RecordingClient

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.noisy = False
        self.opened: Deferred[RecordingClient] = Deferred()
        self.closed: Deferred[tuple[bool, int | None, str | None]] = Deferred()
        self.messages: DeferredQueue[tuple[bytes, bool]] = DeferredQueue()
        self.response: Any = None
        self.protocolInstance: RecordingClient | None = None
        self.connection: RecordingClient | None = None
        self.statusLine: str | None = None
        self.failure: str | None = None
        self.setProtocolOptions(maxMessagePayloadSize=0, maxFramePayloadSize=0)

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        if not self.opened.called:
            self.opened.errback(reason)
        if not self.closed.called:
            self.closed.callback((False, None, str(reason.value)))


def connectClient(
    port: int,
    path: str = "/",
    sourceAddress: str = "127.0.0.1",
    **kwargs: Any,
) -> RecordingClientFactory:
    """
    Open a WebSocket client to 127.0.0.1:C{port}, from C{sourceAddress}.
    """
    from twisted.internet import reactor

    factory = RecordingClientFactory(f"ws://127.0.0.1:{port}{path}", **kwargs)
    reactor.connectTCP(
        "127.0.0.1", port, factory, timeout=10, bindAddress=(sourceAddress, 0)
    )
    return factory


@dataclass
class RunningLoadBalancer:
    """
    An in-process load balancer on ephemeral ports.
    """

    service: Any
    backends: list[RunningBackend] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.service.clientListener.port.getHost().port)

    @property
    def monitorPort(self) -> int:
        return int(self.service.monitorListener.port.getHost().port)

    def backend(self, name: str) -> Backend:
        for backend in self.service.pool:
            if backend.id == name:
                return backend  # type: ignore[no-any-return]
        raise KeyError(name)


@inlineCallbacks
def startLoadBalancer(backends: list[Any], **overrides: Any) -> Any:
    """
    Start a load balancer in front of C{backends} (L{RunningBackend}s or
    L{Backend} specs) on 127.0.0.1 ephemeral ports, and wait for its first
    health checks.
    """
    from wslb_twisted.service import makeService

    specs = [b.spec() if isinstance(b, RunningBackend) else b for b in backends]
    settings = Settings(
        port=overrides.pop("port", "tcp:0:interface=127.0.0.1"),
        monitorPort="tcp:0:interface=127.0.0.1",
        backends=specs,
        healthInterval=overrides.pop("healthInterval", 60.0),
        healthTimeout=overrides.pop("healthTimeout", 2.0),
        connectTimeout=overrides.pop("connectTimeout", 3.0),
        drainSeconds=overrides.pop("drainSeconds", 0.0),
        **overrides,
    )
    service = makeService(settings)
    service.privilegedStartService()
    service.startService()
    yield service.checker.whenFirstRoundDone()
    return RunningLoadBalancer(
        service, [b for b in backends if isinstance(b, RunningBackend)]
    )


async def waitUntil(predicate: Any, timeout: float = 10.0) -> None:
    """
    Wait until C{predicate()} is true, for load balancer state that has no
    event of its own to await (it changes on the far end of a connection the
    test cannot observe directly); fails after C{timeout} seconds.
    """
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await deferLater(reactor, 0.005, lambda: None)


def bufferedBytes(transport: Any) -> int:
    """
    Bytes a Twisted TCP transport holds in user space, waiting to be sent.
    """
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


REPO = Path(__file__).resolve().parent.parent
SETTINGS_VARIABLES = (
    "LOAD_BALANCER_PORT",
    "LOAD_BALANCER_MONITORING_PORT",
    "LOAD_BALANCER_ALGORITHM",
    "HEALTH_CHECK_INTERVAL",
    "HEALTH_CHECK_TIMEOUT",
    "MAX_RETRIES",
    "BACKEND_SERVERS",
    "TRUSTED_PROXIES",
    "BACKEND_CONNECT_TIMEOUT",
    "LOG_FORMAT",
    "DRAIN_SECONDS",
    "CONFIG_FILE",
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


def twistdEnvironment(
    environ: dict[str, str] | None = None, path: list[str] | None = None
) -> dict[str, str]:
    """
    The environment for a twistd subprocess: this checkout (and C{path}) first
    on the Python path, none of wslb's settings inherited, C{environ} added.
    """
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *(path or [])]
        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    env.update(environ or {})
    return env
