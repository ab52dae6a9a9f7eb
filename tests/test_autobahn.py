"""
L{wslb_twisted._autobahn}: the load balancer's connections skip the debug
formatting Autobahn does on every connection (unless debug logging is on),
and are freed when they close without waiting for the cyclic garbage
collector.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from typing import Any

import autobahn.websocket.protocol
import pytest
import txaio
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from wslb_twisted.backends import Backend, BackendPool
from wslb_twisted.config import Settings
from wslb_twisted.relay import RelayFactory
from wslb_twisted.strategies import RoundRobinStrategy


@pytest.fixture
def formatted(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """
    What Autobahn asks C{pformat} to format.
    """
    calls: list[object] = []
    real = autobahn.websocket.protocol.pformat

    def counting(value: object, *args: object, **kwargs: object) -> str:
        calls.append(value)
        return real(value, *args, **kwargs)

    monkeypatch.setattr(autobahn.websocket.protocol, "pformat", counting)
    yield calls
    assert autobahn.websocket.protocol.pformat is counting


def _acceptClient() -> Any:
    settings = Settings(backends=[Backend(id="b", host="127.0.0.1", port=1)])
    pool = BackendPool(list(settings.backends))
    relay = RelayFactory(pool, RoundRobinStrategy(), settings, reactor=Clock())
    client = relay.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    assert client is not None
    client.makeConnection(StringTransport())
    return client


def test_acceptingAClientFormatsNothing(formatted: list[object]) -> None:
    """
    Accepting a client does not format Autobahn's configuration for a debug
    line that is not logged.
    """
    _acceptClient()
    assert formatted == []


def test_debugLoggingStillShowsTheConfiguration(formatted: list[object]) -> None:
    """
    With Autobahn's debug logging on, its debug line about a new connection
    has the configuration as before.
    """
    level = txaio.get_global_log_level()
    txaio.set_global_log_level("debug")
    try:
        _acceptClient()
    finally:
        txaio.set_global_log_level(level)
    assert len(formatted) == 1


def test_aClosedClientIsFreedAtOnce() -> None:
    """
    A client whose connection is gone is freed as soon as nothing refers to
    it, without the cyclic garbage collector (whose full collections stall
    the reactor): Autobahn's C{is_closed}, resolved with the protocol
    itself, no longer holds it.
    """
    client = _acceptClient()
    client.connectionLost(Failure(ConnectionDone()))
    assert client.is_closed.called
    gone = weakref.ref(client)
    enabled = gc.isenabled()
    gc.disable()
    try:
        del client
        assert gone() is None
    finally:
        if enabled:
            gc.enable()
