"""
Tests for L{wslb_twisted.config}: where settings come from, how they are
parsed, and how bad values are reported.
"""

from __future__ import annotations

import json
from ipaddress import ip_network
from pathlib import Path

import pytest

from wslb_twisted.config import ConfigError, Settings, loadSettings, parseEnvFile

KNOWN = "(have: ip-hash, least-connections, round-robin, weighted)"


def load(
    tmp_path: Path,
    options: dict[str, object] | None = None,
    environ: dict[str, str] | None = None,
    envFile: str | None = None,
) -> Settings:
    """
    Load settings with C{tmp_path} as the working directory, writing
    C{envFile} (if given) to C{tmp_path/.env} first.
    """
    if envFile is not None:
        (tmp_path / ".env").write_text(envFile)
    return loadSettings(options or {}, environ or {}, str(tmp_path))


def loadError(
    tmp_path: Path,
    options: dict[str, object] | None = None,
    environ: dict[str, str] | None = None,
    envFile: str | None = None,
) -> str:
    """
    Load settings that must be rejected and return the error message, which
    must be a single line.
    """
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, options, environ, envFile)
    message = str(raised.value)
    assert "\n" not in message
    return message


def backendsJSON(*items: dict[str, object]) -> str:
    """
    A C{BACKEND_SERVERS} value listing C{items}.
    """
    return json.dumps(list(items))


# Defaults


def test_defaults(tmp_path: Path) -> None:
    """
    With no options, no environment and no .env file, every setting has the
    default from the specification, with milliseconds turned into seconds.
    """
    settings = load(tmp_path)
    assert settings.port == "tcp:3000"
    assert settings.monitorPort == "tcp:3004"
    assert settings.algorithm == "round-robin"
    assert settings.healthInterval == 15.0
    assert settings.healthTimeout == 3.0
    assert settings.maxRetries == 3
    assert settings.connectTimeout == 5.0
    assert settings.trustedProxies == []


def test_defaultBackends(tmp_path: Path) -> None:
    """
    The default backends are the three seed backends on localhost:3001-3003
    with weight 1, health ports 4001-4003 and ids backend-1 to backend-3.
    """
    backends = load(tmp_path).backends
    assert [(b.id, b.host, b.port, b.weight, b.healthPort) for b in backends] == [
        ("backend-1", "localhost", 3001, 1, 4001),
        ("backend-2", "localhost", 3002, 1, 4002),
        ("backend-3", "localhost", 3003, 1, 4003),
    ]
    assert all(b.healthPath == "/health" for b in backends)


# Precedence

PRECEDENCE = [
    # (option, variable, (cli, env, .env) values, Settings attribute, parsed)
    ("algorithm", "LOAD_BALANCER_ALGORITHM",
     ("weighted", "ip-hash", "least-connections"),
     "algorithm", ("weighted", "ip-hash", "least-connections")),
    ("port", "LOAD_BALANCER_PORT", ("4100", "4200", "4300"),
     "port", ("tcp:4100", "tcp:4200", "tcp:4300")),
    ("monitor-port", "LOAD_BALANCER_MONITORING_PORT", ("4101", "4201", "4301"),
     "monitorPort", ("tcp:4101", "tcp:4201", "tcp:4301")),
    ("health-interval", "HEALTH_CHECK_INTERVAL", ("1000", "2000", "4000"),
     "healthInterval", (1.0, 2.0, 4.0)),
    ("health-timeout", "HEALTH_CHECK_TIMEOUT", ("100", "200", "400"),
     "healthTimeout", (0.1, 0.2, 0.4)),
    ("max-retries", "MAX_RETRIES", ("0", "1", "2"),
     "maxRetries", (0, 1, 2)),
    ("connect-timeout", "BACKEND_CONNECT_TIMEOUT", ("7000", "8000", "9000"),
     "connectTimeout", (7.0, 8.0, 9.0)),
]  # fmt: skip
PRECEDENCE_IDS = [row[0] for row in PRECEDENCE]


