"""
The processes the harness starts: pinned to CPUs, talked to in JSON lines
(the Node backends and generator), and always stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shlex
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Any


class BenchError(Exception):
    """
    A measurement could not be made; the message says why.
    """


def _dieWithParent() -> None:
    """
    In the child, before exec: ask for SIGKILL when the harness dies, even by
    SIGKILL, so nothing it started outlives it.
    """
    with contextlib.suppress(Exception):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Child:
    """
    A process the harness started, pinned with C{taskset}, in its own process
    group (so a Ctrl-C reaches only the harness, which then stops everything
    in order).  Children that speak JSON lines take commands on stdin and
    report on stdout; everything else goes to a log file.

    @cvar running: every child not yet stopped, for L{stopAll}.
    """

    running: list[Child] = []

    def __init__(
        self,
        name: str,
        argv: list[str],
        cpus: str,
        logDirectory: Path,
        *,
        speaksJSON: bool = False,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.logPath = logDirectory / f"{name}.log"
        self.logFile: IO[bytes] = open(self.logPath, "ab")
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        command = ["taskset", "-c", cpus, *argv]
        self.logFile.write(("$ " + shlex.join(command) + "\n").encode())
        self.logFile.flush()
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE if speaksJSON else subprocess.DEVNULL,
            stdout=subprocess.PIPE if speaksJSON else self.logFile,
            stderr=self.logFile,
            env=env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_dieWithParent,
        )
        self.pid = self.process.pid
        Child.running.append(self)
        if speaksJSON:
            threading.Thread(target=self._readEvents, daemon=True).start()

    def _readEvents(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode(errors="replace").strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "text", "line": line}
            self.events.put(event)
        self.events.put({"event": "exit"})

    def send(self, **message: Any) -> None:
        """
        Send one command line, such as C{send(cmd="mark")}.
        """
        assert self.process.stdin is not None
        try:
            self.process.stdin.write((json.dumps(message) + "\n").encode())
            self.process.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise BenchError(f"{self.name} is gone ({self.tail()})") from None

    def waitEvent(self, name: str, timeout: float) -> dict[str, Any]:
        """
        The next event called C{name}, skipping others; L{BenchError} when
        the child exits, reports an error or stays silent for C{timeout}
        seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"{self.name}: no {name!r} within {timeout:.0f} s")
            try:
                event = self.events.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if event.get("event") == name:
                return event
            if event.get("event") == "exit":
                raise BenchError(f"{self.name} exited: {self.tail()}")
            if event.get("event") == "error":
                raise BenchError(f"{self.name}: {event.get('message')}")

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self, lines: int = 5) -> str:
        """
        The last lines of the child's log, for error messages.
        """
        with contextlib.suppress(ValueError):
            self.logFile.flush()
        try:
            text = self.logPath.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) or f"(empty log {self.logPath})"

    def interrupt(self, timeout: float) -> None:
        """
        SIGINT the child alone (how py-spy is asked to write its profile) and
        wait up to C{timeout} seconds for it to exit.
        """
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout)

    def stop(self, grace: float = 6.0) -> None:
        """
        SIGTERM the child's process group, SIGKILL it after C{grace} seconds.
        """
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                with contextlib.suppress(Exception):
                    stream.close()
        self.logFile.close()
        if self in Child.running:
            Child.running.remove(self)

    @classmethod
    def stopAll(cls) -> None:
        """
        Stop every child still running, the most recently started first.
        """
        for child in list(reversed(cls.running)):
            with contextlib.suppress(Exception):
                child.stop(grace=2.0)
