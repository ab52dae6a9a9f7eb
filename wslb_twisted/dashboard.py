"""
The dashboard: one self-contained HTML page, served at C{/} on the monitoring
port, that shows the backends from C{/status} and a live quote ticker
connected through the load balancer.

The page is C{dashboard.html}, shipped with the package.  It needs the load
balancer's client port to open its WebSocket, and that port is only known
once the load balancer listens (it may be ephemeral), so the resource asks
for it at every request and writes it into the page as C{{"wsPort": N}}.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib.resources import files

from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request

__all__ = [
    "CONFIG_PLACEHOLDER",
    "CONTENT_SECURITY_POLICY",
    "DashboardResource",
    "dashboardTemplate",
]

CONFIG_PLACEHOLDER = b'"__WSLB_CONFIG__"'
"""
The JSON string in the page's C{wslb-config} script element that is replaced
with the page's configuration.  Left in place (the file opened directly), it
still parses, and the page asks for a C{?ws=} address instead.
"""

CONTENT_SECURITY_POLICY = (
    b"default-src 'none'; "
    b"script-src 'self' 'unsafe-inline'; "
    b"style-src 'self' 'unsafe-inline'; "
    b"img-src 'self' data:; "
    b"connect-src 'self' ws: wss:; "
    b"base-uri 'none'; "
    b"form-action 'none'; "
    b"frame-ancestors 'none'"
)
"""
What the page may load: its own inline script and style, C{/status} from the
monitoring port, and WebSockets to any host (the load balancer's client port
is another origin, and C{?ws=} may name another host).
"""


def dashboardTemplate() -> bytes:
    """
    Read the page shipped with the package.

    @return: the HTML, with L{CONFIG_PLACEHOLDER} still in it.
    """
    return files("wslb_twisted").joinpath("dashboard.html").read_bytes()


class DashboardResource(Resource):
    """
    The dashboard page, for C{GET} and C{HEAD}; other methods answer 405.

    @ivar clientPort: called at each request for the load balancer's client
        port, or C{None} when there is none to tell (not listening yet, or
        not on a TCP port).
    """

    isLeaf = True
    allowedMethods = (b"GET", b"HEAD")

    def __init__(
        self,
        clientPort: Callable[[], int | None] | None = None,
        template: bytes | None = None,
    ) -> None:
        """
        @param clientPort: returns the load balancer's client port, or
            C{None}; when not given, the page is told no port and asks for
            C{?ws=}.
        @param template: the page, with L{CONFIG_PLACEHOLDER} in it; the one
            shipped with the package when C{None}.
        """
        super().__init__()
        self.clientPort = clientPort
        self._template = dashboardTemplate() if template is None else template
        if self._template.count(CONFIG_PLACEHOLDER) != 1:
            raise ValueError("the dashboard page must hold its placeholder once")

    def page(self) -> bytes:
        """
        The page, configured for the load balancer as it is now.

        @return: the HTML, with C{{"wsPort": N}} (or C{null}) in place of
            L{CONFIG_PLACEHOLDER}.
        """
        port = None if self.clientPort is None else self.clientPort()
        config = json.dumps({"wsPort": port}).replace("<", "\\u003c")
        return self._template.replace(CONFIG_PLACEHOLDER, config.encode("utf-8"))

    def render(self, request: Request) -> bytes:
        """
        Answer with the page, uncached, under a strict content security
        policy.

        @param request: the request being answered.
        @return: the page (nothing for C{HEAD}), or a short text for a
            method other than C{GET} and C{HEAD}.
        """
        if request.method not in self.allowedMethods:
            request.setResponseCode(http.NOT_ALLOWED)
            request.setHeader(b"Allow", b", ".join(self.allowedMethods))
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"method not allowed\n"
        body = self.page()
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"Content-Security-Policy", CONTENT_SECURITY_POLICY)
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Referrer-Policy", b"no-referrer")
        request.setHeader(b"Content-Length", b"%d" % (len(body),))
        if request.method == b"HEAD":
            return b""
        return body
