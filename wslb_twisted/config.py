"""
Settings of the load balancer, from command-line options, the environment and
a C{.env} file, validated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network

from wslb_twisted.backends import Backend

DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024


class ConfigError(Exception):
    """
    A configuration value is bad.  C{str()} of it is one sentence naming the
    setting and the value, fit to show an operator as is.
    """


@dataclass
class Settings:
    """
    Everything the load balancer is configured with.

    @ivar port: server endpoint string for clients (C{tcp:3000}).
    @ivar monitorPort: server endpoint string for the monitoring API.
    @ivar algorithm: name of the balancing strategy.
    @ivar healthInterval: seconds between health checks of a backend.
    @ivar healthTimeout: seconds before a health check counts as failed.
    @ivar maxRetries: further backends tried when connecting fails.
    @ivar backends: the backends, in configuration order.
    @ivar trustedProxies: networks whose X-Forwarded-For is believed.
    @ivar connectTimeout: seconds allowed for connecting to a backend and
        completing its WebSocket handshake, per attempt.
    @ivar maxMessageSize: largest message payload accepted, in bytes.
    """

    port: str = "tcp:3000"
    monitorPort: str = "tcp:3004"
    algorithm: str = "round-robin"
    healthInterval: float = 15.0
    healthTimeout: float = 3.0
    maxRetries: int = 3
    backends: list[Backend] = field(default_factory=list)
    trustedProxies: list[IPv4Network | IPv6Network] = field(default_factory=list)
    connectTimeout: float = 5.0
    maxMessageSize: int = DEFAULT_MAX_MESSAGE_SIZE
