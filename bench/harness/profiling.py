"""
C{--profile}: C{py-spy record} on wslb during a scenario's window, and the
functions where the samples fall.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

from harness.children import Child
from harness.environment import BENCH, log

#: The reactor's poll (C{doPoll} for epoll, C{doSelect} and so on).
_POLL = ("EPollReactor.doPoll", "PollReactor.doPoll", "SelectReactor.doSelect")
#: Where the module names in the summary stop being shortened to their file.
_PACKAGES = ("wslb_twisted", "twisted", "autobahn", "txaio")


class Profiler:
    """
    One C{py-spy record --nonblocking} on a process (it is never paused; the
    profiler runs on the generator's CPUs and perturbs that side, which the
    results mark), writing collapsed stacks until L{finish}.
    """

    def __init__(self, child: Child, output: Path, name: str) -> None:
        self.child = child
        self.output = output
        self.name = name

    @classmethod
    def start(
        cls, name: str, pid: int, pySpy: str, cpus: str, logs: Path
    ) -> Profiler | None:
        output = BENCH / "results" / f"profile-{name}.txt"
        with contextlib.suppress(OSError):
            output.unlink()
        argv = [
            pySpy, "record", "--nonblocking", "--rate", "250", "--format", "raw",
            "--pid", str(pid), "--output", str(output),
        ]  # fmt: skip
        return cls(Child(f"py-spy-{name}", argv, cpus, logs), output, name)

    def finish(self) -> dict[str, Any] | None:
        """
        Stop recording (py-spy writes its file on SIGINT) and summarise.
        """
        self.child.interrupt(30)
        self.child.stop(grace=2)
        if not self.output.exists():
            log(f"py-spy wrote no profile for {self.name}: {self.child.tail()}")
            return None
        return summarise(self.output)


def findPySpy(wslbPython: str | None) -> str | None:
    """
    py-spy beside wslb's Python, or on the C{PATH}.
    """
    beside = str(Path(wslbPython or "/").parent / "py-spy")
    for candidate in (beside, shutil.which("py-spy")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def summarise(path: Path, top: int = 15) -> dict[str, Any]:
    """
    The share of samples per function, as the leaf (self) and anywhere on
    the stack (inclusive), from py-spy's raw output (one C{frame;frame;...
    count} line per distinct stack).  The inclusive ranking counts only the
    frames under the reactor's poll.
    """
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = [_frameName(frame) for frame in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + samples
        # Inclusive time counts what runs under the reactor's poll, not the
        # main loop and twistd frames above it (on every stack).
        loop = [i for i, frame in enumerate(frames) if frame.startswith(_POLL)]
        for name in set(frames[loop[-1] + 1 :] if loop else frames):
            inclusive[name] = inclusive.get(name, 0) + samples

    def ranked(table: dict[str, int]) -> list[tuple[str, float]]:
        rows = list(table.items())
        rows.sort(key=lambda row: -row[1])
        return [(name, round(100 * n / max(1, total), 1)) for name, n in rows[:top]]

    return {
        "samples": total,
        "self": ranked(own),
        "inclusive": ranked(inclusive),
        "raw": str(path),
    }


def _frameName(frame: str) -> str:
    """
    C{function (module/path.py:123)} as C{function (package/module.py)}.
    """
    name, _, where = frame.partition(" (")
    filename = where.rstrip(")").rsplit(":", 1)[0]
    parts = filename.split("/")
    for index, part in enumerate(parts):
        if part in _PACKAGES:
            return f"{name} ({'/'.join(parts[index:])})"
    return f"{name} ({parts[-1]})" if filename else name
