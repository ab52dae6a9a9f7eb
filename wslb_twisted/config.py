"""
Settings of the load balancer, from command-line options, the environment and
a C{.env} file, validated.

Each setting is taken from the first of these that gives it: the command line,
the environment, the C{.env} file (C{./.env}, or the file named by
C{--env-file}), the default.  A bad value raises L{ConfigError} with one
sentence naming the setting as the operator wrote it (C{--algorithm} on the
command line, C{LOAD_BALANCER_ALGORITHM} in the environment or C{.env}) and
the value.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from typing import TypeGuard, TypeVar

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
    @ivar logFormat: how twistd writes the log: C{"text"} (twistd's own
        lines) or C{"json"} (one JSON object per line); see
        L{wslb_twisted.logs}.
    @ivar workers: how many worker processes share the client port; see
        L{wslb_twisted.workers}.
    @ivar maxClients: most clients connected at once (0: no limit); more get
        HTTP 503 at the handshake.
    @ivar maxConnectionsPerIP: most connections from one client address at
        once (0: no limit); more get HTTP 429.
    @ivar handshakeTimeout: seconds a client has to complete its opening
        handshake request; slower ones are dropped.
    @ivar allowedOrigins: the C{Origin}s allowed to connect (empty: any);
        others get HTTP 403.
    @ivar pingInterval: seconds a leg may be silent before it is pinged (0:
        never).
    @ivar pingTimeout: seconds a pinged leg has to show it is alive.
    @ivar healthRise: consecutive passing checks bringing a backend back.
    @ivar healthFall: consecutive failing checks (or failed connection
        attempts) taking a backend out.
    @ivar backendCA: path of the PEM CA certificates that C{wss} backends'
        certificates are checked against (C{None}: the system's).
    @ivar drainSeconds: seconds over which SIGTERM spreads the closing of the
        clients.
    @ivar configFile: path of a JSON file with the backend list, re-read on
        SIGHUP, or C{None}.
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
    logFormat: str = "text"
    workers: int = 1
    maxClients: int = 10000
    maxConnectionsPerIP: int = 256
    handshakeTimeout: float = 10.0
    allowedOrigins: list[str] = field(default_factory=list)
    pingInterval: float = 30.0
    pingTimeout: float = 10.0
    healthRise: int = 2
    healthFall: int = 2
    backendCA: str | None = None
    drainSeconds: float = 10.0
    configFile: str | None = None


@dataclass(frozen=True)
class _Setting:
    """
    How one setting is spelled in each source.

    @ivar option: the long option name without dashes, as the key in the
        C{options} mapping (C{monitor-port}).
    @ivar variable: the environment variable (C{LOAD_BALANCER_MONITORING_PORT}).
    @ivar default: the value used when no source gives one, in the same text
        form an operator would write.
    """

    option: str
    variable: str
    default: str


_PORT = _Setting("port", "LOAD_BALANCER_PORT", "3000")
_MONITOR_PORT = _Setting("monitor-port", "LOAD_BALANCER_MONITORING_PORT", "3004")
_ALGORITHM = _Setting("algorithm", "LOAD_BALANCER_ALGORITHM", "round-robin")
_HEALTH_INTERVAL = _Setting("health-interval", "HEALTH_CHECK_INTERVAL", "15000")
_HEALTH_TIMEOUT = _Setting("health-timeout", "HEALTH_CHECK_TIMEOUT", "3000")
_MAX_RETRIES = _Setting("max-retries", "MAX_RETRIES", "3")
_CONNECT_TIMEOUT = _Setting("connect-timeout", "BACKEND_CONNECT_TIMEOUT", "5000")
_BACKENDS = _Setting("backends", "BACKEND_SERVERS", "")
_TRUSTED_PROXIES = _Setting("trusted-proxy", "TRUSTED_PROXIES", "")
_LOG_FORMAT = _Setting("log-format", "LOG_FORMAT", "text")
_WORKERS = _Setting("workers", "WORKERS", "1")
_MAX_MESSAGE_SIZE = _Setting(
    "max-message-size", "MAX_MESSAGE_SIZE", str(DEFAULT_MAX_MESSAGE_SIZE)
)
_MAX_CLIENTS = _Setting("max-clients", "MAX_CLIENTS", "10000")
_MAX_PER_IP = _Setting("max-connections-per-ip", "MAX_CONNECTIONS_PER_IP", "256")
_HANDSHAKE_TIMEOUT = _Setting("handshake-timeout", "HANDSHAKE_TIMEOUT", "10000")
_ALLOWED_ORIGINS = _Setting("allowed-origin", "ALLOWED_ORIGINS", "")
_PING_INTERVAL = _Setting("ping-interval", "PING_INTERVAL", "30000")
_PING_TIMEOUT = _Setting("ping-timeout", "PING_TIMEOUT", "10000")
_HEALTH_RISE = _Setting("health-rise", "HEALTH_CHECK_RISE", "2")
_HEALTH_FALL = _Setting("health-fall", "HEALTH_CHECK_FALL", "2")
_BACKEND_CA = _Setting("backend-ca", "BACKEND_CA", "")
_DRAIN_SECONDS = _Setting("drain-seconds", "DRAIN_SECONDS", "10")
_CONFIG_FILE = _Setting("config-file", "CONFIG_FILE", "")

#: The values of C{--log-format} / C{LOG_FORMAT}.
LOG_FORMATS = ("json", "text")

#: The option holding repeated C{host:port[:weight]} backends.
BACKEND_OPTION = "backend"
#: The option naming the C{.env} file to read instead of C{./.env}.
ENV_FILE_OPTION = "env-file"
#: The name of the C{.env} file looked for in the working directory.
DEFAULT_ENV_FILE = ".env"

_DEFAULT_BACKEND_PORTS = (3001, 3002, 3003)
_MAX_SHOWN = 100
_DIGITS = re.compile(r"[0-9]+")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BACKEND_ITEM = re.compile(
    r"(?:\[(?P<ipv6>[^\]]+)\]|(?P<host>[^:\[\]]+))"
    r":(?P<port>[^:]*)(?::(?P<weight>[^:]*))?"
)
_BACKEND_KEYS = (
    "host",
    "port",
    "weight",
    "healthPort",
    "healthPath",
    "id",
    "maxConnections",
    "tls",
)

_T = TypeVar("_T")


def _show(value: object) -> str:
    """
    C{repr} of a bad value, cut short when it is long, for an error message.
    """
    shown = repr(value)
    if len(shown) > _MAX_SHOWN:
        shown = shown[: _MAX_SHOWN - 3] + "..."
    return shown


@dataclass(frozen=True)
class _Given:
    """
    A raw setting value and where it came from.

    @ivar name: how the operator spelled the setting at its source:
        C{--algorithm} or C{LOAD_BALANCER_ALGORITHM}.
    @ivar value: the text given.
    @ivar fromDefault: whether no source gave it.
    """

    name: str
    value: str
    fromDefault: bool = False

    def bad(self, problem: str) -> ConfigError:
        """
        An error saying the value is bad.

        @param problem: what is wrong, following the value (C{is not a known
            algorithm}).
        """
        return ConfigError(f"{self.name}={_show(self.value)} {problem}")


class _Sources:
    """
    The command line, the environment and the C{.env} file, in precedence
    order.
    """

    def __init__(
        self,
        options: Mapping[str, object],
        environ: Mapping[str, str],
        envFile: Mapping[str, str],
    ) -> None:
        self.options = options
        self.environ = environ
        self.envFile = envFile

    def option(self, name: str) -> object:
        """
        The command-line value of an option, or C{None} if it was not given.
        """
        value = self.options.get(name)
        if value is None or value == [] or value == ():
            return None
        return value

    def lookup(self, setting: _Setting) -> _Given:
        """
        The value of a single-valued setting from the first source giving it.
        """
        value = self.option(setting.option)
        if value is not None:
            return _Given(f"--{setting.option}", str(value))
        for source in (self.environ, self.envFile):
            if setting.variable in source:
                return _Given(setting.variable, source[setting.variable])
        return _Given(setting.variable, setting.default, fromDefault=True)


def loadSettings(
    options: Mapping[str, object],
    environ: Mapping[str, str],
    cwd: str | None = None,
) -> Settings:
    """
    Work out the settings from the command line, the environment and a
    C{.env} file, validating every value.

    @param options: what was given on the command line, keyed by long option
        name without the dashes (C{"monitor-port"}), as a
        L{twisted.python.usage.Options} holds it.  A value that is C{None} or
        an empty list was not given.  Single-valued options hold text (or
        anything whose C{str()} is the text); C{"backend"} and
        C{"trusted-proxy"} hold sequences of text, one item per repetition;
        C{"env-file"} names the C{.env} file to read instead of C{./.env}.
    @param environ: the environment variables, such as C{os.environ}.
    @param cwd: the directory holding the default C{.env} file and against
        which a relative C{--env-file} is resolved; C{None} for the current
        directory.
    @return: the validated settings.
    @raise ConfigError: when a value is bad or an explicitly named env file
        cannot be read.
    """
    base = os.curdir if cwd is None else cwd
    envFileOption = options.get(ENV_FILE_OPTION)
    if envFileOption is not None:
        given = _Given(f"--{ENV_FILE_OPTION}", str(envFileOption))
        envFile = _readEnvFile(given, os.path.join(base, given.value))
    else:
        envFile = _readEnvFile(None, os.path.join(base, DEFAULT_ENV_FILE))
    sources = _Sources(options, environ, envFile)
    configFile = _configFileFrom(sources, base)

    return Settings(
        port=_parseListenPort(sources.lookup(_PORT)),
        monitorPort=_parseListenPort(sources.lookup(_MONITOR_PORT)),
        algorithm=_parseAlgorithm(sources.lookup(_ALGORITHM)),
        healthInterval=_parseMilliseconds(sources.lookup(_HEALTH_INTERVAL)),
        healthTimeout=_parseMilliseconds(sources.lookup(_HEALTH_TIMEOUT)),
        maxRetries=_parseRetries(sources.lookup(_MAX_RETRIES)),
        backends=_backendsFrom(sources, configFile),
        trustedProxies=_trustedProxiesFrom(sources),
        connectTimeout=_parseMilliseconds(sources.lookup(_CONNECT_TIMEOUT)),
        logFormat=_parseLogFormat(sources.lookup(_LOG_FORMAT)),
        workers=_parseWorkers(sources.lookup(_WORKERS)),
        maxMessageSize=_parseCount(sources.lookup(_MAX_MESSAGE_SIZE), 1, "bytes"),
        maxClients=_parseCount(sources.lookup(_MAX_CLIENTS), 0, "clients"),
        maxConnectionsPerIP=_parseCount(sources.lookup(_MAX_PER_IP), 0, "connections"),
        handshakeTimeout=_parseMilliseconds(sources.lookup(_HANDSHAKE_TIMEOUT)),
        allowedOrigins=_listFrom(sources, _ALLOWED_ORIGINS, _parseOrigin),
        pingInterval=_parseMillisecondsOrZero(sources.lookup(_PING_INTERVAL)),
        pingTimeout=_parseMilliseconds(sources.lookup(_PING_TIMEOUT)),
        healthRise=_parseCount(sources.lookup(_HEALTH_RISE), 1, "checks"),
        healthFall=_parseCount(sources.lookup(_HEALTH_FALL), 1, "checks"),
        backendCA=_parseCertificateFile(sources.lookup(_BACKEND_CA), base),
        drainSeconds=_parseSeconds(sources.lookup(_DRAIN_SECONDS)),
        configFile=None if configFile is None else configFile[1],
    )


def _parseCount(given: _Given, least: int, unit: str) -> int:
    """
    Parse a whole number of at least C{least}.
    """
    value = given.value.strip()
    if not _DIGITS.fullmatch(value) or int(value) < least:
        raise given.bad(f"is not a whole number of {unit} >= {least}")
    return int(value)


def _parseMillisecondsOrZero(given: _Given) -> float:
    """
    Parse a whole number of milliseconds, 0 meaning "never", into seconds.
    """
    value = given.value.strip()
    if not _DIGITS.fullmatch(value):
        raise given.bad("is not a whole number of milliseconds (0 for never)")
    return int(value) / 1000


def _parseSeconds(given: _Given) -> float:
    """
    Parse a number of seconds, 0 or more.
    """
    try:
        value = float(given.value.strip())
    except ValueError:
        value = -1.0
    if not 0 <= value < 86400:
        raise given.bad("is not a number of seconds from 0 to 86399")
    return value


def _parseOrigin(given: _Given) -> str:
    """
    Parse an allowed Origin: C{scheme://host[:port]}, or C{*} for any.
    """
    value = given.value.strip()
    if value != "*" and not re.fullmatch(r"[a-z][a-z0-9+.-]*://[^/\s]+", value):
        raise given.bad("is not an origin like https://example.com or *")
    return value.lower()


def _parseReadableFile(given: _Given, base: str) -> str | None:
    """
    Check that a file exists and can be read; empty means none.
    """
    if not given.value.strip():
        return None
    path = os.path.join(base, given.value.strip())
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        raise given.bad(f"cannot be read ({error.strerror})") from None
    return os.path.abspath(path)


def _parseCertificateFile(given: _Given, base: str) -> str | None:
    """
    Check that a file can be read and holds PEM certificates; empty means
    none.
    """
    path = _parseReadableFile(given, base)
    if path is not None:
        from wslb_twisted.tls import readCertificates

        try:
            readCertificates(path)
        except ValueError as error:
            raise given.bad(str(error)) from None
    return path


def _listFrom(
    sources: _Sources, setting: _Setting, parse: Callable[[_Given], str]
) -> list[str]:
    """
    A list setting: a repeatable option, or a comma-separated variable.
    """
    listed = sources.option(setting.option)
    if listed is not None:
        items = [listed] if isinstance(listed, str) else list(_sequence(listed))
        return [parse(_Given(f"--{setting.option}", str(item))) for item in items]
    given = sources.lookup(setting)
    return [
        parse(_Given(given.name, item))
        for item in given.value.split(",")
        if item.strip()
    ]


def _configFileFrom(sources: _Sources, base: str) -> tuple[str, str] | None:
    """
    The text and path of the C{--config-file} / C{CONFIG_FILE}, if given.
    """
    given = sources.lookup(_CONFIG_FILE)
    path = _parseReadableFile(given, base)
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as configFile:
            return configFile.read(), path
    except (OSError, UnicodeDecodeError) as error:
        raise given.bad(f"cannot be read ({error})") from None


def parseEnvFile(text: str, path: str) -> dict[str, str]:
    """
    Parse the text of a C{.env} file.

    Each line is blank, a C{#} comment, or C{KEY=value}, optionally preceded
    by C{export}.  A value may be wrapped in single or double quotes, which
    are removed; an unquoted value ends at a C{#} that follows whitespace.
    Nothing is interpolated or unescaped.

    @param text: the contents of the file.
    @param path: the file's name, for error messages.
    @return: the variables, later lines overriding earlier ones.
    @raise ConfigError: naming the file and line number of a malformed line.
    """
    variables: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        parsed = _parseEnvLine(stripped)
        if parsed is None:
            raise ConfigError(
                f"{path}, line {number}: {_show(line)} is not a KEY=value line"
            )
        key, value = parsed
        variables[key] = value
    return variables


def _parseEnvLine(line: str) -> tuple[str, str] | None:
    """
    Parse one stripped, non-blank, non-comment line of a C{.env} file.

    @return: the key and value, or C{None} when the line is malformed.
    """
    if line.startswith("export") and line[6:7].isspace():
        line = line[6:].lstrip()
    key, equals, value = line.partition("=")
    key = key.rstrip()
    if not equals or not _ENV_KEY.fullmatch(key):
        return None
    value = value.strip()
    if value[:1] in ("'", '"'):
        quote = value[0]
        end = value.find(quote, 1)
        if end < 0:
            return None
        rest = value[end + 1 :].strip()
        if rest and not rest.startswith("#"):
            return None
        return key, value[1:end]
    comment = re.search(r"\s#", value)
    if comment is not None:
        value = value[: comment.start()].rstrip()
    return key, value


def _readEnvFile(given: _Given | None, path: str) -> dict[str, str]:
    """
    Read and parse a C{.env} file.

    @param given: the C{--env-file} option naming the file, or C{None} for
        the default C{./.env}, which may be missing.
    @param path: where the file is.
    """
    try:
        with open(path, encoding="utf-8") as envFile:
            text = envFile.read()
    except (OSError, UnicodeDecodeError) as error:
        if given is None:
            if isinstance(error, FileNotFoundError):
                return {}
            raise ConfigError(f"{path} cannot be read ({_reason(error)})") from None
        if isinstance(error, FileNotFoundError):
            raise given.bad("does not exist") from None
        raise given.bad(f"cannot be read ({_reason(error)})") from None
    return parseEnvFile(text, path)


def _reason(error: BaseException) -> str:
    """
    The first line of an exception's message, short enough for a sentence.
    """
    lines = str(error).strip().splitlines()
    reason = lines[0] if lines else type(error).__name__
    if len(reason) > 120:
        reason = reason[:117] + "..."
    return reason


def _parseListenPort(given: _Given) -> str:
    """
    Make a server endpoint string from a port number or an endpoint string.

    A bare number becomes C{tcp:N} and must be in 1-65535; anything else must
    be an endpoint string that L{serverFromString
    <twisted.internet.endpoints.serverFromString>} accepts, with a port (if
    it has one) in 0-65535, 0 meaning any free port.
    """
    value = given.value.strip()
    if _DIGITS.fullmatch(value):
        if not 1 <= int(value) <= 65535:
            raise given.bad("is not a port number in 1-65535 or an endpoint string")
        return f"tcp:{int(value)}"
    if ":" not in value:
        raise given.bad("is not a port number in 1-65535 or an endpoint string")

    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    try:
        endpoint = serverFromString(reactor, value)
    except Exception as error:
        raise given.bad(f"is not a usable endpoint string ({_reason(error)})") from None
    port = _endpointPort(endpoint)
    if port is not None and not 0 <= port <= 65535:
        raise given.bad(f"has port {port}, not in 0-65535")
    return value


def _endpointPort(endpoint: object) -> int | None:
    """
    The port number a server endpoint listens on, if it has one.
    """
    while hasattr(endpoint, "_wrappedEndpoint"):
        endpoint = endpoint._wrappedEndpoint
    port = getattr(endpoint, "_port", None)
    if isinstance(port, int) and not isinstance(port, bool):
        return port
    return None


def _parseAlgorithm(given: _Given) -> str:
    """
    Check that a strategy of the given name is installed.
    """
    from wslb_twisted.plugin import availableStrategies

    name = given.value.strip()
    known = sorted(availableStrategies())
    if name not in known:
        raise given.bad(f"is not a known algorithm (have: {', '.join(known)})")
    return name


def _parseLogFormat(given: _Given) -> str:
    """
    Check that a log format is one of L{LOG_FORMATS}.
    """
    name = given.value.strip()
    if name not in LOG_FORMATS:
        raise given.bad(f"is not a known log format (have: {', '.join(LOG_FORMATS)})")
    return name


def _parseMilliseconds(given: _Given) -> float:
    """
    Parse a positive whole number of milliseconds into seconds.
    """
    value = given.value.strip()
    if not _DIGITS.fullmatch(value) or int(value) == 0:
        raise given.bad("is not a positive integer number of milliseconds")
    return int(value) / 1000


def _parseRetries(given: _Given) -> int:
    """
    Parse a count of retries: a whole number, 0 or more.
    """
    value = given.value.strip()
    if not _DIGITS.fullmatch(value):
        raise given.bad("is not an integer >= 0")
    return int(value)


def _parseWorkers(given: _Given) -> int:
    """
    Parse a number of worker processes: a whole number from 1 to 64.
    """
    value = given.value.strip()
    if not _DIGITS.fullmatch(value) or not 1 <= int(value) <= 64:
        raise given.bad("is not a number of worker processes from 1 to 64")
    return int(value)


def _backendsFrom(
    sources: _Sources, configFile: tuple[str, str] | None = None
) -> list[Backend]:
    """
    The backends from C{--backends}, repeated C{--backend}, the
    C{--config-file}, C{BACKEND_SERVERS} or the default three on localhost,
    in that order of precedence.
    """
    listed = sources.option(BACKEND_OPTION)
    if listed is not None:
        if sources.option(_BACKENDS.option) is not None:
            raise ConfigError(
                f"--{_BACKENDS.option} and --{BACKEND_OPTION} cannot be given together"
            )
        items = [listed] if isinstance(listed, str) else list(_sequence(listed))
        return [
            _parseBackendOption(str(item), index)
            for index, item in enumerate(items, start=1)
        ]
    given = sources.lookup(_BACKENDS)
    if configFile is not None and not given.name.startswith("--"):
        text, path = configFile
        return parseBackendsJSON(text, path)
    if given.fromDefault:
        return [
            Backend(id=f"backend-{index}", host="localhost", port=port)
            for index, port in enumerate(_DEFAULT_BACKEND_PORTS, start=1)
        ]
    return parseBackendsJSON(given.value, given.name)


def _sequence(value: object) -> Sequence[object]:
    """
    A repeated option's values as a sequence.
    """
    if isinstance(value, Sequence):
        return value
    return [value]


def _parseBackendOption(value: str, index: int) -> Backend:
    """
    Parse one C{--backend host:port[:weight]}.

    @param index: the 1-based position among the C{--backend} options, which
        makes the id C{backend-N}.
    """
    given = _Given(f"--{BACKEND_OPTION}", value)
    match = _BACKEND_ITEM.fullmatch(value.strip())
    if match is None:
        raise given.bad("is not host:port or host:port:weight")
    host = match["ipv6"] or match["host"]
    port = match["port"]
    if not _DIGITS.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise given.bad(f"has port {port!r}; ports are integers in 1-65535")
    weight = match["weight"]
    if weight is None:
        weight = "1"
    if not _DIGITS.fullmatch(weight) or int(weight) < 1:
        raise given.bad(f"has weight {weight!r}; weights are integers >= 1")
    if int(port) + 1000 > 65535:
        raise given.bad(
            f"has port {port}, so its health port {int(port) + 1000} would be "
            "out of range; use --backends to give a healthPort"
        )
    return Backend(id=f"backend-{index}", host=host, port=int(port), weight=int(weight))


def parseBackendsJSON(text: str, name: str = _BACKENDS.variable) -> list[Backend]:
    """
    Parse a JSON list of backends as C{BACKEND_SERVERS} holds it.

    Each item is an object with C{host} (text) and C{port} (integer in
    1-65535), and optionally C{weight} (integer >= 1, default 1),
    C{healthPort} (default C{port + 1000}), C{healthPath} (default
    C{/health}) and C{id} (default C{backend-N}, 1-based in list order).

    @param text: the JSON text.
    @param name: how to name the setting in errors (C{BACKEND_SERVERS} or
        C{--backends}).
    @return: the backends, in list order.
    @raise ConfigError: when the text is not such a list or ids repeat.
    """
    given = _Given(name, text)
    try:
        items = json.loads(text)
    except ValueError as error:
        raise given.bad(f"is not valid JSON ({_reason(error)})") from None
    if not isinstance(items, list):
        raise given.bad("is not a JSON list of backends")
    if not items:
        raise given.bad("is an empty list; give at least one backend")
    backends = [
        _parseBackendItem(item, index, name)
        for index, item in enumerate(items, start=1)
    ]
    seen: set[str] = set()
    for index, backend in enumerate(backends, start=1):
        if backend.id in seen:
            raise ConfigError(
                f"{name}: item {index} has id {_show(backend.id)}, which an "
                "earlier item already has; ids must be unique"
            )
        seen.add(backend.id)
    return backends


def _parseBackendItem(item: object, index: int, name: str) -> Backend:
    """
    Make a L{Backend} from one item of the C{BACKEND_SERVERS} list.
    """
    prefix = f"{name}: item {index}"
    if not isinstance(item, dict):
        raise ConfigError(f"{prefix} is {_show(item)}, not an object")
    unknown = [key for key in item if key not in _BACKEND_KEYS]
    if unknown:
        raise ConfigError(
            f"{prefix} has unknown key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(_show, unknown))} "
            f"(known: {', '.join(_BACKEND_KEYS)})"
        )
    for required in ("host", "port"):
        if required not in item:
            raise ConfigError(f"{prefix} has no {_show(required)}")

    def take(
        key: str, check: Callable[[object], TypeGuard[_T]], rule: str, default: _T
    ) -> _T:
        if key not in item:
            return default
        value = item[key]
        if not check(value):
            raise ConfigError(f"{prefix} has {key} {_show(value)}; {rule}")
        return value

    host = take("host", _isText, "hosts are non-empty strings", "")
    port = take("port", _isPort, "ports are integers in 1-65535", 0)
    weight = take("weight", _isWeight, "weights are integers >= 1", 1)
    healthPort = take("healthPort", _isPort, "health ports are integers in 1-65535", 0)
    if not healthPort and port + 1000 > 65535:
        raise ConfigError(
            f"{prefix} has port {port}, so its default healthPort "
            f"{port + 1000} is out of range; give a healthPort"
        )
    healthPath = take(
        "healthPath", _isPath, "health paths are strings starting with '/'", "/health"
    )
    backendId = take("id", _isText, "ids are non-empty strings", f"backend-{index}")
    maxConnections = take(
        "maxConnections", _isCount, "maxConnections are integers >= 1", 0
    )
    tls = take("tls", _isBool, "tls is true or false", False)
    return Backend(
        id=backendId,
        host=host,
        port=port,
        weight=weight,
        healthPort=healthPort,
        healthPath=healthPath,
        maxConnections=maxConnections,
        tls=tls,
    )


def _isPort(value: object) -> TypeGuard[int]:
    """
    Whether a JSON value is a port number (JSON C{true} is not a number).
    """
    return type(value) is int and 1 <= value <= 65535


def _isCount(value: object) -> TypeGuard[int]:
    """
    Whether a JSON value is an integer, at least 1.
    """
    return type(value) is int and value >= 1


def _isBool(value: object) -> TypeGuard[bool]:
    """
    Whether a JSON value is C{true} or C{false}.
    """
    return type(value) is bool


def _isWeight(value: object) -> TypeGuard[int]:
    """
    Whether a JSON value is a weight: an integer, at least 1.
    """
    return type(value) is int and value >= 1


def _isText(value: object) -> TypeGuard[str]:
    """
    Whether a JSON value is non-empty text without surrounding blanks.
    """
    return isinstance(value, str) and bool(value) and value == value.strip()


def _isPath(value: object) -> TypeGuard[str]:
    """
    Whether a JSON value is an absolute URL path.
    """
    return (
        isinstance(value, str)
        and value.startswith("/")
        and value.isprintable()
        and " " not in value
    )


def _trustedProxiesFrom(sources: _Sources) -> list[IPv4Network | IPv6Network]:
    """
    The trusted proxies from repeated C{--trusted-proxy} or the
    comma-separated C{TRUSTED_PROXIES}.
    """
    listed = sources.option(_TRUSTED_PROXIES.option)
    if listed is not None:
        items = [listed] if isinstance(listed, str) else list(_sequence(listed))
        return [
            _parseNetwork(_Given(f"--{_TRUSTED_PROXIES.option}", str(item).strip()))
            for item in items
        ]
    given = sources.lookup(_TRUSTED_PROXIES)
    networks = []
    for item in given.value.split(","):
        item = item.strip()
        if item:
            networks.append(_parseNetwork(_Given(given.name, item)))
    return networks


def _parseNetwork(given: _Given) -> IPv4Network | IPv6Network:
    """
    Parse an address or CIDR network; host bits of a network are dropped.
    """
    try:
        return ipaddress.ip_network(given.value, strict=False)
    except ValueError:
        raise given.bad("is not an IP address or CIDR network") from None
