"""
Tests of the C{twistd wslb} command and C{wslb.tac} as operators run them:
real subprocesses, checking that bad settings stop startup with one line and
no traceback.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from helpers import REPO, twistdCommand, twistdEnvironment

TIMEOUT = 60
KNOWN = "(have: ip-hash, least-connections, round-robin, weighted)"

def runTwistd(
    cwd: Path, arguments: list[str], environ: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """
    Run twistd in C{cwd} with this checkout first on the path, no pid file,
    none of the settings' variables inherited, and C{environ} added.
    """
    env = twistdEnvironment(environ)
    return subprocess.run(
        [*twistdCommand(), "--pidfile=", *arguments],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def assertRefused(result: subprocess.CompletedProcess[str], sentence: str) -> None:
    """
    twistd exited with a failure status, printed C{sentence} and no traceback.
    """
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert sentence in output, output
    assert "Traceback" not in output, output


def test_unknownAlgorithmOption(tmp_path: Path) -> None:
    """
    C{twistd -n wslb --algorithm bogus} exits non-zero naming --algorithm
    and the value, without a traceback.
    """
    result = runTwistd(tmp_path, ["-n", "wslb", "--algorithm", "bogus"])
    assertRefused(result, f"--algorithm='bogus' is not a known algorithm {KNOWN}")


def test_unknownAlgorithmEnvironment(tmp_path: Path) -> None:
    """
    An unknown LOAD_BALANCER_ALGORITHM in the environment stops
    C{twistd -n wslb} with a line naming the variable and the value.
    """
    result = runTwistd(tmp_path, ["-n", "wslb"], {"LOAD_BALANCER_ALGORITHM": "bogus"})
    assertRefused(
        result, f"LOAD_BALANCER_ALGORITHM='bogus' is not a known algorithm {KNOWN}"
    )


def test_zeroWeightEnvironment(tmp_path: Path) -> None:
    """
    A backend of weight 0 in BACKEND_SERVERS stops C{twistd -n wslb} with a
    line naming the variable and the weight.
    """
    servers = '[{"host": "localhost", "port": 3001, "weight": 0}]'
    result = runTwistd(tmp_path, ["-n", "wslb"], {"BACKEND_SERVERS": servers})
    assertRefused(
        result, "BACKEND_SERVERS: item 1 has weight 0; weights are integers >= 1"
    )


def test_badEnvFileValue(tmp_path: Path) -> None:
    """
    A bad value in ./.env stops C{twistd -n wslb} with a line naming the
    variable and the value.
    """
    (tmp_path / ".env").write_text("LOAD_BALANCER_PORT=99999\n")
    result = runTwistd(tmp_path, ["-n", "wslb"])
    assertRefused(
        result,
        "LOAD_BALANCER_PORT='99999' is not a port number in 1-65535 or an "
        "endpoint string",
    )


def test_tacBadEnvironment(tmp_path: Path) -> None:
    """
    C{twistd -ny wslb.tac} with a bad setting in the environment exits
    non-zero with exactly one line on stderr naming the variable and the
    value, and no traceback.
    """
    result = runTwistd(
        tmp_path,
        ["-ny", str(REPO / "wslb.tac")],
        {"HEALTH_CHECK_INTERVAL": "soon"},
    )
    sentence = (
        "HEALTH_CHECK_INTERVAL='soon' is not a positive integer number of milliseconds"
    )
    assertRefused(result, sentence)
    assert result.stderr.strip() == sentence


def test_tacZeroWeightEnvironment(tmp_path: Path) -> None:
    """
    C{twistd -ny wslb.tac} refuses a backend of weight 0 in BACKEND_SERVERS
    with one line naming the variable and the weight.
    """
    servers = '[{"host": "localhost", "port": 3001, "weight": 0}]'
    result = runTwistd(
        tmp_path, ["-ny", str(REPO / "wslb.tac")], {"BACKEND_SERVERS": servers}
    )
    assertRefused(
        result, "BACKEND_SERVERS: item 1 has weight 0; weights are integers >= 1"
    )


def test_help(tmp_path: Path) -> None:
    """
    C{twistd wslb --help} lists every option and exits successfully.
    """
    result = runTwistd(tmp_path, ["wslb", "--help"])
    assert result.returncode == 0, result.stdout + result.stderr
    for option in (
        "--port=",
        "--monitor-port=",
        "--algorithm=",
        "--health-interval=",
        "--health-timeout=",
        "--max-retries=",
        "--connect-timeout=",
        "--backends=",
        "--backend=",
        "--trusted-proxy=",
        "--env-file=",
    ):
        assert option in result.stdout
