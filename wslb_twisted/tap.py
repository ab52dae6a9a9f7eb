"""
The C{twistd wslb} command: its options and the service it runs.

Named by the C{wslb} service maker in C{twisted/plugins/wslb_plugin.py}.
"""

from __future__ import annotations

import os

from twisted.application.service import IService
from twisted.python import usage

from wslb_twisted.config import ConfigError, Settings, loadSettings


class Options(usage.Options):
    """
    Options of C{twistd wslb}.

    Each option overrides its environment variable, which overrides the
    C{.env} file, which overrides the default.  After parsing, C{settings}
    holds the validated L{Settings}.  Under twistd (when C{parent} is
    twistd's options), a JSON log format also sets twistd's C{--logger}; see
    L{wslb_twisted.logs}.

    @ivar settings: the settings worked out in L{postOptions}.
    """

    settings: Settings

    synopsis = "[options]"
    longdesc = (
        "Run the wslb WebSocket load balancer.  Every option can also be set "
        "through the environment variable named in its help, or in a .env "
        "file in the working directory; an option given here wins over the "
        "environment, which wins over the .env file."
    )

    optParameters = [
        [
            "port",
            None,
            None,
            "Client port number or server endpoint string, such as "
            "tcp:3000:interface=127.0.0.1 "
            "[LOAD_BALANCER_PORT, default: 3000].",
        ],
        [
            "monitor-port",
            None,
            None,
            "Monitoring API port number or server endpoint string "
            "[LOAD_BALANCER_MONITORING_PORT, default: 3004].",
        ],
        [
            "algorithm",
            None,
            None,
            "Balancing algorithm: round-robin, least-connections, weighted, "
            "ip-hash or an installed strategy plugin "
            "[LOAD_BALANCER_ALGORITHM, default: round-robin].",
        ],
        [
            "health-interval",
            None,
            None,
            "Milliseconds between health checks of a backend "
            "[HEALTH_CHECK_INTERVAL, default: 15000].",
        ],
        [
            "health-timeout",
            None,
            None,
            "Milliseconds before a health check counts as failed "
            "[HEALTH_CHECK_TIMEOUT, default: 3000].",
        ],
        [
            "max-retries",
            None,
            None,
            "Further backends tried when connecting to the chosen one fails "
            "[MAX_RETRIES, default: 3].",
        ],
        [
            "connect-timeout",
            None,
            None,
            "Milliseconds allowed per attempt for connecting to a backend and "
            "its WebSocket handshake [BACKEND_CONNECT_TIMEOUT, default: 5000].",
        ],
        [
            "backends",
            None,
            None,
            'Backends as a JSON list of {"host", "port", "weight", '
            '"healthPort", "healthPath", "id"} objects '
            "[BACKEND_SERVERS, default: localhost:3001-3003].",
        ],
        [
            "max-message-size",
            None,
            None,
            "Largest message (and frame) payload in bytes; a bigger one closes "
            "that client with 1009 [MAX_MESSAGE_SIZE, default: 16777216].",
        ],
        [
            "max-clients",
            None,
            None,
            "Most clients at once, 0 for no limit; more get HTTP 503 "
            "[MAX_CLIENTS, default: 10000].",
        ],
        [
            "max-connections-per-ip",
            None,
            None,
            "Most connections from one client address, 0 for no limit; more "
            "get HTTP 429 [MAX_CONNECTIONS_PER_IP, default: 256].",
        ],
        [
            "handshake-timeout",
            None,
            None,
            "Milliseconds a client has to send its opening handshake; slower "
            "ones are dropped [HANDSHAKE_TIMEOUT, default: 10000].",
        ],
        [
            "ping-interval",
            None,
            None,
            "Milliseconds a client or backend connection may stay silent "
            "before it is pinged, 0 for never [PING_INTERVAL, default: 30000].",
        ],
        [
            "ping-timeout",
            None,
            None,
            "Milliseconds a pinged connection has to answer before it is "
            "closed [PING_TIMEOUT, default: 10000].",
        ],
        [
            "health-rise",
            None,
            None,
            "Consecutive passing health checks that bring a backend back "
            "[HEALTH_CHECK_RISE, default: 2].",
        ],
        [
            "health-fall",
            None,
            None,
            "Consecutive failed health checks (or failed connection attempts) "
            "that take a backend out [HEALTH_CHECK_FALL, default: 2].",
        ],
        [
            "backend-ca",
            None,
            None,
            "PEM file of the CA certificates wss backends are verified against "
            "[BACKEND_CA, default: the system's].",
        ],
        [
            "drain-seconds",
            None,
            None,
            "Seconds over which SIGTERM spreads closing the clients; a second "
            "SIGTERM stops at once [DRAIN_SECONDS, default: 10].",
        ],
        [
            "config-file",
            None,
            None,
            "JSON file with the backend list (as BACKEND_SERVERS), re-read on "
            "SIGHUP [CONFIG_FILE].",
        ],
        [
            "workers",
            None,
            None,
            "Worker processes sharing the client port (one core each); the "
            "health checker and the monitoring port stay in the main process "
            "[WORKERS, default: 1].",
        ],
        [
            "log-format",
            None,
            None,
            "How twistd writes the log: text, or json for one JSON object per "
            "line (twisted.logger's JSON, for log shippers) "
            "[LOG_FORMAT, default: text].",
        ],
        [
            "env-file",
            None,
            None,
            "Read settings from this file instead of ./.env (it must exist).",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["backend"] = []
        self["trusted-proxy"] = []
        self["allowed-origin"] = []

    def opt_backend(self, value: str) -> None:
        """A backend as host:port[:weight]; repeatable (or use --backends)."""
        self["backend"].append(value)

    def opt_allowed_origin(self, value: str) -> None:
        """
        An Origin allowed to connect, such as https://example.com;
        repeatable [ALLOWED_ORIGINS, default: any].
        """
        self["allowed-origin"].append(value)

    def opt_trusted_proxy(self, value: str) -> None:
        """A trusted proxy's address or CIDR network; repeatable [TRUSTED_PROXIES]."""
        self["trusted-proxy"].append(value)

    def postOptions(self) -> None:
        """
        Work out and validate the settings from the options given, the
        environment and the C{.env} file.

        @raise usage.UsageError: naming the bad setting and value, which
            twistd prints without a traceback.
        """
        given = {name: value for name, value in self.items() if value is not None}
        self._given = given
        self._cwd = os.getcwd()
        try:
            self.settings = loadSettings(given, os.environ)
            if self.settings.logFormat == "json" and self.parent is not None:
                from wslb_twisted.logs import logJSONUnderTwistd

                logJSONUnderTwistd(self.parent)
        except ConfigError as error:
            raise usage.UsageError(str(error)) from None

    def reloadSettings(self) -> Settings:
        """
        Work out the settings again, as on SIGHUP: from the same command-line
        options, the environment and C{.env} file as they are now, and the
        C{--config-file} read again.

        @return: the validated settings.
        @raise ConfigError: when a value is bad.
        """
        return loadSettings(self._given, os.environ, self._cwd)


def makeService(options: Options) -> IService:
    """
    Make the load balancer's service from parsed options.

    @param options: the parsed L{Options}.
    @return: the service twistd runs.
    """
    from wslb_twisted.service import makeService as makeSettingsService

    return makeSettingsService(
        options.settings, reloadSettings=options.reloadSettings, handleSignals=True
    )
