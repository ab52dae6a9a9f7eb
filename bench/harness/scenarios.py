"""
The four scenarios, each run against each target in turn, on the same
backend ports: S1 fan-out, S2 flood, S3 connection storm, S4 echo.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

from harness.children import BenchError, Child
from harness.environment import LOADGEN, Config, log
from harness.procfs import Snapshot, listenOverflows, memoryKB, windowFigures
from harness.profiling import Profiler, findPySpy
from harness.targets import LoadBalancer, freePort, startHAProxy, startWslb

#: Share of its CPUs above which a side of the run counts as saturated.
SATURATED_PERCENT = 90.0
HAPROXY_MISSING = (
    "haproxy is not installed (apt-get install haproxy, or --install-haproxy)"
)


class ScenarioTimeoutError(BenchError):
    """
    A scenario ran over its time limit (raised from SIGALRM).
    """


class Bench:
    """
    One run: every scenario against every target, each measurement with
    its own backends, generator and load balancer processes.

    @ivar results: scenario -> target -> figures (or C{error}, C{skipped}).
    @ivar profiles: with C{--profile}, C{S1-wslb} etc. -> profile summary.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.logs = config.logs
        self.backendPorts = [freePort() for _ in range(config.options.backends)]
        self.backends: Child | None = None
        self.results: dict[str, dict[str, dict[str, Any]]] = {}
        self.profiles: dict[str, Any] = {}
        self.pySpy = findPySpy(config.wslbPython) if config.options.profile else None
        if config.options.profile and self.pySpy is None:
            log("--profile: no py-spy (pip install py-spy into wslb's virtualenv)")

    # Processes --------------------------------------------------------------

    def startBackends(self) -> None:
        ports = ",".join(map(str, self.backendPorts))
        argv = ["node", str(LOADGEN / "backend.js"), ports]
        self.backends = Child(
            "backends", argv, self.config.generatorCpus, self.logs, speaksJSON=True
        )
        self.backends.waitEvent("ready", 20)

    def backendCommand(self, **command: Any) -> None:
        assert self.backends is not None
        self.backends.send(**command)

    def backendStats(self) -> dict[str, Any]:
        assert self.backends is not None
        self.backends.send(cmd="stats")
        return self.backends.waitEvent("stats", 15)

    def stopBackends(self) -> None:
        if self.backends is not None:
            self.backends.stop(grace=2)
            self.backends = None

    def startGenerator(
        self, mode: str, urls: list[str], clients: int, concurrency: int
    ) -> Child:
        argv = [
            "node", str(LOADGEN / "client.js"), "--mode", mode,
            "--urls", ",".join(urls), "--clients", str(clients),
            "--concurrency", str(concurrency),
        ]  # fmt: skip
        generator = Child(
            f"generator-{mode}",
            argv,
            self.config.generatorCpus,
            self.logs,
            speaksJSON=True,
        )
        generator.waitEvent("ready", 20)
        return generator

    def startTarget(self, scenario: str, target: str) -> LoadBalancer | None:
        label = f"{scenario}-{target}"
        if target == "direct":
            return None
        if target == "wslb":
            return startWslb(self.config, label, self.backendPorts, self.logs)
        mode = "tcp" if target == "haproxy-tcp" else self.config.options.haproxy_mode
        return startHAProxy(self.config, label, self.backendPorts, self.logs, mode)

    def urls(self, lb: LoadBalancer | None, path: str) -> list[str]:
        if lb is None:
            return [f"ws://127.0.0.1:{port}{path}" for port in self.backendPorts]
        return [lb.url(path)]

    def pids(
        self, lb: LoadBalancer | None, generator: Child, profiler: Profiler | None
    ) -> dict[str, int]:
        assert self.backends is not None
        pids = {
            "generator": generator.pid,
            "backends": self.backends.pid,
            "harness": os.getpid(),
        }
        if lb is not None:
            pids["lb"] = lb.child.pid
        if profiler is not None:
            pids["profiler"] = profiler.child.pid
        return pids

    def startProfiler(
        self, lb: LoadBalancer | None, scenario: str, target: str
    ) -> Profiler | None:
        if lb is None or target != "wslb" or self.pySpy is None:
            return None
        return Profiler.start(
            f"{scenario}-{target}",
            lb.child.pid,
            self.pySpy,
            self.config.generatorCpus,
            self.logs,
        )

    def finishProfiler(self, profiler: Profiler | None) -> None:
        if profiler is not None:
            summary = profiler.finish()
            if summary:
                self.profiles[profiler.name] = summary

    def finish(self, generator: Child | None, lb: LoadBalancer | None) -> None:
        """
        After a scenario, whatever happened: quiet the backends, close the
        generator, stop the load balancer.
        """
        if self.backends is not None and self.backends.alive():
            with contextlib.suppress(BenchError):
                self.backendCommand(cmd="stop")
        if generator is not None:
            with contextlib.suppress(BenchError):
                generator.send(cmd="close")
            with contextlib.suppress(subprocess.TimeoutExpired):
                generator.process.wait(10)
            generator.stop(grace=2)
        if lb is not None:
            lb.child.stop()

    # Measuring --------------------------------------------------------------

    def measureWindow(
        self, lb: LoadBalancer | None, generator: Child, scenario: str, target: str
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """
        Mark, wait the run's duration, report.

        @return: the generator's counts, the backends' counts and the CPU
            figures, all for the same window.
        """
        profiler = self.startProfiler(lb, scenario, target)
        generator.send(cmd="mark")
        self.backendCommand(cmd="mark")
        before = Snapshot(self.pids(lb, generator, profiler))
        time.sleep(self.config.duration)
        generator.send(cmd="report")
        after = Snapshot(self.pids(lb, generator, profiler))
        report = generator.waitEvent("report", 15)
        stats = self.backendStats()
        self.finishProfiler(profiler)
        cpu = windowFigures(
            before, after, self.config.lbCpuSet, self.config.generatorCpuSet
        )
        cpu["profiled"] = profiler is not None
        return report, stats, cpu

    def common(
        self, report: dict[str, Any], cpu: dict[str, Any], lb: LoadBalancer | None
    ) -> dict[str, Any]:
        result = {
            "deliveredPerS": report["perS"],
            "messages": report["messages"],
            "windowS": report["elapsedS"],
            "dropped": report["dropped"],
            **cpuColumns(cpu),
        }
        if lb is not None:
            result["lbCpuPercent"] = cpu["lbCpuPercent"]
            result["lbPeakRssKB"] = memoryKB(lb.child.pid)["VmHWM"]
        return result

    def verdict(
        self,
        cpu: dict[str, Any],
        target: str,
        offered: float | None = None,
        delivered: float | None = None,
    ) -> str:
        """
        What limited the run: the generator's CPUs (generator-bound), the
        load balancer's (LB-bound), the offered rate not delivered, a busy
        machine; C{-} for none of these.
        """
        notes = []
        generator = saturation(
            "generator",
            cpu["generatorSidePercent"],
            cpu["generatorCoresBusyPercent"],
            cpu["generatorCoresInterruptPercent"],
            self.config.generatorCpus,
        )
        if generator:
            notes.append(generator)
        lbPercent = cpu.get("lbCpuPercent")
        if lbPercent is not None:
            lb = saturation(
                "LB",
                lbPercent / self.config.lbCores,
                cpu["lbCoresBusyPercent"],
                cpu["lbCoresInterruptPercent"],
                self.config.lbCpus,
            )
            if lb:
                notes.append(lb)
        if offered and delivered is not None and delivered < 0.95 * offered:
            notes.append(f"below the offered rate ({delivered:.0f} of {offered:.0f}/s)")
            if target == "direct" and not notes[0].startswith("generator-bound"):
                notes.insert(0, "generator-bound (direct run below the offered rate)")
        other = cpu["otherProcessesPercent"]
        if other >= 20:
            top = cpu["otherProcessesTop"].items()
            busiest = ", ".join(f"{name} {share:.0f}%" for name, share in list(top)[:3])
            named = f": {busiest}" if busiest else ", in short-lived processes"
            notes.append(f"noisy machine (others used {other:.0f}% of a core{named})")
        if cpu.get("profiled"):
            notes.append("profiled with py-spy")
        return "; ".join(notes) or "-"

    # Scenarios --------------------------------------------------------------

    def scenarioS1(self, target: str) -> dict[str, Any]:
        """
        Fan-out: 1000 clients connect; with them idle, the LB's memory per
        connection; then the backends push quotes to each at 20 msg/s.
        """
        options = self.config.options
        clients, rate = options.s1_clients, options.s1_rate
        lb = self.startTarget("S1", target)
        generator = None
        try:
            rssBefore = memoryKB(lb.child.pid)["VmRSS"] if lb else None
            generator = self.startGenerator(
                "push", self.urls(lb, "/push"), clients, 200
            )
            generator.send(cmd="connect")
            connected = generator.waitEvent("connected", 60 + clients / 50)
            time.sleep(1.0)
            rssIdle = memoryKB(lb.child.pid)["VmRSS"] if lb else None
            self.backendCommand(cmd="push", rate=rate, tickMs=options.tick_ms)
            time.sleep(self.config.warmup)
            report, stats, cpu = self.measureWindow(lb, generator, "S1", target)
            result = self.common(report, cpu, lb)
            offered = clients * rate
            result.update(
                connected=connected["open"],
                connectErrors=connected["errors"],
                offeredPerS=offered,
                backendSentPerS=stats["sent"] / cpu["wallS"],
                backendSkipped=stats["skipped"],
                latencyP50Ms=report["latency"]["p50Ms"],
                latencyP99Ms=report["latency"]["p99Ms"],
                latencyMaxMs=report["latency"]["maxMs"],
            )
            if lb is not None and rssBefore is not None and rssIdle is not None:
                result.update(
                    lbRssBeforeKB=rssBefore,
                    lbRssIdleKB=rssIdle,
                    kbPerConnection=(rssIdle - rssBefore) / max(1, connected["open"]),
                    lbCpuUsPerMessage=1e6 * cpu["lbCpuS"] / max(1, report["messages"]),
                )
            result["bound"] = self.verdict(cpu, target, offered, report["perS"])
            return result
        finally:
            self.finish(generator, lb)

    def scenarioS2(self, target: str) -> dict[str, Any]:
        """
        Flood: 100 clients; the backends send to each as fast as its
        connection drains.
        """
        clients = self.config.options.s2_clients
        lb = self.startTarget("S2", target)
        generator = None
        try:
            generator = self.startGenerator(
                "flood", self.urls(lb, "/push"), clients, 100
            )
            generator.send(cmd="connect")
            connected = generator.waitEvent("connected", 60)
            self.backendCommand(cmd="flood")
            time.sleep(self.config.warmup)
            report, stats, cpu = self.measureWindow(lb, generator, "S2", target)
            result = self.common(report, cpu, lb)
            result.update(
                connected=connected["open"],
                connectErrors=connected["errors"],
                backendSentPerS=stats["sent"] / cpu["wallS"],
                megabytesPerS=report["bytes"] / report["elapsedS"] / 1e6,
            )
            if lb is not None:
                messages = max(1, report["messages"])
                result["lbCpuUsPerMessage"] = 1e6 * cpu["lbCpuS"] / messages
            result["bound"] = self.verdict(cpu, target)
            return result
        finally:
            self.finish(generator, lb)

    def scenarioS3(self, target: str) -> dict[str, Any]:
        """
        Connection storm: 2000 connections opened as fast as the generator
        can, at most 200 handshakes in flight; each stays open, so the end
        also shows the LB's memory with 2000 connections.
        """
        options = self.config.options
        clients, concurrency = options.s3_connections, options.s3_concurrency
        lb = self.startTarget("S3", target)
        generator = None
        try:
            rssBefore = memoryKB(lb.child.pid)["VmRSS"] if lb else None
            urls = self.urls(lb, "/idle")
            generator = self.startGenerator("storm", urls, clients, concurrency)
            overflowsBefore = listenOverflows()
            profiler = self.startProfiler(lb, "S3", target)
            before = Snapshot(self.pids(lb, generator, profiler))
            generator.send(cmd="connect")
            connected = generator.waitEvent("connected", 60 + clients / 20)
            after = Snapshot(self.pids(lb, generator, profiler))
            self.finishProfiler(profiler)
            cpu = windowFigures(
                before, after, self.config.lbCpuSet, self.config.generatorCpuSet
            )
            cpu["profiled"] = profiler is not None
            opened = max(1, connected["open"])
            result: dict[str, Any] = {
                "open": connected["open"],
                "errors": connected["errors"],
                "errorSamples": connected["errorSamples"],
                "elapsedS": connected["elapsedS"],
                "handshakesPerS": connected["handshakesPerS"],
                "handshakeP50Ms": connected["handshake"]["p50Ms"],
                "handshakeP99Ms": connected["handshake"]["p99Ms"],
                "handshakeMaxMs": connected["handshake"]["maxMs"],
                "listenOverflows": listenOverflows() - overflowsBefore,
                **cpuColumns(cpu),
            }
            if lb is not None and rssBefore is not None:
                time.sleep(0.5)
                memory = memoryKB(lb.child.pid)
                result.update(
                    lbCpuPercent=cpu.get("lbCpuPercent"),
                    lbCpuUsPerHandshake=1e6 * cpu.get("lbCpuS", 0.0) / opened,
                    lbPeakRssKB=memory["VmHWM"],
                    kbPerConnection=(memory["VmRSS"] - rssBefore) / opened,
                )
            result["bound"] = self.verdict(cpu, target)
            return result
        finally:
            self.finish(generator, lb)

    def scenarioS4(self, target: str) -> dict[str, Any]:
        """
        Echo: 50 clients, each sends a message and waits for its echo before
        sending the next.
        """
        clients = self.config.options.s4_clients
        lb = self.startTarget("S4", target)
        generator = None
        try:
            generator = self.startGenerator("echo", self.urls(lb, "/echo"), clients, 50)
            generator.send(cmd="connect")
            connected = generator.waitEvent("connected", 60)
            generator.send(cmd="start")
            time.sleep(self.config.warmup)
            report, _, cpu = self.measureWindow(lb, generator, "S4", target)
            generator.send(cmd="stop")
            result = self.common(report, cpu, lb)
            result.update(
                connected=connected["open"],
                connectErrors=connected["errors"],
                roundTripsPerS=report["perS"],
                rttP50Ms=report["latency"]["p50Ms"],
                rttP99Ms=report["latency"]["p99Ms"],
                rttMaxMs=report["latency"]["maxMs"],
            )
            if lb is not None:
                roundTrips = max(1, report["messages"])
                result["lbCpuUsPerRoundTrip"] = 1e6 * cpu["lbCpuS"] / roundTrips
            result["bound"] = self.verdict(cpu, target)
            return result
        finally:
            self.finish(generator, lb)

    # The run ----------------------------------------------------------------

    def run(self) -> None:
        """
        Every scenario against every target (C{--repeat} rounds of them, the
        targets interleaved), each under a time limit; a failed measurement
        is recorded and the run goes on.
        """
        scenarios: dict[str, Callable[[str], dict[str, Any]]] = {
            "S1": self.scenarioS1,
            "S2": self.scenarioS2,
            "S3": self.scenarioS3,
            "S4": self.scenarioS4,
        }
        rounds = self.config.options.repeat
        for scenario in self.config.scenarios:
            runs: dict[str, list[dict[str, Any]]] = {t: [] for t in self.config.targets}
            for round in range(1, rounds + 1):
                for target in self.config.targets:
                    if target.startswith("haproxy") and self.config.haproxy is None:
                        runs[target].append({"skipped": HAPROXY_MISSING})
                        continue
                    label = f"{scenario} {target}"
                    if rounds > 1:
                        label += f" (round {round} of {rounds})"
                    log(f"{label} ...")
                    result = self.runOne(scenarios[scenario], target)
                    runs[target].append(result)
                    log(f"{label}: {summaryLine(scenario, result)}")
            self.results[scenario] = {
                target: combine(scenario, targetRuns)
                for target, targetRuns in runs.items()
            }

    def runOne(
        self, scenario: Callable[[str], dict[str, Any]], target: str
    ) -> dict[str, Any]:
        limit = int(self.config.duration * 2 + self.config.warmup + 150)
        signal.alarm(limit)
        try:
            # Fresh backends for every measurement, like the load balancer
            # and the generator: no state carries over from the one before.
            self.startBackends()
            return scenario(target)
        except ScenarioTimeoutError:
            return {"error": f"timed out after {limit} s"}
        except BenchError as e:
            return {"error": str(e)}
        finally:
            signal.alarm(0)
            self.stopBackends()


def saturation(
    side: str, used: float, busy: float, interrupts: float, cpus: str
) -> str | None:
    """
    Whether one side of the run (the generator, or the LB) was limited by
    its CPUs.  All figures are in % of those CPUs: C{used} by the side's
    processes, C{busy} with anything, C{interrupts} with the kernel's
    interrupt work (network delivery on loopback, charged to no process).
    """
    others = max(0.0, busy - used - interrupts)
    if used >= SATURATED_PERCENT:
        return f"{side}-bound (CPU {cpus} at {used:.0f}%)"
    if busy >= SATURATED_PERCENT and others < 15:
        return (
            f"{side}-bound (CPU {cpus} {busy:.0f}% busy: the {side} {used:.0f}%, "
            f"kernel interrupt work {interrupts:.0f}%)"
        )
    if busy >= SATURATED_PERCENT:
        return (
            f"{side}'s CPU taken by others (CPU {cpus} {busy:.0f}% busy: "
            f"the {side} {used:.0f}%, others {others:.0f}%)"
        )
    return None


#: The figure that ranks runs of a scenario (C{--repeat}).
PRIMARY = {
    "S1": "deliveredPerS",
    "S2": "deliveredPerS",
    "S3": "handshakesPerS",
    "S4": "roundTripsPerS",
}


def cpuColumns(cpu: dict[str, Any]) -> dict[str, Any]:
    return {
        "generatorSidePercent": cpu["generatorSidePercent"],
        "lbCoresBusyPercent": cpu["lbCoresBusyPercent"],
        "otherProcessesPercent": cpu["otherProcessesPercent"],
        "cpu": cpu,
    }


def combine(scenario: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """
    One result from several rounds: the median of each figure over the
    rounds that worked, the verdict of the median round (by the scenario's
    main figure), and every round kept under C{runs}.
    """
    worked = [run for run in runs if "error" not in run and "skipped" not in run]
    if len(runs) == 1 or not worked:
        return runs[0]
    combined: dict[str, Any] = {}
    for key, value in worked[0].items():
        values = [run.get(key) for run in worked]
        numbers = [v for v in values if isinstance(v, (int, float))]
        if isinstance(value, (int, float)) and len(numbers) == len(values):
            combined[key] = statistics.median(numbers)
    ranked = sorted(worked, key=lambda run: run.get(PRIMARY[scenario], 0))
    median = ranked[(len(ranked) - 1) // 2]
    combined["bound"] = (
        f"median of {len(worked)} rounds"
        + (f" ({len(runs) - len(worked)} failed)" if len(worked) < len(runs) else "")
        + f"; median round: {median.get('bound', '-')}"
    )
    combined["runs"] = runs
    return combined


def summaryLine(scenario: str, result: dict[str, Any]) -> str:
    if "error" in result or "skipped" in result:
        return str(result.get("error") or result.get("skipped"))
    return f"{result.get(PRIMARY[scenario], 0):,.0f}/s, {result.get('bound')}"
