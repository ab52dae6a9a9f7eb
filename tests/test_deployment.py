"""
Deployment files: the compose file, the Dockerfile and C{.env.example}
checked against the port table and wslb's own parsers, and
C{start-loadbalancer.sh} / C{stop-loadbalancer.sh} run for real on a free port
range.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import yaml
from helpers import REPO, connectClient, twistdEnvironment

from wslb_twisted import config
from wslb_twisted.config import loadSettings, parseBackendsJSON

LOAD_BALANCER_PORT = 3000
MONITORING_PORT = 3004
# compose service: (backend id, WebSocket port, health port)
BACKENDS = {
    "backend1": ("backend-1", 3001, 4001),
    "backend2": ("backend-2", 3002, 4002),
    "backend3": ("backend-3", 3003, 4003),
}
SERVICES = ("backend-1", "backend-2", "backend-3", "loadbalancer")
# Every environment variable the load balancer reads, from config.py itself.
SETTINGS_VARIABLES = sorted(
    setting.variable
    for setting in vars(config).values()
    if isinstance(setting, config._Setting)
)


def _compose() -> dict[str, Any]:
    with open(REPO / "docker-compose.loadbalancer.yml", encoding="utf-8") as file:
        return yaml.safe_load(file)  # type: ignore[no-any-return]


def _published(service: dict[str, Any]) -> set[tuple[str, int, int]]:
    """
    A compose service's published ports as (host address, host port,
    container port); the address is C{""} for all interfaces.
    """
    published = set()
    for entry in service.get("ports", []):
        *address, hostPort, containerPort = str(entry).split(":")
        published.add(("".join(address), int(hostPort), int(containerPort)))
    return published


def _healthcheckCode(test: list[str]) -> str:
    """
    The Python code of an exec-form C{["CMD", "python", "-c", CODE]}
    health check.
    """
    assert test[:3] == ["CMD", "python", "-c"], test
    assert len(test) == 4, test
    compile(test[3], "<healthcheck>", "exec")
    return test[3]


def _dockerfile() -> list[tuple[str, str]]:
    """
    The Dockerfile's instructions as (KEYWORD, arguments), continuation lines
    joined.
    """
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    instructions = []
    for line in re.sub(r"\\\n", " ", text).splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def _instruction(keyword: str) -> list[str]:
    return [arguments for name, arguments in _dockerfile() if name == keyword]


def _dockerfileHealthcheck() -> str:
    (healthcheck,) = _instruction("HEALTHCHECK")
    command = json.loads(healthcheck[healthcheck.index("CMD ") + 4 :])
    return _healthcheckCode(["CMD", *command])


def test_composeRunsTheLoadBalancerAndThreeBackendsFromTheDockerfile():
    """
    The compose file has the load balancer and three backends, all built from
    the repository's Dockerfile.
    """
    services = _compose()["services"]
    assert set(services) == {"loadbalancer", *BACKENDS}
    for service in services.values():
        build = service["build"]
        context = build if isinstance(build, str) else build["context"]
        assert context == "."
        assert isinstance(build, str) or build.get("dockerfile", "Dockerfile") == (
            "Dockerfile"
        )


def test_composeLoadBalancerPublishesItsPortsAndWaitsForHealthyBackends():
    """
    The load balancer publishes the client and monitoring ports and starts
    once every backend's health check passes.
    """
    loadBalancer = _compose()["services"]["loadbalancer"]
    assert _published(loadBalancer) == {
        ("", LOAD_BALANCER_PORT, LOAD_BALANCER_PORT),
        ("", MONITORING_PORT, MONITORING_PORT),
    }
    assert loadBalancer["depends_on"] == {
        name: {"condition": "service_healthy"} for name in BACKENDS
    }


def test_composeLoadBalancerSettingsParseWithWslbsOwnOptions(monkeypatch, tmp_path):
    """
    The load balancer's command and environment parse with C{twistd wslb}'s
    own options into the port table, and C{BACKEND_SERVERS} names the three
    backend services by their compose host names with their health ports.
    """
    from wslb_twisted.tap import Options

    loadBalancer = _compose()["services"]["loadbalancer"]
    environment = {k: str(v) for k, v in loadBalancer["environment"].items()}
    assert set(environment) <= set(SETTINGS_VARIABLES)
    for variable in SETTINGS_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.chdir(tmp_path)

    command = loadBalancer["command"]
    assert command[0] == "wslb"
    options = Options()
    options.parseOptions(command[1:])
    assert options.settings.port == f"tcp:{LOAD_BALANCER_PORT}"
    assert options.settings.monitorPort == f"tcp:{MONITORING_PORT}"
    backends = parseBackendsJSON(environment["BACKEND_SERVERS"])
    assert [(b.host, b.id, b.port, b.healthPort) for b in backends] == [
        (host, *spec) for host, spec in BACKENDS.items()
    ]


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_composeBackendCommandParsesWithTheBackendPlugin(name):
    """
    Each backend's command parses with C{twistd wslb-backend}'s options into
    its row of the port table, listening on every interface of its container;
    its health check asks its own health port, and it publishes both ports on
    the host's loopback interface.
    """
    from wslb_twisted.demo.backend_tap import Options

    backendId, port, healthPort = BACKENDS[name]
    service = _compose()["services"][name]
    command = service["command"]
    assert command[0] == "wslb-backend"
    options = Options()
    options.parseOptions(command[1:])
    assert options.settings.port == f"tcp:{port}:interface=0.0.0.0"
    assert options.settings.healthPort == f"tcp:{healthPort}:interface=0.0.0.0"
    assert options.settings.name == backendId
    code = _healthcheckCode(service["healthcheck"]["test"])
    assert f"http://127.0.0.1:{healthPort}/health" in code
    assert _published(service) == {
        ("127.0.0.1", port, port),
        ("127.0.0.1", healthPort, healthPort),
    }


def test_dockerfileRunsTheLoadBalancerUnderTwistdAsANonRootUser():
    """
    The image is built on Python 3.11, installs the checkout, runs
    C{twistd -n wslb} by default as a non-root user, exposes the client and
    monitoring ports, and checks its health with Python (slim images have no
    curl) on the monitoring port.
    """
    assert _instruction("FROM") == ["python:3.11-slim"]
    assert any(r.startswith("pip install .") for r in _instruction("RUN"))
    exposed = {int(port) for ports in _instruction("EXPOSE") for port in ports.split()}
    assert exposed == {LOAD_BALANCER_PORT, MONITORING_PORT}
    (user,) = _instruction("USER")
    assert user not in ("root", "0")
    (entrypoint,) = _instruction("ENTRYPOINT")
    assert json.loads(entrypoint)[:2] == ["twistd", "-n"]
    assert _instruction("CMD") == ['["wslb"]']
    assert f"http://127.0.0.1:{MONITORING_PORT}/health" in _dockerfileHealthcheck()


def test_dockerfileCopiesOnlyWhatExistsAndIsNotIgnored():
    """
    Every path the Dockerfile copies exists in the checkout and is not
    excluded from the build context by C{.dockerignore}.
    """
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for copy in _instruction("COPY"):
        *sources, _ = copy.split()
        for source in sources:
            assert (REPO / source).exists(), source
            assert source.rstrip("/") not in ignored, source


def test_envExampleGivesEverySettingWithItsDefault(tmp_path):
    """
    C{.env.example} has one commented-out line for every setting, each after
    a comment saying what it is; uncommenting them all changes nothing.
    """
    lines = (REPO / ".env.example").read_text(encoding="utf-8").splitlines()
    assignments = {}
    for number, line in enumerate(lines):
        match = re.fullmatch(r"# ([A-Z_]+)=(.*)", line)
        if match:
            assert lines[number - 1].startswith("# "), line
            assert not re.fullmatch(r"# [A-Z_]+=.*", lines[number - 1]), line
            assert match[1] not in assignments, line
            assignments[match[1]] = line[2:]
    assert sorted(assignments) == SETTINGS_VARIABLES

    (tmp_path / "example").mkdir()
    (tmp_path / "example" / ".env").write_text("\n".join(assignments.values()))
    (tmp_path / "empty").mkdir()
    fromExample = loadSettings({}, {}, cwd=str(tmp_path / "example"))
    defaults = loadSettings({}, {}, cwd=str(tmp_path / "empty"))
    assert dataclasses.asdict(fromExample) == dataclasses.asdict(defaults)


# The scripts, for real.


def _portFree(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port))
        except OSError:
            return False
    return True


def _ports(base: int) -> list[int]:
    return [base + offset for offset in (0, 1, 2, 3, 4, 1001, 1002, 1003)]


def _freeBasePort() -> int:
    """
    A base port whose whole range (base to base + 1003) is free, below the
    ephemeral port range, where other tests' port-0 listeners and outgoing
    connections cannot take a port between this check and the scripts' start.
    """
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
            ephemeral = int(ranges.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32768
    for _ in range(100):
        base = random.randrange(10000, min(ephemeral, 65535) - 1004)
        if all(_portFree(port) for port in _ports(base)):
            return base
    raise AssertionError("no free port range found")


def _alive(pid: int) -> bool:
    """
    Whether a process exists and is not a zombie.
    """
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except OSError as error:
        return error.errno == errno.EPERM
    return True


def _isTwistd(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return b"twistd" in cmdline.read()
    except OSError:
        return _alive(pid)


class Deployment:
    """
    The start and stop scripts on a free port range, with their pid and log
    files in a temporary directory; remembers every pid it saw, to be sure
    none is left running.
    """

    def __init__(self, tmp_path: Path) -> None:
        twistd = Path(sys.executable).with_name("twistd")
        if not twistd.exists():
            pytest.skip(f"no twistd script beside {sys.executable}")
        self.base = _freeBasePort()
        self.runDir = tmp_path / "run"
        self.env = twistdEnvironment(
            {
                "TWISTD": str(twistd),
                "WSLB_BASE_PORT": str(self.base),
                "WSLB_RUN_DIR": str(self.runDir),
            }
        )
        for variable in SETTINGS_VARIABLES:
            self.env.pop(variable, None)
        self.seen: set[int] = set()

    def run(self, script: str, *arguments: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(REPO / script), *arguments],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.pids()
        return result

    def start(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        return self.run("start-loadbalancer.sh", *arguments)

    def stop(self) -> subprocess.CompletedProcess[str]:
        return self.run("stop-loadbalancer.sh")

    def pids(self) -> dict[str, int]:
        """
        The pids in the run directory's pid files, by service.
        """
        found = {}
        for pidfile in sorted(self.runDir.glob("*.pid")):
            try:
                found[pidfile.stem] = int(pidfile.read_text())
            except (OSError, ValueError):
                continue
        self.seen.update(found.values())
        return found

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        url = f"http://127.0.0.1:{self.base + 4}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return answer.status, json.load(answer)
        except urllib.error.HTTPError as error:
            return error.code, json.load(error)

    def cleanUp(self) -> None:
        """
        Stop through the script, then kill whatever it missed.
        """
        try:
            self.stop()
        finally:
            for pid in self.seen:
                if _alive(pid) and _isTwistd(pid):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    running = Deployment(tmp_path)
    try:
        yield running
    finally:
        running.cleanUp()


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit status {result.returncode}\n{result.stdout}\n{result.stderr}"


@pytest_twisted.ensureDeferred
async def test_startRunsThreeBackendsBehindTheLoadBalancer(deployment):
    """
    C{start-loadbalancer.sh} returns once the load balancer's C{/health}
    answers: 200, with its three backends healthy, on the shifted port table;
    a client then gets quotes through the load balancer, C{--status} reports
    everything running, and the image's and the compose file's health check
    commands pass against the running processes.
    """
    from twisted.internet import reactor

    base = deployment.base
    started = deployment.start()
    assert started.returncode == 0, _output(started)
    assert sorted(deployment.pids()) == sorted(SERVICES)

    code, health = deployment.get("/health")
    assert code == 200
    assert health["status"] == "healthy"
    assert health["loadBalancer"]["healthyBackends"] == 3
    assert [(b["id"], b["port"]) for b in health["backends"]] == [
        (f"backend-{n}", base + n) for n in (1, 2, 3)
    ]

    client = connectClient(base)
    protocol = await client.opened.addTimeout(10, reactor)
    welcome = json.loads((await client.messages.get().addTimeout(10, reactor))[0])
    assert welcome["type"] == "welcome"
    assert welcome["server"] in {"backend-1", "backend-2", "backend-3"}
    protocol.sendMessage(
        json.dumps({"type": "subscribe", "symbols": ["AAPL"]}).encode()
    )
    while True:
        message = json.loads((await client.messages.get().addTimeout(10, reactor))[0])
        if message["type"] == "quote":
            break
    assert (message["symbol"], message["server"]) == ("AAPL", welcome["server"])
    protocol.sendClose()
    await client.closed.addTimeout(10, reactor)

    status = deployment.start("--status")
    assert status.returncode == 0, _output(status)
    assert status.stdout.count("running (pid") == 4
    assert "200, healthy, 3 of 3 backends healthy" in status.stdout

    def shifted(port: int) -> int:
        return base + port - LOAD_BALANCER_PORT

    checks = [
        _dockerfileHealthcheck().replace(
            f":{MONITORING_PORT}/", f":{shifted(MONITORING_PORT)}/"
        )
    ]
    services = _compose()["services"]
    for name, (_, _, healthPort) in BACKENDS.items():
        code = _healthcheckCode(services[name]["healthcheck"]["test"])
        checks.append(code.replace(f":{healthPort}/", f":{shifted(healthPort)}/"))
    for check in checks:
        ran = subprocess.run([sys.executable, "-c", check], timeout=30)
        assert ran.returncode == 0, check


def test_startTwiceStartsNothingNew(deployment):
    """
    Running C{start-loadbalancer.sh} while everything runs starts no second
    copy: the pid files name the same processes, and it says so.
    """
    first = deployment.start()
    assert first.returncode == 0, _output(first)
    pids = deployment.pids()
    second = deployment.start()
    assert second.returncode == 0, _output(second)
    assert deployment.pids() == pids
    for service, pid in pids.items():
        assert f"{service} already running (pid {pid})" in second.stdout


def test_startReplacesAStalePidFile(deployment):
    """
    A pid file naming a process that no longer runs (one killed without
    cleaning up) is removed, and its service started.
    """
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    deadPid = int(gone.stdout)
    deployment.runDir.mkdir()
    (deployment.runDir / "backend-2.pid").write_text(str(deadPid))
    started = deployment.start()
    assert started.returncode == 0, _output(started)
    assert "removed stale pid file" in started.stderr
    pid = deployment.pids()["backend-2"]
    assert pid != deadPid
    assert _alive(pid)


def test_stopEndsEverythingStartStarted(deployment):
    """
    C{stop-loadbalancer.sh} ends every process named in the pid files,
    removes the pid files and frees every port; run again, it says nothing
    runs and succeeds.
    """
    started = deployment.start()
    assert started.returncode == 0, _output(started)
    pids = deployment.pids()
    assert len(pids) == 4

    stopped = deployment.stop()
    assert stopped.returncode == 0, _output(stopped)
    for service, pid in pids.items():
        assert f"{service} stopped (pid {pid})" in stopped.stdout
        assert not _alive(pid)
    assert list(deployment.runDir.glob("*.pid")) == []
    assert [port for port in _ports(deployment.base) if not _portFree(port)] == []

    again = deployment.stop()
    assert again.returncode == 0, _output(again)
    assert "not running" in again.stdout


def test_startRefusesAndStartsNothingWhenAPortIsTaken(deployment):
    """
    When one of its ports is taken, C{start-loadbalancer.sh} fails with a
    message naming the port, what it is for and (where C{ss} can tell) the
    process holding it, and starts nothing.
    """
    taken = deployment.base + 1002
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", taken))
        holder.listen()
        started = deployment.start()
    assert started.returncode != 0, _output(started)
    assert f"port {taken} (backend-2 health port) is already in use" in started.stderr
    if shutil.which("ss"):
        assert f"(pid {os.getpid()})" in started.stderr
    assert deployment.pids() == {}
    assert [p for p in _ports(deployment.base) if p != taken and not _portFree(p)] == []


def test_startRefusesABasePortWhoseRangeDoesNotFit(deployment):
    """
    A C{WSLB_BASE_PORT} whose health ports would pass 65535 is refused before
    anything starts.
    """
    deployment.env["WSLB_BASE_PORT"] = "65000"
    started = deployment.start()
    assert started.returncode != 0, _output(started)
    assert "WSLB_BASE_PORT=65000 is out of range" in started.stderr
    assert deployment.pids() == {}
