"""
Readings from C{/proc}: CPU time and memory of one process, per-CPU and
machine-wide counters, and what every other process used over a window.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _statFields(pid: int | str) -> tuple[str, list[str]]:
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    command = data[data.index("(") + 1 : data.rindex(")")]
    return command, data[data.rindex(")") + 2 :].split()


def cpuSeconds(pid: int) -> float:
    """
    User plus system CPU time of a process, all its threads, in seconds
    (C{utime + stime} from C{/proc/<pid>/stat}).
    """
    fields = _statFields(pid)[1]
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memoryKB(pid: int) -> dict[str, int]:
    """
    C{VmRSS} (resident now) and C{VmHWM} (peak resident) of a process, in KiB.
    """
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                values[key] = int(value.split()[0])
    return values


def coreTimes() -> dict[str, list[int]]:
    """
    Jiffies from C{/proc/stat}, machine-wide (C{cpu}) and per CPU: user,
    nice, system, idle, iowait, irq, softirq, steal.
    """
    cores = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu"):
                name, *values = line.split()
                cores[name] = [int(v) for v in values[:8]]
    return cores


def listenOverflows() -> int:
    """
    The kernel's count of connections dropped because a listen queue was
    full (C{TcpExt ListenOverflows}), machine-wide.
    """
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for header, values in zip(lines[::2], lines[1::2]):
        if header.startswith("TcpExt:"):
            table = dict(zip(header.split()[1:], values.split()[1:]))
            return int(table.get("ListenOverflows", 0))
    return 0


def otherProcesses(exclude: set[int]) -> dict[tuple[int, str], float]:
    """
    CPU seconds of every process not in C{exclude}, by (pid, command), to
    name what else ran on the machine during a window.
    """
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            command, fields = _statFields(entry.name)
            used = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
            table[(int(entry.name), command)] = used
    return table


class Snapshot:
    """
    The CPU counters of the measured processes and of the machine at one
    moment; two of them make a window (L{windowFigures}).
    """

    def __init__(self, pids: dict[str, int]) -> None:
        self.time = time.monotonic()
        self.cpu = {}
        for name, pid in pids.items():
            with contextlib.suppress(OSError):
                self.cpu[name] = cpuSeconds(pid)
        self.cores = coreTimes()
        self.others = otherProcesses(set(pids.values()))


def windowFigures(
    before: Snapshot, after: Snapshot, lbCpus: set[int], generatorCpus: set[int]
) -> dict[str, Any]:
    """
    CPU over a window:
      - each measured process, in seconds and in % of one core;
      - the generator side (backends, generator and harness, which share the
        generator's CPUs), in % of those CPUs;
      - how busy the LB's and the generator's CPUs were with anything, and
        with interrupts (mostly the kernel's network work, which no process
        is charged for), to see when other processes took them from ours;
      - the machine's other processes: all user and system time that is not
        ours (so it counts processes too short-lived to be named too), and
        the busiest of them by name;
      - softirq and the hypervisor's steal, machine-wide.
    """
    wall = after.time - before.time
    generatorCores = len(generatorCpus)
    figures: dict[str, Any] = {"wallS": wall}
    ours = 0.0
    for name, value in after.cpu.items():
        if name in before.cpu:
            used = value - before.cpu[name]
            figures[f"{name}CpuS"] = used
            figures[f"{name}CpuPercent"] = 100 * used / wall
            ours += used
    generatorSide = sum(
        figures.get(f"{name}CpuS", 0.0)
        for name in ("generator", "backends", "harness", "profiler")
    )
    figures["generatorSidePercent"] = 100 * generatorSide / (wall * generatorCores)
    total = [a - b for a, b in zip(after.cores["cpu"], before.cores["cpu"])]
    busy = (total[0] + total[1] + total[2]) / CLOCK_TICKS
    figures["otherProcessesPercent"] = max(0.0, 100 * (busy - ours) / wall)
    for side, cpus in (("lb", lbCpus), ("generator", generatorCpus)):
        busyTicks = interruptTicks = 0
        for cpu in cpus:
            now, then = after.cores[f"cpu{cpu}"], before.cores[f"cpu{cpu}"]
            deltas = [a - b for a, b in zip(now, then)]
            busyTicks += sum(deltas) - deltas[3] - deltas[4]
            interruptTicks += deltas[5] + deltas[6]
        share = 100 / CLOCK_TICKS / wall / max(1, len(cpus))
        figures[f"{side}CoresBusyPercent"] = busyTicks * share
        figures[f"{side}CoresInterruptPercent"] = interruptTicks * share
    figures["softirqPercent"] = 100 * total[6] / CLOCK_TICKS / wall
    figures["stealPercent"] = 100 * total[7] / CLOCK_TICKS / wall
    others: dict[str, float] = {}
    for key, value in after.others.items():
        used = value - before.others.get(key, 0.0)
        if used > 0:
            others[key[1]] = others.get(key[1], 0.0) + used
    busiest = sorted(others.items(), key=lambda item: -item[1])[:5]
    figures["otherProcessesTop"] = {
        name: round(100 * used / wall, 1)
        for name, used in busiest
        if used / wall >= 0.01
    }
    return figures