@pytest.mark.parametrize(
    "option, variable, values, attribute, parsed", PRECEDENCE, ids=PRECEDENCE_IDS
)
def test_commandLineBeatsEnvironment(
    tmp_path: Path,
    option: str,
    variable: str,
    values: tuple[str, str, str],
    attribute: str,
    parsed: tuple[object, object, object],
) -> None:
    """
    A setting given on the command line wins over the environment and the
    .env file.
    """
    settings = load(
        tmp_path,
        {option: values[0]},
        {variable: values[1]},
        f"{variable}={values[2]}\n",
    )
    assert getattr(settings, attribute) == parsed[0]


@pytest.mark.parametrize(
    "option, variable, values, attribute, parsed", PRECEDENCE, ids=PRECEDENCE_IDS
)
def test_environmentBeatsEnvFile(
    tmp_path: Path,
    option: str,
    variable: str,
    values: tuple[str, str, str],
    attribute: str,
    parsed: tuple[object, object, object],
) -> None:
    """
    A setting in the environment wins over the .env file when the command
    line does not give it.
    """
    settings = load(tmp_path, {}, {variable: values[1]}, f"{variable}={values[2]}\n")
    assert getattr(settings, attribute) == parsed[1]


@pytest.mark.parametrize(
    "option, variable, values, attribute, parsed", PRECEDENCE, ids=PRECEDENCE_IDS
)
def test_envFileBeatsDefault(
    tmp_path: Path,
    option: str,
    variable: str,
    values: tuple[str, str, str],
    attribute: str,
    parsed: tuple[object, object, object],
) -> None:
    """
    A setting in the .env file is used when neither the command line nor the
    environment gives it.
    """
    settings = load(tmp_path, {}, {}, f"{variable}={values[2]}\n")
    assert getattr(settings, attribute) == parsed[2]


def test_noneOptionIsNotGiven(tmp_path: Path) -> None:
    """
    An option whose value is C{None} counts as not given, as
    L{twisted.python.usage.Options} holds options without defaults.
    """
    settings = load(
        tmp_path, {"algorithm": None}, {"LOAD_BALANCER_ALGORITHM": "weighted"}
    )
    assert settings.algorithm == "weighted"


def test_backendsPrecedence(tmp_path: Path) -> None:
    """
    BACKEND_SERVERS follows the same precedence: --backends over the
    environment over the .env file.
    """
    cli = backendsJSON({"host": "cli", "port": 1})
    env = backendsJSON({"host": "env", "port": 2})
    dotenv = backendsJSON({"host": "dotenv", "port": 3})
    envLine = f"BACKEND_SERVERS='{dotenv}'\n"
    hosts = [
        load(tmp_path, {"backends": cli}, {"BACKEND_SERVERS": env}, envLine),
        load(tmp_path, {}, {"BACKEND_SERVERS": env}, envLine),
        load(tmp_path, {}, {}, envLine),
    ]
    assert [s.backends[0].host for s in hosts] == ["cli", "env", "dotenv"]


def test_trustedProxyOptionBeatsEnvironment(tmp_path: Path) -> None:
    """
    Repeated --trusted-proxy options replace TRUSTED_PROXIES rather than
    adding to it.
    """
    settings = load(
        tmp_path,
        {"trusted-proxy": ["10.0.0.1"]},
        {"TRUSTED_PROXIES": "192.168.0.0/16"},
    )
    assert settings.trustedProxies == [ip_network("10.0.0.1/32")]


# The .env file


def test_envFileOption(tmp_path: Path) -> None:
    """
    --env-file names the file to read instead of ./.env, relative to the
    working directory.
    """
    (tmp_path / "other.env").write_text("LOAD_BALANCER_ALGORITHM=ip-hash\n")
    settings = load(
        tmp_path, {"env-file": "other.env"}, {}, "LOAD_BALANCER_ALGORITHM=weighted\n"
    )
    assert settings.algorithm == "ip-hash"


def test_missingEnvFileOption(tmp_path: Path) -> None:
    """
    An --env-file that does not exist is an error naming the option and the
    file.
    """
    message = loadError(tmp_path, {"env-file": "missing.env"})
    assert message == "--env-file='missing.env' does not exist"


