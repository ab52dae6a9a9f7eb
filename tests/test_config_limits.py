"""
Settings of the hardening options: limits, liveness, health thresholds, TLS
backends, drain and the config file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wslb_twisted.config import ConfigError, loadSettings


def test_defaults(tmp_path: Path) -> None:
    """
    Without any setting, every limit has its documented default.
    """
    settings = loadSettings({}, {}, cwd=str(tmp_path))
    assert settings.maxMessageSize == 16 * 1024 * 1024
    assert settings.maxClients == 10000
    assert settings.maxConnectionsPerIP == 256
    assert settings.handshakeTimeout == 10.0
    assert settings.allowedOrigins == []
    assert (settings.pingInterval, settings.pingTimeout) == (30.0, 10.0)
    assert (settings.healthRise, settings.healthFall) == (2, 2)
    assert settings.backendCA is None
    assert settings.drainSeconds == 10.0
    assert settings.configFile is None


@pytest.mark.parametrize(
    "variable, value, message",
    [
        (
            "MAX_MESSAGE_SIZE",
            "0",
            "MAX_MESSAGE_SIZE='0' is not a whole number of bytes >= 1",
        ),
        ("MAX_CLIENTS", "-1", "MAX_CLIENTS='-1' is not a whole number of clients >= 0"),
        ("HANDSHAKE_TIMEOUT", "0", "HANDSHAKE_TIMEOUT='0' is not a positive integer"),
        ("PING_INTERVAL", "soon", "PING_INTERVAL='soon' is not a whole number of"),
        (
            "HEALTH_CHECK_RISE",
            "0",
            "HEALTH_CHECK_RISE='0' is not a whole number of checks",
        ),
        (
            "ALLOWED_ORIGINS",
            "example.com",
            "ALLOWED_ORIGINS='example.com' is not an origin",
        ),
        ("BACKEND_CA", "missing.pem", "BACKEND_CA='missing.pem' cannot be read"),
        (
            "DRAIN_SECONDS",
            "forever",
            "DRAIN_SECONDS='forever' is not a number of seconds",
        ),
    ],
)
def test_badValuesNameTheSetting(
    tmp_path: Path, variable: str, value: str, message: str
) -> None:
    """
    A bad value of a hardening setting is refused with its name and value.
    """
    with pytest.raises(ConfigError) as caught:
        loadSettings({}, {variable: value}, cwd=str(tmp_path))
    assert str(caught.value).startswith(message)


def test_allowedOriginsRepeatAndSplit(tmp_path: Path) -> None:
    """
    Allowed origins come from repeated options or a comma-separated variable.
    """
    fromEnv = loadSettings(
        {},
        {"ALLOWED_ORIGINS": "https://a.example, https://B.example:8443"},
        str(tmp_path),
    )
    assert fromEnv.allowedOrigins == ["https://a.example", "https://b.example:8443"]
    fromOptions = loadSettings({"allowed-origin": ["http://x.test"]}, {}, str(tmp_path))
    assert fromOptions.allowedOrigins == ["http://x.test"]


def test_backendMaxConnectionsAndTLS(tmp_path: Path) -> None:
    """
    A backend may carry maxConnections and tls; bad values are named.
    """
    servers = [{"host": "h", "port": 1, "maxConnections": 5, "tls": True}]
    (backend,) = loadSettings(
        {}, {"BACKEND_SERVERS": json.dumps(servers)}, str(tmp_path)
    ).backends
    assert (backend.maxConnections, backend.tls) == (5, True)
    servers[0]["tls"] = "yes"
    with pytest.raises(ConfigError) as caught:
        loadSettings({}, {"BACKEND_SERVERS": json.dumps(servers)}, str(tmp_path))
    assert "tls 'yes'; tls is true or false" in str(caught.value)


def test_configFileGivesTheBackends(tmp_path: Path) -> None:
    """
    A --config-file holding a backend list is where the backends come from,
    over BACKEND_SERVERS (but not over --backends on the command line).
    """
    listed = tmp_path / "backends.json"
    listed.write_text(json.dumps([{"host": "from-file", "port": 9001}]))
    environ = {"BACKEND_SERVERS": json.dumps([{"host": "from-env", "port": 9002}])}
    settings = loadSettings({"config-file": str(listed)}, environ, str(tmp_path))
    assert [b.host for b in settings.backends] == ["from-file"]
    assert settings.configFile == str(listed)
    options = {"config-file": str(listed), "backends": '[{"host": "cli", "port": 1}]'}
    assert [b.host for b in loadSettings(options, environ, str(tmp_path)).backends] == [
        "cli"
    ]
