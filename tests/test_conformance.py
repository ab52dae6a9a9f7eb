"""
The Autobahn TestSuite (fuzzingclient) through wslb, with an echo backend:
the core cases (1-7, 9, 10) must show no FAILED case.

Needs the shared conformance kit (C{../shared/conformance}, or
C{$WSLB_CONFORMANCE_DIR}) and a Python 2.7 for the suite itself (pyenv's, or
C{$PYTHON27}); its C{setup.sh} builds the suite's virtualenv once, cached
under C{~/.cache/wslb-conformance}.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, twistdCommand, twistdEnvironment


def _kit() -> Path:
    """
    Where the conformance kit is: C{$WSLB_CONFORMANCE_DIR}, else the shared
    folder beside the checkout, else the team's shared folder.
    """
    if "WSLB_CONFORMANCE_DIR" in os.environ:
        return Path(os.environ["WSLB_CONFORMANCE_DIR"])
    for candidate in (REPO.parent / "shared", Path("/work/shared")):
        if (candidate / "conformance" / "run.sh").exists():
            return candidate / "conformance"
    return REPO.parent / "shared" / "conformance"


KIT = _kit()


def _python27() -> str | None:
    candidates = [os.environ.get("PYTHON27", "")]
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates += sorted(glob.glob(f"{root}/versions/2.7*/bin/python2.7"))
    candidates.append(shutil.which("python2.7") or "")
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def _freePorts(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _waitForPort(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"process exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listening on {port} after {timeout}s")


@pytest.mark.timeout(900)
def test_autobahnTestSuiteCoreCasesThroughWslb(tmp_path: Path) -> None:
    """
    Every core case of the Autobahn TestSuite passes through wslb in front of
    an echo backend: no FAILED case and every case run.
    """
    if not (KIT / "run.sh").exists():
        pytest.skip(f"the conformance kit is not at {KIT} (set WSLB_CONFORMANCE_DIR)")
    if _python27() is None:
        pytest.skip("no Python 2.7 for the Autobahn TestSuite (set PYTHON27)")
    setup = subprocess.run(
        [str(KIT / "setup.sh"), "wstest"], capture_output=True, text=True, timeout=900
    )
    assert setup.returncode == 0, setup.stdout + setup.stderr

    lbPort, monitorPort, echoPort = _freePorts(3)
    echo = subprocess.Popen(
        [sys.executable, str(KIT / "echo_backend.py"), str(echoPort), "--quiet"]
    )
    backends = f'[{{"host":"127.0.0.1","port":{echoPort},"healthPort":{echoPort}}}]'
    log = open(tmp_path / "wslb.log", "wb")
    lb = subprocess.Popen(
        [
            *twistdCommand(),
            "--pidfile=",
            "-n",
            "wslb",
            f"--port=tcp:{lbPort}:interface=127.0.0.1",
            f"--monitor-port=tcp:{monitorPort}:interface=127.0.0.1",
            f"--backends={backends}",
        ],
        env=twistdEnvironment(),
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _waitForPort(echoPort, echo, 30)
        _waitForPort(lbPort, lb, 30)
        result = subprocess.run(
            [str(KIT / "run.sh"), f"ws://127.0.0.1:{lbPort}", "core"],
            capture_output=True,
            text=True,
            timeout=840,
            env={**os.environ, "CONFORMANCE_OUTDIR": str(tmp_path / "report")},
        )
    finally:
        for process in (lb, echo):
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()
    summary = re.search(r"conformance: .*", result.stdout)
    assert summary is not None, result.stdout + result.stderr
    print(result.stdout)
    assert " FAILED=0 " in summary.group(0), result.stdout
    assert "NOT-RUN=0 " in summary.group(0), result.stdout
    assert result.returncode == 0, result.stdout + result.stderr