def test_envFileSyntax(tmp_path: Path) -> None:
    """
    The .env file takes comments, blank lines, an C{export} prefix and single
    or double quotes around values, which are removed.
    """
    variables = parseEnvFile(
        "# a comment\n"
        "\n"
        "export A=1\n"
        "B = 'two words'\n"
        'C="3" # trailing comment\n'
        "D=plain # trailing comment\n"
        "E=\n",
        ".env",
    )
    assert variables == {"A": "1", "B": "two words", "C": "3", "D": "plain", "E": ""}


def test_envFileNoInterpolation(tmp_path: Path) -> None:
    """
    Values in the .env file are taken literally: C{$NAME} is not expanded and
    backslashes stay.
    """
    variables = parseEnvFile('A=$HOME\nB="x\\ny"\n', ".env")
    assert variables == {"A": "$HOME", "B": "x\\ny"}


def test_envFileQuotedJSON(tmp_path: Path) -> None:
    """
    BACKEND_SERVERS in the .env file can be a single-quoted JSON list.
    """
    servers = backendsJSON({"host": "a", "port": 5000, "weight": 2})
    settings = load(tmp_path, envFile=f"BACKEND_SERVERS='{servers}'\n")
    assert [(b.host, b.port, b.weight) for b in settings.backends] == [("a", 5000, 2)]


@pytest.mark.parametrize(
    "line", ["just some words", "1ABC=x", "A='unterminated", 'A="x" junk', "=x"]
)
def test_badEnvFileLine(tmp_path: Path, line: str) -> None:
    """
    A malformed line in the .env file is an error naming the file and the
    line number.
    """
    message = loadError(tmp_path, envFile=f"# settings\nMAX_RETRIES=1\n{line}\n")
    assert message.startswith(f"{tmp_path / '.env'}, line 3: ")
    assert repr(line) in message


def test_envFileValueNamesVariable(tmp_path: Path) -> None:
    """
    A bad value from the .env file is reported under its variable's name.
    """
    message = loadError(tmp_path, envFile="LOAD_BALANCER_ALGORITHM=bogus\n")
    assert message.startswith("LOAD_BALANCER_ALGORITHM='bogus' ")


# Algorithm


def test_unknownAlgorithmEnvironment(tmp_path: Path) -> None:
    """
    An unknown algorithm from the environment is reported with the variable's
    name, the value and the known algorithms.
    """
    message = loadError(tmp_path, environ={"LOAD_BALANCER_ALGORITHM": "bogus"})
    assert (
        message == f"LOAD_BALANCER_ALGORITHM='bogus' is not a known algorithm {KNOWN}"
    )


def test_unknownAlgorithmOption(tmp_path: Path) -> None:
    """
    An unknown algorithm from the command line is reported with the option's
    name.
    """
    message = loadError(tmp_path, {"algorithm": "bogus"})
    assert message == f"--algorithm='bogus' is not a known algorithm {KNOWN}"


# Ports and endpoint strings


def test_barePortNumber(tmp_path: Path) -> None:
    """
    A bare port number becomes a C{tcp:} endpoint string.
    """
    assert load(tmp_path, {"port": "8080"}).port == "tcp:8080"


def test_endpointStringAccepted(tmp_path: Path) -> None:
    """
    An endpoint string is kept as given, and port 0 (any free port) is
    allowed in one.
    """
    settings = load(tmp_path, {"monitor-port": "tcp:0:interface=127.0.0.1"})
    assert settings.monitorPort == "tcp:0:interface=127.0.0.1"


@pytest.mark.parametrize("value", ["0", "65536", "99999", "-1", "http", "30 00", ""])
def test_badPortEnvironment(tmp_path: Path, value: str) -> None:
    """
    A port that is neither a number in 1-65535 nor an endpoint string is
    reported with the variable's name and the value; a bare 0 is rejected.
    """
    message = loadError(tmp_path, environ={"LOAD_BALANCER_PORT": value})
    assert message == (
        f"LOAD_BALANCER_PORT={value!r} is not a port number in 1-65535 or an "
        "endpoint string"
    )


def test_badPortOption(tmp_path: Path) -> None:
    """
    A bad port from the command line is reported with the option's name.
    """
    message = loadError(tmp_path, {"monitor-port": "99999"})
    assert message == (
        "--monitor-port='99999' is not a port number in 1-65535 or an endpoint string"
    )


