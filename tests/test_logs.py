"""
Tests for L{wslb_twisted.logs}: C{--log-format json} under real twistd
processes (in the foreground and as a daemon with a log file), how it meets
twistd's own logging options, and the JSON line of one event.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from helpers import connectClient, twistdCommand, twistdEnvironment
from test_twistd import spawnLoadBalancer
from twisted.logger import Logger, LogLevel, eventFromJSON, formatEvent
from twisted.python import usage

from wslb_twisted import logs

# Foreground and daemon twistd processes


@pytest_twisted.ensureDeferred
async def test_logFormatJSONMakesEveryLineJSON(backends):
    """
    Under C{twistd -n wslb --log-format json}, every line twistd writes,
    from its first ("starting up") to its last ("Server Shut Down."), is one
    JSON object that L{eventFromJSON} reads back, with the message in
    C{log_text} and wslb's structured fields kept.
    """
    watcher, process = spawnLoadBalancer(backends[:1], ["--log-format=json"])
    try:
        ports = await watcher.listening
        client = connectClient(ports["client"])
        await client.opened
    finally:
        process.signalProcess("TERM")
        await watcher.ended
    lines = watcher.output.splitlines()
    events = [eventFromJSON(line) for line in lines]
    texts = [event["log_text"] for event in events]
    assert texts[0].startswith("twistd ") and texts[0].endswith("starting up.")
    assert texts[-1] == "Server Shut Down."
    healthChanges = [e for e in events if e.get("event") == "backend_health_changed"]
    assert [(e["backendId"], e["state"]) for e in healthChanges] == [
        ("backend-1", "healthy")
    ]
    assert formatEvent(healthChanges[0]) == healthChanges[0]["log_text"]


def _waitFor(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.05)


def _pidAlive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_daemonLogsJSONToItsLogFile(tmp_path: Path) -> None:
    """
    A daemon started with C{--logfile} and C{LOG_FORMAT=json} writes its log
    file as JSON lines, every one of them, until it shuts down.
    """
    logFile, pidFile = tmp_path / "wslb.log", tmp_path / "wslb.pid"
    result = subprocess.run(
        [
            *twistdCommand(),
            f"--pidfile={pidFile}",
            f"--logfile={logFile}",
            "wslb",
            "--port=tcp:0:interface=127.0.0.1",
            "--monitor-port=tcp:0:interface=127.0.0.1",
            "--backend=127.0.0.1:1",
        ],
        cwd=tmp_path,
        env=twistdEnvironment({"LOG_FORMAT": "json"}),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    _waitFor(pidFile.exists)
    pid = int(pidFile.read_text())
    try:
        _waitFor(lambda: "monitoring port listening" in logFile.read_text())
        os.kill(pid, signal.SIGTERM)
        _waitFor(lambda: not _pidAlive(pid))
    finally:
        if _pidAlive(pid):
            os.kill(pid, signal.SIGKILL)
    texts = [json.loads(line)["log_text"] for line in logFile.read_text().splitlines()]
    assert texts[0].endswith("starting up.")
    assert texts[-1] == "Server Shut Down."


# twistd's options


def parseTwistd(arguments: list[str]) -> Any:
    """
    Parse a twistd command line as twistd does, plugin options included.
    """
    from twisted.scripts.twistd import ServerOptions

    config = ServerOptions()
    config.parseOptions(arguments)
    return config


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    No C{.env} file, no C{LOG_FORMAT} from the environment, and the JSON
    log's destination restored afterwards.
    """
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LOG_FORMAT", raising=False)
    monkeypatch.setattr(logs, "_logPath", logs._logPath)


@pytest.mark.usefixtures("isolated")
def test_jsonNamesTheObserverFactoryToTwistd() -> None:
    """
    C{--log-format json} sets twistd's own C{--logger} to
    L{logs.jsonObserver}, which twistd imports and calls when logging
    begins.
    """
    config = parseTwistd(["--pidfile=", "-n", "wslb", "--log-format", "json"])
    assert config["logger"] is logs.jsonObserver


@pytest.mark.usefixtures("isolated")
def test_textLeavesTwistdsLoggerAlone() -> None:
    """
    The default text format leaves twistd's logging as it is.
    """
    config = parseTwistd(["--pidfile=", "-n", "wslb"])
    assert config["logger"] is None


@pytest.mark.usefixtures("isolated")
@pytest.mark.parametrize(
    "twistdArguments, problem",
    [
        (["-n", "--syslog"], "cannot be combined with twistd's --syslog"),
        (
            ["-n", "--logger=twisted.logger.textFileLogObserver"],
            "cannot be combined with twistd's --logger",
        ),
        (["--logfile=-"], "cannot go to standard output (--logfile=-) from a daemon"),
    ],
)
def test_otherLogDestinationsRefused(twistdArguments: list[str], problem: str) -> None:
    """
    JSON logs refuse twistd options that send the log elsewhere (syslog,
    another observer factory) or that twistd itself refuses (a daemon
    logging to standard output), with one line naming both.
    """
    with pytest.raises(usage.UsageError) as raised:
        parseTwistd(["--pidfile=", *twistdArguments, "wslb", "--log-format=json"])
    message = str(raised.value)
    assert message.startswith("JSON logs (--log-format / LOG_FORMAT json) ")
    assert problem in message
    assert "\n" not in message


# One event


def test_jsonLineIsOneLineOfTwistedJSON() -> None:
    """
    An event becomes one line of JSON that L{eventFromJSON} reads back into
    the same message, with C{log_text} holding it formatted; the event
    itself is left without C{log_text}.
    """
    events: list[dict[str, Any]] = []
    Logger(namespace="wslb.test", observer=events.append).warn(
        "backend {backendId} is now {state}", backendId="b\n1", state="unhealthy"
    )
    line = logs.jsonLine(events[0])
    assert line.endswith("}\n") and line.count("\n") == 1
    decoded = eventFromJSON(line)
    assert decoded["log_text"] == "backend b\n1 is now unhealthy"
    assert formatEvent(decoded) == "backend b\n1 is now unhealthy"
    assert decoded["log_level"] == LogLevel.warn
    assert decoded["backendId"] == "b\n1"
    assert "log_text" not in events[0]


def test_jsonLineCarriesTheTraceback() -> None:
    """
    The C{log_text} of a logged failure includes its traceback, which
    twisted.logger's JSON alone would lose (the exception itself is not
    serializable).
    """
    events: list[dict[str, Any]] = []
    log = Logger(observer=events.append)
    try:
        raise ValueError("no such symbol")
    except ValueError:
        log.failure("could not {action}", action="subscribe")
    text = json.loads(logs.jsonLine(events[0]))["log_text"]
    assert text.startswith("could not subscribe\nTraceback")
    assert "ValueError: no such symbol" in text
