"""
Working around Autobahn where it costs the load balancer dearly under a
flood of connections.

  - Autobahn formats its whole configuration with C{pprint.pformat} for a
    debug log line each time a connection is made (in C{_connectionMade}),
    and a client connection's transport details for another (in
    C{startHandshake}), whether or not debug lines are logged: about 80
    microseconds per call, half the cost of accepting a client.
  - It resolves a closed connection's C{is_closed} Deferred with the
    protocol itself, a reference cycle: every closed connection is left to
    the cyclic garbage collector, whose full collections then stall the
    reactor for tens of milliseconds per thousand connections.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import autobahn.websocket.protocol as _protocol
import txaio
from twisted.internet.defer import succeed

_Method = TypeVar("_Method", bound=Callable[..., Any])

_DEBUG_LEVELS = frozenset({"debug", "trace"})


def _notFormatted(value: object, *args: object, **kwargs: object) -> str:
    return "(not formatted: debug logging is off)"


def withoutDebugFormatting(method: _Method) -> _Method:
    """
    Wrap an Autobahn protocol method so that, unless debug logging is on,
    the C{pformat} it calls for its debug log lines does nothing.

    Autobahn looks C{pformat} up in its module when it calls it, so it is
    swapped there for the duration of the call (the reactor runs one call at
    a time).  Only debug lines use it in the wrapped methods.

    @param method: C{WebSocketProtocol._connectionMade} or the like.
    @return: the wrapped method, to assign in a subclass.
    """

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if txaio.get_global_log_level() in _DEBUG_LEVELS:  # type: ignore[attr-defined]
            return method(self, *args, **kwargs)
        original = _protocol.pformat
        _protocol.pformat = _notFormatted  # type: ignore[assignment]
        try:
            return method(self, *args, **kwargs)
        finally:
            _protocol.pformat = original

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper  # type: ignore[return-value]


def releasedWhenLost(method: _Method) -> _Method:
    """
    Wrap an Autobahn protocol's C{_connectionLost} so that, once the
    connection is gone, its C{is_closed} no longer refers to the protocol
    (it is replaced by a fired Deferred with no result), and the protocol
    is freed as soon as nothing else refers to it.

    @param method: C{WebSocketServerProtocol._connectionLost} or the like.
    @return: the wrapped method, to assign in a subclass.
    """

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        finally:
            self.is_closed = succeed(None)

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper  # type: ignore[return-value]