def test_endpointPortOutOfRange(tmp_path: Path) -> None:
    """
    A port number inside an endpoint string must be in range too.
    """
    message = loadError(tmp_path, {"port": "tcp:70000"})
    assert message.startswith("--port='tcp:70000' ")
    assert "70000" in message.partition(" ")[2]


def test_unparsableEndpointString(tmp_path: Path) -> None:
    """
    An endpoint string that Twisted cannot parse is reported with the
    setting's name and the value.
    """
    message = loadError(tmp_path, environ={"LOAD_BALANCER_PORT": "nosuch:3000"})
    assert message.startswith(
        "LOAD_BALANCER_PORT='nosuch:3000' is not a usable endpoint string"
    )


def test_sslEndpointWithMissingKey(tmp_path: Path) -> None:
    """
    An SSL endpoint string whose key file is missing is rejected at startup,
    naming the setting and the value.
    """
    value = f"ssl:3443:privateKey={tmp_path / 'missing.pem'}"
    message = loadError(tmp_path, {"port": value})
    assert message.startswith(f"--port={value!r} is not a usable endpoint string")


# Intervals, timeouts and retries


@pytest.mark.parametrize(
    "variable",
    ["HEALTH_CHECK_INTERVAL", "HEALTH_CHECK_TIMEOUT", "BACKEND_CONNECT_TIMEOUT"],
)
@pytest.mark.parametrize("value", ["0", "-5", "1.5", "abc", "1e3", ""])
def test_nonPositiveMillisecondsEnvironment(
    tmp_path: Path, variable: str, value: str
) -> None:
    """
    An interval or timeout that is not a positive integer is reported with
    the variable's name and the value.
    """
    message = loadError(tmp_path, environ={variable: value})
    assert message == (
        f"{variable}={value!r} is not a positive integer number of milliseconds"
    )


@pytest.mark.parametrize(
    "option", ["health-interval", "health-timeout", "connect-timeout"]
)
def test_nonPositiveMillisecondsOption(tmp_path: Path, option: str) -> None:
    """
    A bad interval or timeout from the command line is reported with the
    option's name.
    """
    message = loadError(tmp_path, {option: "0"})
    assert message == f"--{option}='0' is not a positive integer number of milliseconds"


def test_negativeRetries(tmp_path: Path) -> None:
    """
    A negative retry count is reported with the setting's name and value.
    """
    message = loadError(tmp_path, environ={"MAX_RETRIES": "-1"})
    assert message == "MAX_RETRIES='-1' is not an integer >= 0"


def test_nonIntegerRetriesOption(tmp_path: Path) -> None:
    """
    A retry count that is not an integer is reported with the option's name.
    """
    message = loadError(tmp_path, {"max-retries": "two"})
    assert message == "--max-retries='two' is not an integer >= 0"


# BACKEND_SERVERS


def test_backendsJSONOptionalFields(tmp_path: Path) -> None:
    """
    healthPort, healthPath and id can be given per backend; without them a
    backend gets port + 1000, /health and backend-N by position.
    """
    servers = backendsJSON(
        {"host": "a", "port": 5001},
        {
            "host": "b",
            "port": 5002,
            "weight": 3,
            "healthPort": 8080,
            "healthPath": "/ready",
            "id": "blue",
        },
    )
    backends = load(tmp_path, environ={"BACKEND_SERVERS": servers}).backends
    assert [
        (b.id, b.host, b.port, b.weight, b.healthPort, b.healthPath) for b in backends
    ] == [
        ("backend-1", "a", 5001, 1, 6001, "/health"),
        ("blue", "b", 5002, 3, 8080, "/ready"),
    ]


def test_unparsableJSONEnvironment(tmp_path: Path) -> None:
    """
    BACKEND_SERVERS that is not JSON is reported with the variable's name and
    the value.
    """
    message = loadError(tmp_path, environ={"BACKEND_SERVERS": "[{host"})
    assert message.startswith("BACKEND_SERVERS='[{host' is not valid JSON")


def test_unparsableJSONOption(tmp_path: Path) -> None:
    """
    --backends that is not JSON is reported with the option's name.
    """
    message = loadError(tmp_path, {"backends": "nope"})
    assert message.startswith("--backends='nope' is not valid JSON")


