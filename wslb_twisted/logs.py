"""
The log as JSON lines, for log shippers: C{--log-format json}.

twistd begins logging after the plugin's C{makeService} has run (events
logged before are held and replayed, so none is lost), with one observer:
the one made by the log-observer factory named by twistd's own C{--logger}
option if there is one, else its text observer on standard output or the
C{--logfile}.  C{--logger} is the hook twistd offers, so JSON goes through
it:

  - C{twistd --logger=wslb_twisted.logs.jsonObserver -n wslb} (or
    C{-ny wslb.tac}, or any other twistd command) logs JSON lines to
    standard output;
  - C{twistd -n wslb --log-format json} (or C{LOG_FORMAT=json}) names the
    same factory from the plugin's options (L{logJSONUnderTwistd}), after
    working out where twistd would have written its text: standard output
    under C{-n}, else C{--logfile} (C{twistd.log} by default), rotated on
    C{SIGUSR1} as twistd's own log file is.

Each line is one event as L{twisted.logger.eventAsJSON} encodes it (so
L{twisted.logger.eventsFromJSONLogFile} reads the file back), plus
C{log_text}: the event's message as text, with its traceback if it has one.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import MutableMapping
from typing import IO, Any, cast

from twisted.logger import FileLogObserver, LogEvent, eventAsJSON, eventAsText
from twisted.python.logfile import LogFile

from wslb_twisted.config import ConfigError

__all__ = ["jsonLine", "jsonLinesObserver", "jsonObserver", "logJSONUnderTwistd"]

#: The name twistd's C{--logger} option takes.
OBSERVER_FACTORY = "wslb_twisted.logs.jsonObserver"

_JSON_LOGS = "JSON logs (--log-format / LOG_FORMAT json)"

#: The log file L{jsonObserver} writes to, set by L{logJSONUnderTwistd};
#: C{None} for standard output.  twistd calls its factory without arguments,
#: so this is how the choice made while parsing options reaches it.
_logPath: str | None = None


def jsonLine(event: LogEvent) -> str:
    """
    Encode one event as a line of JSON.

    @param event: the event.
    @return: L{eventAsJSON} of the event with C{log_text} added (the
        formatted message and any traceback, unless the event already has
        C{log_text}, as events from the legacy C{twisted.python.log} do),
        and a newline.  The event itself is left as it was.
    """
    if "log_text" not in event:
        event = dict(event)
        event["log_text"] = eventAsText(
            event, includeTimestamp=False, includeSystem=False
        )
    return eventAsJSON(event) + "\n"


def jsonLinesObserver(outFile: IO[Any]) -> FileLogObserver:
    """
    Make a log observer writing one JSON object per line.

    Unlike L{twisted.logger.jsonFileLogObserver}, lines carry no leading
    record separator (C{\\x1e}), which line-oriented shippers would keep as
    part of the JSON text.

    @param outFile: where to write (standard output, a L{LogFile}).
    @return: the observer.
    """
    return FileLogObserver(outFile, jsonLine)


def jsonObserver() -> FileLogObserver:
    """
    The log-observer factory for twistd's C{--logger} option: JSON lines on
    standard output, or in the log file chosen by L{logJSONUnderTwistd}.

    @return: the observer twistd logs to.
    """
    if _logPath is None:
        return jsonLinesObserver(sys.stdout)
    return jsonLinesObserver(_openLogFile(_logPath))


def _openLogFile(path: str) -> IO[Any]:
    """
    Open a log file as twistd opens C{--logfile}: a L{LogFile}, rotated by
    size, and on C{SIGUSR1} unless something else handles that signal.
    """
    logFile = LogFile.fromFullPath(path)
    usr1 = getattr(signal, "SIGUSR1", None)
    if usr1 is not None and not signal.getsignal(usr1):

        def rotate(signum: int, frame: object) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(logFile.rotate)  # type: ignore[attr-defined]

        signal.signal(usr1, rotate)
    # A LogFile has the write and flush a FileLogObserver uses.
    return cast(IO[Any], logFile)


def logJSONUnderTwistd(serverOptions: MutableMapping[str, Any]) -> None:
    """
    Make twistd log JSON lines where it would have logged text.

    Called while twistd parses the plugin's options, before its own options
    are finished: it names L{jsonObserver} as twistd's C{--logger}, which
    twistd then imports and calls when logging begins.

    @param serverOptions: twistd's options (the plugin options' C{parent}).
    @raise ConfigError: when twistd was told to log some other way
        (C{--logger}, C{--syslog}), or to log to standard output as a
        daemon.
    """
    global _logPath
    if serverOptions.get("logger") is not None:
        raise ConfigError(
            f"{_JSON_LOGS} cannot be combined with twistd's --logger "
            f"(--logger={OBSERVER_FACTORY} alone also logs JSON)"
        )
    if serverOptions.get("syslog"):
        raise ConfigError(f"{_JSON_LOGS} cannot be combined with twistd's --syslog")
    logfile = serverOptions.get("logfile") or ""
    # twistd on Windows has no -n: it always runs in the foreground.
    foreground = serverOptions.get("nodaemon", True)
    if logfile == "-" and not foreground:
        raise ConfigError(
            f"{_JSON_LOGS} cannot go to standard output (--logfile=-) from a "
            "daemon: give twistd -n, or a log file"
        )
    if logfile == "-" or (not logfile and foreground):
        _logPath = None
    else:
        _logPath = logfile or "twistd.log"
    serverOptions["logger"] = OBSERVER_FACTORY
