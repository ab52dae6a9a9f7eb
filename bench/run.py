#!/usr/bin/env python3
"""
wslb's benchmark: direct (no load balancer), wslb and HAProxy, in one run,
on four scenarios, with Node C{ws} backends and load generator.  Run it as
C{bench/run.sh}; C{bench/README.md} explains the scenarios and measurements.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import resource
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.children import BenchError, Child  # noqa: E402
from harness.environment import (  # noqa: E402
    BENCH,
    DEFAULT_TARGETS,
    SCENARIOS,
    TARGETS,
    Config,
    ensureLoadgen,
    findHAProxy,
    findWslbPython,
    log,
    machineInfo,
    makeLogDirectory,
    parseCpus,
    wslbSource,
)
from harness.report import (  # noqa: E402
    renderChecks,
    renderProfiles,
    renderTables,
    targetChecks,
)
from harness.scenarios import Bench, ScenarioTimeoutError  # noqa: E402

PROGRAM = os.environ.get("WSLB_BENCH_PROG", "bench/run.sh")


def parseArguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Benchmark wslb against direct connections and HAProxy, "
        "on one run's backends and generator (see bench/README.md).",
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="5-second windows instead of 20")
    add("--scenarios", default=",".join(SCENARIOS), help="comma list of S1,S2,S3,S4")
    add(
        "--targets",
        default=",".join(DEFAULT_TARGETS),
        help=f"comma list of {','.join(TARGETS)} (default {','.join(DEFAULT_TARGETS)})",
    )
    add("--duration", type=float, help="seconds measured in S1, S2 and S4")
    add("--install-haproxy", action="store_true", help="apt-get install haproxy")
    add(
        "--haproxy-mode",
        choices=("http", "tcp"),
        default="http",
        help="the haproxy target's mode: http (parses the upgrade, then tunnels; "
        "default) or tcp (a byte tunnel; also the haproxy-tcp target)",
    )
    add(
        "--wslb-python",
        help="Python of the virtualenv with wslb (default: $WSLB_PYTHON, "
        ".venv/bin/python, /tmp/venv/bin/python)",
    )
    add(
        "--wslb-ref",
        help="measure this commit's wslb_twisted/ (extracted with git archive) "
        "instead of the installed working tree",
    )
    add(
        "--wslb-arg",
        action="append",
        default=[],
        help="extra option for twistd wslb (repeatable): --wslb-arg=--workers=2",
    )
    add(
        "--wslb-endpoint-option",
        action="append",
        default=[],
        help="extra option for wslb's client endpoint string, such as backlog=1024",
    )
    add("--lb-cpus", default="0", help="CPUs for the load balancer (default 0)")
    add("--gen-cpus", default="1", help="CPUs for backends and generator (default 1)")
    add("--backends", type=int, default=3, help="backend servers (default 3)")
    add(
        "--repeat",
        type=int,
        default=1,
        help="rounds per scenario, targets interleaved; tables show medians",
    )
    add(
        "--profile",
        action="store_true",
        help="py-spy record wslb in each window (perturbs the measurement)",
    )
    add("--output", default=str(BENCH / "results" / "latest.json"), help="JSON file")
    add("--show", metavar="JSON", help="print the tables of a saved run and exit")
    hidden = argparse.SUPPRESS
    add("--s1-clients", type=int, default=1000, help=hidden)
    add("--s1-rate", type=float, default=20, help=hidden)
    add("--tick-ms", type=float, default=5, help=hidden)
    add("--s2-clients", type=int, default=100, help=hidden)
    add("--s3-connections", type=int, default=2000, help=hidden)
    add("--s3-concurrency", type=int, default=200, help=hidden)
    add("--s4-clients", type=int, default=50, help=hidden)
    return parser.parse_args(argv)


def _interrupted(signum: int, frame: Any) -> NoReturn:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _timedOut(signum: int, frame: Any) -> NoReturn:
    raise ScenarioTimeoutError("time limit")


def prepare(options: argparse.Namespace) -> Config:
    """
    Settings, file descriptors, CPU pinning of the harness itself, and
    everything the run needs installed.
    """
    config = Config(options)
    makeLogDirectory(config)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.sched_setaffinity(0, parseCpus(config.generatorCpus))
    ensureLoadgen(config.cache)
    config.haproxy = findHAProxy(options.install_haproxy)
    if "wslb" in config.targets:
        config.wslbPython = findWslbPython(options.wslb_python)
        config.wslbSource, config.wslbDescription = wslbSource(
            options.wslb_ref, config.cache
        )
    return config


def show(path: str) -> int:
    """
    The header, tables and target checks of a saved run, rendered again.
    """
    document = json.loads(Path(path).read_text())
    print(f"command: {document['command']}")
    print(f"started: {document['started']}")
    for key, value in document["machine"].items():
        print(f"{key}: {value}")
    settings = argparse.Namespace(**document["settings"])
    targets = [t.strip() for t in settings.targets.split(",")]
    print(renderTables(document["results"], targets, settings))
    print(renderChecks(targetChecks(document["results"])))
    if document.get("profiles"):
        print(renderProfiles(document["profiles"]))
    return 0


def main(argv: list[str]) -> int:
    options = parseArguments(argv)
    if options.show:
        return show(options.show)
    commandLine = shlex.join([PROGRAM, *argv])
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupted)
    signal.signal(signal.SIGALRM, _timedOut)
    try:
        config = prepare(options)
        info = machineInfo(config)
        started = datetime.datetime.now().astimezone()
        print(f"command: {commandLine}")
        print(f"started: {started.isoformat(timespec='seconds')}")
        for key, value in info.items():
            print(f"{key}: {value}")
        print(
            f"pinning: load balancer on CPU {config.lbCpus}; backends, generator "
            f"and harness on CPU {config.generatorCpus}"
        )
        print(
            f"window: {config.duration:g} s measured after {config.warmup:g} s "
            f"warm-up; logs in {config.logs}"
        )
        if config.haproxy is None and any(
            t.startswith("haproxy") for t in config.targets
        ):
            print("haproxy: not installed; its columns are skipped "
                  "(apt-get install haproxy, or --install-haproxy)")  # fmt: skip
        sys.stdout.flush()
        bench = Bench(config)
        began = time.monotonic()
        try:
            bench.run()
        finally:
            Child.stopAll()
        tables = renderTables(bench.results, config.targets, options)
        checks = renderChecks(targetChecks(bench.results))
        print(tables)
        print(checks)
        if bench.profiles:
            print(renderProfiles(bench.profiles))
        info["loadavg at end"] = [round(x, 2) for x in os.getloadavg()]
        document = {
            "command": commandLine,
            "started": started.isoformat(timespec="seconds"),
            "elapsedS": round(time.monotonic() - began, 1),
            "machine": info,
            "settings": {
                key: value
                for key, value in vars(options).items()
                if key not in ("output",)
            }
            | {"durationS": config.duration, "warmupS": config.warmup},
            "results": bench.results,
            "targets": targetChecks(bench.results),
            "profiles": bench.profiles,
            "tables": tables + "\n" + checks,
        }
        output = Path(options.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(document, indent=2, default=str) + "\n")
        print(f"\nresults: {output}")
        return 0
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}): stopping everything the benchmark started")
        return 130
    except (BenchError, subprocess.SubprocessError, OSError) as e:
        log(f"error: {e}")
        return 1
    finally:
        signal.alarm(0)
        Child.stopAll()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