def test_longValueTruncated(tmp_path: Path) -> None:
    """
    A very long bad value is shown cut short, so the message stays one
    readable line.
    """
    value = "x" * 5000
    message = loadError(tmp_path, environ={"BACKEND_SERVERS": value})
    assert message.startswith("BACKEND_SERVERS='xxx")
    assert "..." in message
    assert len(message) < 300


@pytest.mark.parametrize(
    "value, problem",
    [
        ('{"host": "a", "port": 1}', "is not a JSON list of backends"),
        ("[]", "is an empty list; give at least one backend"),
    ],
)
def test_backendsNotANonEmptyList(tmp_path: Path, value: str, problem: str) -> None:
    """
    BACKEND_SERVERS must be a non-empty JSON list.
    """
    message = loadError(tmp_path, environ={"BACKEND_SERVERS": value})
    assert message == f"BACKEND_SERVERS={value!r} {problem}"


@pytest.mark.parametrize(
    "items, problem",
    [
        ([{"host": "a", "port": 1}, "b:2"], "item 2 is 'b:2', not an object"),
        ([{"port": 1}], "item 1 has no 'host'"),
        ([{"host": "a"}], "item 1 has no 'port'"),
        (
            [{"host": "a", "port": "3001"}],
            "item 1 has port '3001'; ports are integers in 1-65535",
        ),
        (
            [{"host": "a", "port": True}],
            "item 1 has port True; ports are integers in 1-65535",
        ),
        (
            [{"host": "a", "port": 0}],
            "item 1 has port 0; ports are integers in 1-65535",
        ),
        (
            [{"host": "a", "port": 65536}],
            "item 1 has port 65536; ports are integers in 1-65535",
        ),
        (
            [{"host": "a", "port": 1}, {"host": "b", "port": 2, "weight": 0}],
            "item 2 has weight 0; weights are integers >= 1",
        ),
        (
            [{"host": "a", "port": 1, "weight": 1.5}],
            "item 1 has weight 1.5; weights are integers >= 1",
        ),
        (
            [{"host": "a", "port": 1, "healthPath": "health"}],
            "item 1 has healthPath 'health'; health paths are strings starting "
            "with '/'",
        ),
        (
            [{"host": "", "port": 1}],
            "item 1 has host ''; hosts are non-empty strings",
        ),
    ],
)
def test_badBackendItem(tmp_path: Path, items: list[object], problem: str) -> None:
    """
    A bad item in BACKEND_SERVERS is reported with the variable's name, the
    item's position and the bad value.
    """
    message = loadError(tmp_path, environ={"BACKEND_SERVERS": json.dumps(items)})
    assert message == f"BACKEND_SERVERS: {problem}"


def test_badBackendItemOption(tmp_path: Path) -> None:
    """
    A bad item in --backends is reported with the option's name.
    """
    servers = backendsJSON({"host": "a", "port": 1, "weight": 0})
    message = loadError(tmp_path, {"backends": servers})
    assert message == "--backends: item 1 has weight 0; weights are integers >= 1"


def test_unknownBackendKey(tmp_path: Path) -> None:
    """
    An unknown key in a backend is an error that names the key.
    """
    servers = backendsJSON({"host": "a", "port": 1, "wieght": 2})
    message = loadError(tmp_path, environ={"BACKEND_SERVERS": servers})
    assert message.startswith("BACKEND_SERVERS: item 1 has unknown key 'wieght'")


def test_duplicateBackendIds(tmp_path: Path) -> None:
    """
    Two backends with the same id are an error naming the id, including an
    explicit id that repeats a default one.
    """
    servers = backendsJSON(
        {"host": "a", "port": 1}, {"host": "b", "port": 2, "id": "backend-1"}
    )
    message = loadError(tmp_path, environ={"BACKEND_SERVERS": servers})
    assert message.startswith("BACKEND_SERVERS: item 2 has id 'backend-1'")
    assert "unique" in message


def test_defaultHealthPortOutOfRange(tmp_path: Path) -> None:
    """
    A backend on a port above 64535 must say its healthPort, since the default
    port + 1000 would not be a port.
    """
    servers = backendsJSON({"host": "a", "port": 65000})
    message = loadError(tmp_path, environ={"BACKEND_SERVERS": servers})
    assert message.startswith("BACKEND_SERVERS: item 1 has port 65000")
    assert "healthPort" in message


