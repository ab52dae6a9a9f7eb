"""
What a run needs and records: its settings, the Node packages, HAProxy,
the Python with wslb, and a description of the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from harness.children import BenchError

BENCH = Path(__file__).resolve().parent.parent
REPO = BENCH.parent
LOADGEN = BENCH / "loadgen"
SCENARIOS = ("S1", "S2", "S3", "S4")
TARGETS = ("direct", "wslb", "haproxy", "haproxy-tcp")
DEFAULT_TARGETS = ("direct", "wslb", "haproxy")
#: What wslb keeps of the caller's environment: nothing that could be a
#: wslb setting (LOAD_BALANCER_ALGORITHM, WORKERS, ...), which the harness
#: gives as options instead.
KEPT_VARIABLES = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR")


def log(message: str) -> None:
    """
    Progress on standard error (the tables go to standard output).
    """
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parseCpus(spec: str) -> set[int]:
    """
    A C{taskset} CPU list (C{0}, C{0,2}, C{1-3}) as a set.
    """
    cpus: set[int] = set()
    for part in spec.split(","):
        if "-" in part:
            low, high = part.split("-")
            cpus.update(range(int(low), int(high) + 1))
        elif part:
            cpus.add(int(part))
    return cpus


class Config:
    """
    The settings of one run, from the command line.

    @ivar haproxy: the HAProxy executable, or C{None} when not installed.
    @ivar wslbPython: the Python of the virtualenv with wslb.
    @ivar wslbSource: with C{--wslb-ref}, the extracted commit put first on
        wslb's C{PYTHONPATH}.
    @ivar wslbDescription: what wslb code is measured, for the record.
    """

    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options
        self.duration: float = options.duration or (5.0 if options.quick else 20.0)
        self.warmup: float = 1.0 if options.quick else 2.0
        self.scenarios = [s.strip().upper() for s in options.scenarios.split(",")]
        self.targets = [t.strip().lower() for t in options.targets.split(",")]
        for scenario in self.scenarios:
            if scenario not in SCENARIOS:
                known = ", ".join(SCENARIOS)
                raise BenchError(f"unknown scenario {scenario!r} (have: {known})")
        for target in self.targets:
            if target not in TARGETS:
                known = ", ".join(TARGETS)
                raise BenchError(f"unknown target {target!r} (have: {known})")
        self.lbCpus: str = options.lb_cpus
        self.generatorCpus: str = options.gen_cpus
        self.generatorCpuSet = parseCpus(self.generatorCpus)
        self.lbCpuSet = parseCpus(self.lbCpus)
        self.generatorCores = len(self.generatorCpuSet)
        self.lbCores = len(self.lbCpuSet)
        self.cache = cacheDirectory()
        self.logs = self.cache / "logs" / time.strftime(f"%Y%m%d-%H%M%S-{os.getpid()}")
        self.haproxy: str | None = None
        self.wslbPython: str | None = None
        self.wslbSource: Path | None = None
        self.wslbDescription = ""

    def wslbEnvironment(self) -> dict[str, str]:
        environ = {
            k: v
            for k, v in os.environ.items()
            if k in KEPT_VARIABLES or k.startswith("LC_")
        }
        if self.wslbSource is not None:
            environ["PYTHONPATH"] = str(self.wslbSource)
        return environ

    def twistd(self) -> list[str]:
        """
        The C{twistd} beside wslb's Python, or C{python -m twisted}.
        """
        assert self.wslbPython is not None
        beside = Path(self.wslbPython).parent / "twistd"
        if beside.exists():
            return [str(beside)]
        return [self.wslbPython, "-m", "twisted"]


def makeLogDirectory(config: Config, keep: int = 10) -> None:
    """
    Create this run's log directory, removing all but the latest C{keep}
    runs' (runs in progress keep theirs: their directory is younger).
    """
    config.logs.mkdir(parents=True)
    runs = sorted(p for p in config.logs.parent.iterdir() if p.is_dir())
    for old in runs[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def cacheDirectory() -> Path:
    """
    C{$WSLB_BENCH_CACHE}, or C{wslb-bench} in the user's cache directory.
    """
    given = os.environ.get("WSLB_BENCH_CACHE")
    if given:
        return Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "wslb-bench"


def ensureLoadgen(cache: Path) -> None:
    """
    Run C{npm ci} in bench/loadgen when its node_modules is missing or was
    installed from another package-lock.json (npm's download cache lives in
    the harness's cache directory).
    """
    for tool in ("node", "npm", "taskset"):
        if shutil.which(tool) is None:
            raise BenchError(
                f"{tool} is not installed (the benchmark needs Node 18+ with npm, "
                "and util-linux's taskset)"
            )
    digest = hashlib.sha256((LOADGEN / "package-lock.json").read_bytes()).hexdigest()
    stamp = LOADGEN / "node_modules" / ".wslb-bench-lock"
    if stamp.exists() and stamp.read_text() == digest:
        return
    log(f"installing the load generator's packages (npm ci in {LOADGEN})")
    subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--cache", str(cache / "npm")],
        cwd=LOADGEN,
        check=True,
        timeout=600,
        stdout=sys.stderr,
    )
    stamp.write_text(digest)


def findHAProxy(install: bool) -> str | None:
    """
    The HAProxy executable; with C{install}, C{apt-get install} it first when
    it is missing.
    """
    candidates = (
        shutil.which("haproxy"),
        "/usr/sbin/haproxy",
        "/usr/local/sbin/haproxy",
    )
    found = next((c for c in candidates if c and os.access(c, os.X_OK)), None)
    if found or not install:
        return found
    log("installing haproxy (apt-get install -y haproxy)")
    subprocess.run(
        ["apt-get", "install", "-y", "haproxy"],
        check=True,
        timeout=600,
        stdout=sys.stderr,
    )
    return shutil.which("haproxy") or "/usr/sbin/haproxy"


def findWslbPython(given: str | None) -> str | None:
    """
    C{--wslb-python}, C{$WSLB_PYTHON}, the repository's .venv, /tmp/venv:
    the first that exists.
    """
    for explicit, source in (
        (given, "--wslb-python"),
        (os.environ.get("WSLB_PYTHON"), "WSLB_PYTHON"),
    ):
        if explicit and not os.access(explicit, os.X_OK):
            raise BenchError(f"{source}={explicit!r} is not an executable Python")
    candidates = [
        given,
        os.environ.get("WSLB_PYTHON"),
        str(REPO / ".venv" / "bin" / "python"),
        "/tmp/venv/bin/python",
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=20
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def wslbSource(ref: str | None, cache: Path) -> tuple[Path | None, str]:
    """
    With C{--wslb-ref}, extract that commit's C{wslb_twisted/} and
    C{twisted/plugins/} (C{git archive}: read-only on the repository) into
    the cache, to be put first on C{PYTHONPATH}, so the run measures exactly
    that commit whatever the working tree holds.

    @return: the source directory (C{None} for the installed wslb) and a
        description of what is measured.
    """
    head = git("rev-parse", "--short", "HEAD")
    if not ref:
        dirty = git(
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            "wslb_twisted",
            "twisted",
        )
        state = "uncommitted changes in wslb_twisted/" if dirty else "clean"
        return None, f"the installed wslb; working tree at {head} ({state})"
    sha = git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if not sha:
        raise BenchError(f"--wslb-ref {ref!r} is not a commit")
    target = cache / "src" / sha
    if not (target / "wslb_twisted").is_dir():
        archive = subprocess.run(
            [
                "git",
                "-C",
                str(REPO),
                "archive",
                "--format=tar",
                sha,
                "wslb_twisted",
                "twisted",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        ).stdout
        partial = target.with_name(sha + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(partial)
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    return target, f"commit {sha[:10]} ({ref}), extracted with git archive"


def _output(
    argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> str:
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=30, env=env, cwd=cwd
        )
        return (result.stdout + result.stderr).strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f"unavailable ({e})"


_BUFFERUTIL = (
    "const d = require('path').dirname(require.resolve('bufferutil'));"
    "try { const p = require('node-gyp-build').resolve(d);"
    " console.log('native, ' + p.split('/').slice(-2).join('/')) }"
    "catch (e) { console.log('JavaScript fallback') }"
)

_WSLB_STACK = (
    "import os, sys, twisted, autobahn, wslb_twisted;"
    "print('Python %s, Twisted %s, Autobahn %s; wslb_twisted from %s' % ("
    "sys.version.split()[0], twisted.__version__, autobahn.__version__,"
    "os.path.dirname(wslb_twisted.__file__)))"
)


def machineInfo(config: Config) -> dict[str, Any]:
    """
    The machine and the versions of everything measured.
    """
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    distribution = ""
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                distribution = line.split("=", 1)[1].strip('"')
    memory = ""
    with contextlib.suppress(OSError, IndexError):
        memory = Path("/proc/meminfo").read_text().splitlines()[0].split(":")[1].strip()
    wsVersion = "not installed"
    with contextlib.suppress(OSError, ValueError, KeyError):
        package = LOADGEN / "node_modules" / "ws" / "package.json"
        wsVersion = json.loads(package.read_text())["version"]
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "os": distribution,
        "memory": memory,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "node": _output(["node", "--version"]),
        "ws": wsVersion,
        "bufferutil": _output(["node", "-e", _BUFFERUTIL], cwd=LOADGEN)
        if (LOADGEN / "node_modules").exists()
        else "not installed",
        "harness python": platform.python_version(),
    }
    if config.haproxy:
        info["haproxy"] = _output([config.haproxy, "-v"]).splitlines()[0]
    if config.wslbPython:
        info["wslb python"] = config.wslbPython
        info["wslb stack"] = _output(
            [config.wslbPython, "-c", _WSLB_STACK],
            env=config.wslbEnvironment(),
            cwd=config.cache,
        )
        info["wslb measured"] = config.wslbDescription
    return info
