"""
JSON answers for the small HTTP endpoints (the monitoring port and the demo
backends' health ports).
"""

from __future__ import annotations

import json

from twisted.web import http
from twisted.web.server import Request


def respondJSON(request: Request, code: int, body: object) -> bytes:
    """
    Answer C{request} with C{body} as JSON, uncached; no body for C{HEAD}.

    @param request: the request being answered.
    @param code: the HTTP status code.
    @param body: anything C{json.dumps} takes.
    @return: what the resource's C{render} returns.
    """
    payload = json.dumps(body).encode("utf-8") + b"\n"
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"Content-Length", b"%d" % (len(payload),))
    if request.method == b"HEAD":
        return b""
    return payload


def notFoundJSON(request: Request) -> bytes:
    """
    Answer C{request} with a JSON 404 naming its path.
    """
    path = request.path.decode("utf-8", "replace")
    return respondJSON(request, http.NOT_FOUND, {"error": "not found", "path": path})