# --backend host:port[:weight]


def test_repeatedBackendOption(tmp_path: Path) -> None:
    """
    Repeated --backend options give the backends in order, with weight 1
    unless given and ids backend-N.
    """
    settings = load(
        tmp_path, {"backend": ["alpha:5001:3", "beta:5002", "[::1]:5003:2"]}
    )
    assert [(b.id, b.host, b.port, b.weight) for b in settings.backends] == [
        ("backend-1", "alpha", 5001, 3),
        ("backend-2", "beta", 5002, 1),
        ("backend-3", "::1", 5003, 2),
    ]


def test_backendOptionBeatsEnvironment(tmp_path: Path) -> None:
    """
    --backend options replace BACKEND_SERVERS from the environment.
    """
    servers = backendsJSON({"host": "env", "port": 1})
    settings = load(tmp_path, {"backend": ["cli:2"]}, {"BACKEND_SERVERS": servers})
    assert [b.host for b in settings.backends] == ["cli"]


@pytest.mark.parametrize(
    "value, problem",
    [
        ("alpha", "is not host:port or host:port:weight"),
        ("alpha:1:2:3", "is not host:port or host:port:weight"),
        ("alpha:http", "has port 'http'; ports are integers in 1-65535"),
        ("alpha:0", "has port '0'; ports are integers in 1-65535"),
        ("alpha:1:0", "has weight '0'; weights are integers >= 1"),
    ],
)
def test_badBackendOption(tmp_path: Path, value: str, problem: str) -> None:
    """
    A malformed --backend is reported with the option's name and the value.
    """
    message = loadError(tmp_path, {"backend": ["ok:1", value]})
    assert message == f"--backend={value!r} {problem}"


def test_backendAndBackendsOptions(tmp_path: Path) -> None:
    """
    --backend and --backends cannot be combined.
    """
    servers = backendsJSON({"host": "a", "port": 1})
    message = loadError(tmp_path, {"backend": ["b:2"], "backends": servers})
    assert message == "--backends and --backend cannot be given together"


# Trusted proxies


def test_trustedProxiesEnvironment(tmp_path: Path) -> None:
    """
    TRUSTED_PROXIES is a comma-separated list of addresses and CIDR networks;
    host bits of a network are ignored.
    """
    settings = load(
        tmp_path, environ={"TRUSTED_PROXIES": "10.1.2.3/8, 192.168.0.7,,::1"}
    )
    assert settings.trustedProxies == [
        ip_network("10.0.0.0/8"),
        ip_network("192.168.0.7/32"),
        ip_network("::1/128"),
    ]


def test_badTrustedProxyEnvironment(tmp_path: Path) -> None:
    """
    An entry of TRUSTED_PROXIES that is not an address or network is reported
    with the variable's name and the entry.
    """
    message = loadError(tmp_path, environ={"TRUSTED_PROXIES": "10.0.0.1,10.0.0.300"})
    assert message == (
        "TRUSTED_PROXIES='10.0.0.300' is not an IP address or CIDR network"
    )


def test_badTrustedProxyOption(tmp_path: Path) -> None:
    """
    A bad --trusted-proxy is reported with the option's name and the value.
    """
    message = loadError(tmp_path, {"trusted-proxy": ["10.0.0.0/8", "proxy.local"]})
    assert message == (
        "--trusted-proxy='proxy.local' is not an IP address or CIDR network"
    )


def test_logFormatDefaultAndEnvironment(tmp_path: Path) -> None:
    """
    The log format is text unless LOG_FORMAT (or --log-format) says json.
    """
    assert load(tmp_path).logFormat == "text"
    assert load(tmp_path, environ={"LOG_FORMAT": "json"}).logFormat == "json"
    assert load(tmp_path, {"log-format": "text"}, {"LOG_FORMAT": "json"}).logFormat == (
        "text"
    )


def test_badLogFormatOption(tmp_path: Path) -> None:
    """
    A log format other than text or json is reported with the option's name,
    the value and the formats there are.
    """
    message = loadError(tmp_path, {"log-format": "xml"})
    assert message == "--log-format='xml' is not a known log format (have: json, text)"
