"""
Tests for L{wslb_twisted.dashboard}: the page's HTTP answers, and the page
itself in a real headless Chromium, driven over the Chrome DevTools Protocol
with an Autobahn client, against the one-process demo.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from html.parser import HTMLParser
from itertools import count
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.pages import notFound
from twisted.web.resource import Resource
from twisted.web.server import Site

from wslb_twisted.backends import BackendPool
from wslb_twisted.dashboard import (
    CONFIG_PLACEHOLDER,
    DashboardResource,
    dashboardTemplate,
)
from wslb_twisted.monitor import makeMonitorSite

CHROMIUM = "/usr/bin/chromium"
STEP = 0.1
"""
Seconds between two looks at something the tests wait for.
"""


class Answer:
    """
    One HTTP answer: code, headers (lower-case names) and body.
    """

    def __init__(self, code: int, headers: dict[str, list[str]], body: bytes) -> None:
        self.code = code
        self.headers = headers
        self.body = body

    def header(self, name: str) -> list[str]:
        return self.headers.get(name.lower(), [])


async def fetch(method: str, url: str) -> Answer:
    """
    Make one HTTP request on a connection of its own, and read the answer.
    """
    from twisted.internet import reactor

    connections = HTTPConnectionPool(reactor, persistent=False)
    client = treq.client.HTTPClient(Agent(reactor, pool=connections))
    try:
        response = await client.request(method, url, timeout=10)
        body = await treq.content(response)
    finally:
        await connections.closeCachedConnections()
    headers = {
        name.decode("ascii").lower(): [v.decode("latin-1") for v in values]
        for name, values in response.headers.getAllRawHeaders()
    }
    return Answer(response.code, headers, body)


@pytest_twisted.async_yield_fixture
async def monitorURL() -> AsyncIterator[Callable[[int | None], str]]:
    """
    Start monitoring sites on 127.0.0.1 telling the given client port;
    stopped afterwards.
    """
    from twisted.internet import reactor

    listeners = []

    def start(clientPort: int | None) -> str:
        site = makeMonitorSite(
            BackendPool([]), "round-robin", Clock(), clientPort=lambda: clientPort
        )
        listener = reactor.listenTCP(0, site, interface="127.0.0.1")
        listeners.append(listener)
        return f"http://127.0.0.1:{listener.getHost().port}"

    yield start
    for listener in listeners:
        await listener.stopListening()


def pageConfig(body: bytes) -> Any:
    """
    The configuration the server wrote into a page.
    """
    match = re.search(
        rb'<script id="wslb-config" type="application/json">(.*?)</script>', body
    )
    assert match is not None
    return json.loads(match.group(1))


@pytest_twisted.ensureDeferred
async def test_pageTellsTheClientPort(monitorURL: Callable[..., str]) -> None:
    """
    C{GET /} answers the dashboard as uncached UTF-8 HTML under a content
    security policy that allows only the page's own origin, its inline script
    and style, and WebSockets; the page is told the load balancer's client
    port.
    """
    answer = await fetch("GET", monitorURL(43210) + "/")
    assert answer.code == 200
    assert answer.header("Content-Type") == ["text/html; charset=utf-8"]
    assert answer.header("Cache-Control") == ["no-store"]
    [policy] = answer.header("Content-Security-Policy")
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self' 'unsafe-inline'"
    assert directives["connect-src"] == "'self' ws: wss:"
    assert pageConfig(answer.body) == {"wsPort": 43210}


@pytest_twisted.ensureDeferred
async def test_pageWithoutClientPort(monitorURL: Callable[..., str]) -> None:
    """
    When the client port is unknown (not listening yet), the page is told
    C{null}, and asks for a C{?ws=} address itself.
    """
    answer = await fetch("GET", monitorURL(None) + "/?ws=ws://example.test:1/")
    assert pageConfig(answer.body) == {"wsPort": None}


def test_clientPortIsAskedForAtEachRequest() -> None:
    """
    The client port is read when the page is served, not when the resource
    is made: an ephemeral port is only known once the load balancer listens.
    """
    ports = iter([None, 3000])
    resource = DashboardResource(lambda: next(ports))
    assert pageConfig(resource.page()) == {"wsPort": None}
    assert pageConfig(resource.page()) == {"wsPort": 3000}


@pytest_twisted.ensureDeferred
async def test_headAndOtherMethods(monitorURL: Callable[..., str]) -> None:
    """
    C{HEAD /} answers the headers of C{GET /} without the page; other methods
    answer 405 naming the allowed ones.
    """
    url = monitorURL(3000) + "/"
    get = await fetch("GET", url)
    head = await fetch("HEAD", url)
    assert (head.code, head.body) == (200, b"")
    assert head.header("Content-Length") == [str(len(get.body))]
    post = await fetch("POST", url)
    assert post.code == 405
    assert post.header("Allow") == ["GET, HEAD"]


@pytest.mark.parametrize("path", ["//", "/index.html", "/?", "/dashboard"])
@pytest_twisted.ensureDeferred
async def test_onlyTheRootIsThePage(monitorURL: Callable[..., str], path: str) -> None:
    """
    The page lives at C{/} only (a query string aside); other paths are the
    monitor's JSON 404.
    """
    answer = await fetch("GET", monitorURL(3000) + path)
    if path == "/?":
        assert answer.code == 200
    else:
        assert answer.code == 404
        assert json.loads(answer.body)["error"] == "not found"


class _References(HTMLParser):
    """
    Collects what an HTML page would load: script sources, link targets and
    the C{src} of anything else.
    """

    def __init__(self) -> None:
        super().__init__()
        self.loaded: list[tuple[str, str, str]] = []
        self.icons: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "link" and attributes.get("rel") == "icon":
            self.icons.append(attributes.get("href") or "")
            return
        for name in ("src", "href"):
            value = attributes.get(name)
            if value is not None:
                self.loaded.append((tag, name, value))


def test_pageIsSelfContained() -> None:
    """
    The page shipped with the package loads nothing but itself: no script,
    style sheet, font or image from elsewhere, and an inline empty icon so
    that the browser asks for no C{/favicon.ico}.
    """
    template = dashboardTemplate()
    assert template.count(CONFIG_PLACEHOLDER) == 1
    references = _References()
    references.feed(template.decode("utf-8"))
    assert references.loaded == []
    assert references.icons == ["data:,"]
    assert b"@import" not in template
    assert b"url(" not in template


class DevToolsError(Exception):
    """
    Chromium answered a DevTools command with an error.
    """


class _DevToolsProtocol(WebSocketClientProtocol):
    """
    The DevTools WebSocket: JSON messages, each a command's answer or an event.
    """

    factory: _DevToolsFactory

    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.received(json.loads(payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.lost(f"DevTools connection closed ({code} {reason})")


class _DevToolsFactory(WebSocketClientFactory):
    """
    One DevTools connection: the commands awaiting their answer, and where
    events go.
    """

    protocol = _DevToolsProtocol
    noisy = False

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.opened: Deferred[_DevToolsProtocol] = Deferred()
        self.pending: dict[int, Deferred[dict[str, Any]]] = {}
        self.onEvent: Callable[[str, dict[str, Any]], None] = lambda m, p: None

    def received(self, message: dict[str, Any]) -> None:
        if "id" not in message:
            self.onEvent(message.get("method", ""), message.get("params", {}))
            return
        waiting = self.pending.pop(message["id"], None)
        if waiting is None:
            return
        if "error" in message:
            waiting.errback(DevToolsError(message["error"].get("message", "")))
        else:
            waiting.callback(message.get("result", {}))

    def lost(self, why: str) -> None:
        if not self.opened.called:
            self.opened.errback(DevToolsError(why))
        pending, self.pending = self.pending, {}
        for waiting in pending.values():
            waiting.errback(DevToolsError(why))

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self.lost(f"cannot connect to DevTools: {reason.getErrorMessage()}")


class Page:
    """
    One Chromium tab over the DevTools Protocol, recording every console
    error or warning, uncaught exception and browser log error.

    @ivar problems: what was recorded, as readable lines.
    """

    def __init__(self, factory: _DevToolsFactory, protocol: _DevToolsProtocol) -> None:
        self._factory = factory
        self._protocol = protocol
        self._ids = count(1)
        self.problems: list[str] = []
        factory.onEvent = self._event

    def _event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.consoleAPICalled":
            if params.get("type") in ("error", "warning", "assert"):
                texts = [
                    str(arg.get("value", arg.get("description", "")))
                    for arg in params.get("args", [])
                ]
                self.problems.append(f"console.{params['type']}: {' '.join(texts)}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            description = details.get("exception", {}).get("description", "")
            self.problems.append(f"exception: {details.get('text')} {description}")
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            if entry.get("level") in ("error", "warning"):
                self.problems.append(
                    f"log {entry.get('level')} ({entry.get('source')}): "
                    f"{entry.get('text')} {entry.get('url', '')}".rstrip()
                )

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """
        Send a DevTools command and wait (at most 10 s) for its result.
        """
        from twisted.internet import reactor

        commandId = next(self._ids)
        answer: Deferred[dict[str, Any]] = Deferred()
        self._factory.pending[commandId] = answer
        self._protocol.sendMessage(
            json.dumps({"id": commandId, "method": method, "params": params}).encode()
        )
        answer.addTimeout(10, reactor)
        try:
            return await answer
        finally:
            self._factory.pending.pop(commandId, None)

    async def evaluate(self, expression: str) -> Any:
        """
        The value of a JavaScript expression in the page.
        """
        result = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise DevToolsError(result["exceptionDetails"].get("text", "exception"))
        return result["result"].get("value")

    async def waitFor(
        self, expression: str, satisfied: Callable[[Any], bool], timeout: float = 20
    ) -> Any:
        """
        Evaluate C{expression} until its value satisfies C{satisfied}, for at
        most C{timeout} seconds.

        @return: the satisfying value.
        @raise AssertionError: on timeout, showing the last value.
        """
        from twisted.internet import reactor

        deadline = reactor.seconds() + timeout
        value: Any = None
        while True:
            try:
                value = await self.evaluate(expression)
            except DevToolsError as error:  # the page is still navigating
                value = f"<{error}>"
            else:
                if satisfied(value):
                    return value
            if reactor.seconds() > deadline:
                raise AssertionError(
                    f"not satisfied in {timeout} s; last value: {value!r}; "
                    f"recorded: {self.problems!r}"
                )
            await deferLater(reactor, STEP, lambda: None)

    async def navigate(self, url: str) -> None:
        """
        Load a page in the tab.
        """
        result = await self.call("Page.navigate", url=url)
        assert "errorText" not in result, result

    def close(self) -> None:
        self._protocol.dropConnection(abort=True)


async def _waitForFile(
    path: Path, timeout: float, process: subprocess.Popen[bytes], log: Path
) -> str:
    """
    The contents of a file Chromium writes once it is ready, waiting at most
    C{timeout} seconds.
    """
    from twisted.internet import reactor

    deadline = reactor.seconds() + timeout
    while True:
        if path.exists():
            text = path.read_text()
            if "\n" in text:
                return text
        if process.poll() is not None or reactor.seconds() > deadline:
            tail = log.read_bytes()[-4000:].decode("utf-8", "replace")
            raise AssertionError(f"Chromium did not write {path.name}:\n{tail}")
        await deferLater(reactor, STEP, lambda: None)


async def _pageTarget(port: int, timeout: float) -> str:
    """
    The DevTools WebSocket address of Chromium's first tab.
    """
    from twisted.internet import reactor

    deadline = reactor.seconds() + timeout
    while True:
        answer = await fetch("GET", f"http://127.0.0.1:{port}/json/list")
        pages = [t for t in json.loads(answer.body) if t.get("type") == "page"]
        if pages:
            return str(pages[0]["webSocketDebuggerUrl"])
        if reactor.seconds() > deadline:
            raise AssertionError("Chromium shows no page target")
        await deferLater(reactor, STEP, lambda: None)


def _stopChromium(process: subprocess.Popen[bytes]) -> None:
    """
    Stop Chromium and every process it started (its own process group).
    """
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest_twisted.async_yield_fixture
async def demo() -> AsyncIterator[Any]:
    """
    The one-process demo on ephemeral ports of 127.0.0.1, with its first
    health checks done; stopped afterwards.
    """
    from wslb_twisted.demo.demo import DemoService

    service = DemoService(basePort=0, interface="127.0.0.1", rate=20.0)
    service.privilegedStartService()
    service.startService()
    try:
        await service.loadBalancer.checker.whenFirstRoundDone()
        yield service
    finally:
        await service.stopService()


@pytest.fixture
def chromium() -> str:
    """
    Chromium's path; the test is skipped without it.
    """
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip("chromium not installed: apt-get install chromium")
    return CHROMIUM


@pytest_twisted.async_yield_fixture
async def page(chromium: str, demo: Any, tmp_path: Path) -> AsyncIterator[Page]:
    """
    A blank tab of a headless Chromium started for the test, with the
    Runtime, Log and Page domains enabled; Chromium is stopped afterwards
    (before the demo, so that the page does not see it go away).
    """
    from twisted.internet import reactor

    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    log = tmp_path / "chromium.log"
    output = log.open("wb")
    process = subprocess.Popen(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,900",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "about:blank",
        ],
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    tab = None
    try:
        activePort = await _waitForFile(
            profile / "DevToolsActivePort", 30, process, log
        )
        port = int(activePort.splitlines()[0])
        url = await _pageTarget(port, 10)
        factory = _DevToolsFactory(url)
        reactor.connectTCP("127.0.0.1", port, factory, timeout=10)
        protocol = await factory.opened.addTimeout(10, reactor)
        tab = Page(factory, protocol)
        await tab.call("Runtime.enable")
        await tab.call("Log.enable")
        await tab.call("Page.enable")
        yield tab
    finally:
        if tab is not None:
            tab.close()
        _stopChromium(process)
        output.close()
        shutil.rmtree(profile, ignore_errors=True)


STATE = """(() => {
  const text = (id) => document.getElementById(id).textContent;
  return {
    monitor: document.body.dataset.monitor || null,
    banner: text("monitor-banner"),
    backends: [...document.querySelectorAll("#backends tbody tr[data-backend]")]
      .map((row) => ({
        id: row.dataset.backend,
        health: row.dataset.health,
        connections: row.querySelector("[data-connections]").textContent,
      })),
    series: [...document.querySelectorAll("#chart [data-series]")]
      .map((path) => path.dataset.series),
    servedBy: document.getElementById("served-by").dataset.server,
    quotes: [...document.querySelectorAll("#quotes tbody tr[data-symbol]")]
      .map((row) => ({
        symbol: row.dataset.symbol,
        price: row.cells[1].textContent,
        change: row.cells[2].className,
        server: row.cells[5].dataset.server,
      })),
  };
})()"""

BACKENDS = ["backend-1", "backend-2", "backend-3"]


def _tickerServed(state: Any) -> bool:
    """
    The ticker shows quotes of every demo symbol, all from the backend it
    names as serving it.
    """
    quotes = state["quotes"]
    return (
        state["servedBy"] in BACKENDS
        and len(quotes) == 5
        and all(q["server"] == state["servedBy"] for q in quotes)
        and all(re.fullmatch(r"\d+\.\d\d", q["price"]) for q in quotes)
    )


@pytest_twisted.ensureDeferred
async def test_dashboardShowsBackendsAndLiveQuotes(demo: Any, page: Page) -> None:
    """
    In a real browser, the dashboard served by the demo's monitoring port
    shows its three backends as healthy, charts them, and its ticker receives
    quotes through the load balancer from the backend it names; that
    backend's connection (the ticker's own) shows up in the table at the
    next refresh; nothing is logged to the console.
    """
    monitorPort = demo.loadBalancer.monitorListener.port.getHost().port
    await page.navigate(f"http://127.0.0.1:{monitorPort}/")

    def ready(state: Any) -> bool:
        backends = state["backends"]
        connections = {b["id"]: b["connections"] for b in backends}
        return (
            state["monitor"] == "reachable"
            and [b["id"] for b in backends] == BACKENDS
            and all(b["health"] == "healthy" for b in backends)
            and state["series"] == BACKENDS
            and _tickerServed(state)
            and connections
            == {b: "1" if b == state["servedBy"] else "0" for b in BACKENDS}
        )

    await page.waitFor(STATE, ready)
    assert page.problems == []


@pytest_twisted.ensureDeferred
async def test_dashboardSurvivesLostConnections(demo: Any, page: Page) -> None:
    """
    Without a monitoring API to poll, the page says that monitoring is
    unreachable instead of failing, and its ticker still works; when the
    backend serving the ticker goes away, the page reconnects, the load
    balancer hands it another backend, and quotes flow again.  A C{?ws=}
    address replaces the configured one.
    """
    from twisted.internet import reactor

    root = Resource()
    root.putChild(b"", DashboardResource(lambda: 1))
    root.putChild(b"status", notFound())
    listener = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
    try:
        lbPort = demo.loadBalancer.clientListener.port.getHost().port
        await page.navigate(
            f"http://127.0.0.1:{listener.getHost().port}/?ws=ws://127.0.0.1:{lbPort}/"
        )
        first = await page.waitFor(
            STATE,
            lambda s: s["monitor"] == "unreachable" and _tickerServed(s),
        )
        assert "Monitoring unreachable (HTTP 404)" in first["banner"]
        serving = demo.backends[BACKENDS.index(first["servedBy"])].factory
        for client in list(serving.clients):
            client.sendCloseFrame(code=1001, reasonUtf8=b"backend restarting")
        await page.waitFor(
            STATE,
            lambda s: _tickerServed(s) and s["servedBy"] != first["servedBy"],
        )
    finally:
        await listener.stopListening()
    unexpected = [
        problem
        for problem in page.problems
        if not re.fullmatch(
            r"log error \(network\): Failed to load resource: the server "
            r"responded with a status of 404 \(Not Found\) http://127\.0\.0\.1:\d+/status",
            problem,
        )
    ]
    assert unexpected == []
