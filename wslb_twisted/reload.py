"""
Reloading the configuration (SIGHUP): which backends join, leave or change,
and which settings can change while clients are connected.

Backends are matched by C{id}.  A backend whose id and address (host, port,
TLS) are unchanged is the same L{Backend} object afterwards, so it keeps its
clients, its health and its counters; its weight, C{maxConnections}, health
port and health path take the new values.  A new id joins unhealthy and takes
clients once it passes a health check.  A removed id leaves the pool at once:
it takes no new clients and monitoring no longer lists it, but its clients
stay connected (their sessions hold the L{Backend}) until they close.  An id
whose address changed is both: the old backend leaves, a new one joins.

L{planPoolUpdate} and L{reloadedSettings} are pure; L{applyPoolUpdate}
changes a pool; L{SIGHUPHandler} calls a function on the reactor thread for
each SIGHUP.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, replace
from types import FrameType
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from wslb_twisted.backends import Backend, BackendPool
from wslb_twisted.config import ConfigError, Settings

__all__ = [
    "ADDRESS_FIELDS",
    "LIVE_SETTINGS",
    "TUNABLE_FIELDS",
    "PoolUpdate",
    "SIGHUPHandler",
    "applyPoolUpdate",
    "backendConfig",
    "describeUpdate",
    "planPoolUpdate",
    "reloadPool",
    "reloadedSettings",
]

log = Logger()

ADDRESS_FIELDS = ("host", "port", "tls")
"""
The fields of a L{Backend} that say which server it is: an id whose address
changes names another server, which starts afresh.
"""

TUNABLE_FIELDS = ("weight", "maxConnections", "healthPort", "healthPath")
"""
The configured fields of a L{Backend} a reload changes in place.
"""

LIVE_SETTINGS = ("backends", "drainSeconds", "configFile")
"""
The L{Settings} a reload applies; every other setting that changes is
reported as needing a restart.
"""

_OPTION_NAMES = {"trustedProxies": "trusted-proxy", "allowedOrigins": "allowed-origin"}


def backendConfig(backend: Backend) -> dict[str, Any]:
    """
    The configured fields of a backend (not its state), as keyword arguments
    of L{Backend}.

    @param backend: a backend.
    @return: its C{id}, L{ADDRESS_FIELDS} and L{TUNABLE_FIELDS}.
    """
    names = ("id", *ADDRESS_FIELDS, *TUNABLE_FIELDS)
    return {name: getattr(backend, name) for name in names}


@dataclass(frozen=True)
class PoolUpdate:
    """
    How a pool changes to follow a new backend list.

    @ivar backends: the pool afterwards, in the new configuration order: the
        kept L{Backend} objects and the new ones.
    @ivar added: backends with an id not configured before.
    @ivar removed: backends whose id is no longer configured.
    @ivar replaced: C{(old, new)} pairs of backends keeping their id but not
        their address.
    @ivar changed: kept backends whose L{TUNABLE_FIELDS} change, each with
        C{{field: (old value, new value)}}.
    @ivar kept: backends kept, changed or not.
    @ivar reordered: whether the kept backends change their order.
    """

    backends: list[Backend]
    added: list[Backend] = field(default_factory=list)
    removed: list[Backend] = field(default_factory=list)
    replaced: list[tuple[Backend, Backend]] = field(default_factory=list)
    changed: list[tuple[Backend, dict[str, tuple[Any, Any]]]] = field(
        default_factory=list
    )
    kept: list[Backend] = field(default_factory=list)
    reordered: bool = False

    @property
    def joining(self) -> list[Backend]:
        """
        The new L{Backend} objects: added ones and the new side of replaced
        ones, which need a health check before they take clients.
        """
        return [*self.added, *(new for _, new in self.replaced)]

    @property
    def leaving(self) -> list[Backend]:
        """
        The L{Backend} objects leaving the pool: removed ones and the old side
        of replaced ones.
        """
        return [*self.removed, *(old for old, _ in self.replaced)]

    @property
    def anything(self) -> bool:
        """
        Whether the pool changes at all: members, order or tunable fields.
        """
        return bool(
            self.added
            or self.removed
            or self.replaced
            or self.changed
            or self.reordered
        )


def planPoolUpdate(current: Iterable[Backend], wanted: Iterable[Backend]) -> PoolUpdate:
    """
    Work out how the pool C{current} changes into the backend list
    C{wanted}, matching backends by id.  Nothing is changed.

    @param current: the pool's backends now.
    @param wanted: the newly configured backends (fresh L{Backend} objects,
        as L{wslb_twisted.config.loadSettings} makes them), ids unique.
    @return: the update; its C{backends} holds the objects of C{current} for
        kept ids and those of C{wanted} for new ones.
    """
    currentList = list(current)
    before = {backend.id: backend for backend in currentList}
    backends: list[Backend] = []
    added: list[Backend] = []
    replaced: list[tuple[Backend, Backend]] = []
    changed: list[tuple[Backend, dict[str, tuple[Any, Any]]]] = []
    kept: list[Backend] = []
    for backend in wanted:
        old = before.get(backend.id)
        if old is None:
            added.append(backend)
            backends.append(backend)
        elif any(getattr(old, f) != getattr(backend, f) for f in ADDRESS_FIELDS):
            replaced.append((old, backend))
            backends.append(backend)
        else:
            changes = {
                name: (getattr(old, name), getattr(backend, name))
                for name in TUNABLE_FIELDS
                if getattr(old, name) != getattr(backend, name)
            }
            if changes:
                changed.append((old, changes))
            kept.append(old)
            backends.append(old)
    keptIds = {backend.id for backend in backends}
    return PoolUpdate(
        backends=backends,
        added=added,
        removed=[b for b in currentList if b.id not in keptIds],
        replaced=replaced,
        changed=changed,
        kept=kept,
        reordered=kept != [b for b in currentList if b in kept],
    )


def applyPoolUpdate(pool: BackendPool, update: PoolUpdate) -> None:
    """
    Make C{pool} what C{update} says: change the tunable fields of the kept
    backends and replace the list.

    @param pool: the pool L{planPoolUpdate} was given.
    @param update: what L{planPoolUpdate} returned for it.
    """
    for backend, changes in update.changed:
        for name, (_, new) in changes.items():
            setattr(backend, name, new)
    pool.backends = list(update.backends)


def reloadedSettings(current: Settings, loaded: Settings) -> tuple[Settings, list[str]]:
    """
    The settings in force after a reload: C{current} with the
    L{LIVE_SETTINGS} of C{loaded}.

    @param current: the settings in force.
    @param loaded: the settings just read.
    @return: the new settings, and the options (C{--algorithm}) of the other
        settings that differ, which keep their current value until a
        restart.
    """
    restart = []
    for setting in fields(Settings):
        name = setting.name
        if name in LIVE_SETTINGS:
            continue
        if getattr(current, name) != getattr(loaded, name):
            option = _OPTION_NAMES.get(name) or re.sub(
                r"(?<=[a-z])(?=[A-Z])", "-", name
            )
            restart.append(f"--{option.lower()}")
    live = {name: getattr(loaded, name) for name in LIVE_SETTINGS}
    return replace(current, **live), restart


def describeUpdate(update: PoolUpdate, before: Settings, after: Settings) -> str:
    """
    Say in one line what a reload changed, for the log.

    @param update: the pool update.
    @param before: the settings in force before.
    @param after: the settings in force after.
    @return: e.g. C{"backend-4 (10.0.0.4:80) added; backend-2 (10.0.0.2:80)
        removed, its 3 client(s) stay until they close; 1 unchanged"}.
    """
    parts = [
        f"{b.id} ({b.address}) added, in rotation once a health check passes"
        for b in update.added
    ]
    parts.extend(
        f"{b.id} ({b.address}) removed, its {b.connections} client(s) stay "
        "until they close"
        for b in update.removed
    )
    parts.extend(
        f"{old.id} moved from {old.address} to {new.address}, its "
        f"{old.connections} client(s) stay on the old address until they close"
        for old, new in update.replaced
    )
    for backend, changes in update.changed:
        shown = ", ".join(
            f"{name} {old!r} -> {new!r}" for name, (old, new) in changes.items()
        )
        parts.append(f"{backend.id} {shown}")
    unchanged = len(update.kept) - len(update.changed)
    if unchanged:
        parts.append(f"{unchanged} backend(s) unchanged")
    if before.drainSeconds != after.drainSeconds:
        parts.append(f"drain-seconds {before.drainSeconds:g} -> {after.drainSeconds:g}")
    return "; ".join(parts)


def reloadPool(
    load: Callable[[], Settings], current: Settings, pool: BackendPool
) -> tuple[Settings, PoolUpdate] | None:
    """
    Read the configuration again and bring C{pool} up to date, logging what
    changed, or why nothing did.

    @param load: reads and validates the configuration, raising
        L{ConfigError} when it is bad.
    @param current: the settings in force.
    @param pool: the backends in use, changed in place.
    @return: the settings now in force (their C{backends} are the pool's)
        and the update made, or C{None} when the new configuration was
        rejected and nothing changed.
    """
    try:
        loaded = load()
    except ConfigError as error:
        log.error(
            "configuration reload rejected, keeping the current configuration: "
            "{reason}",
            reason=str(error),
            event="config_reload_rejected",
        )
        return None
    except Exception:
        log.failure(
            "configuration reload failed, keeping the current configuration",
            event="config_reload_rejected",
        )
        return None
    settings, restart = reloadedSettings(current, loaded)
    update = planPoolUpdate(pool, loaded.backends)
    applyPoolUpdate(pool, update)
    settings = replace(settings, backends=list(pool.backends))
    log.info(
        "configuration reloaded: {summary}",
        summary=describeUpdate(update, current, settings) or "nothing changed",
        event="config_reloaded",
        added=[b.id for b in update.joining],
        removed=[b.id for b in update.leaving],
    )
    if restart:
        log.warn(
            "configuration reload: {options} changed and take(s) effect only on "
            "restart",
            options=", ".join(restart),
            event="config_reload_restart_needed",
        )
    return settings, update


class SIGHUPHandler:
    """
    Calls a function on the reactor thread for every SIGHUP, from
    L{install} until L{uninstall}.

    twistd installs no SIGHUP handler, so without one a SIGHUP kills the
    process.  The handler itself runs between two bytecodes of whatever the
    reactor was doing, so it only hands the work to the reactor with
    C{callFromThread}.

    @ivar paused: whether SIGHUPs are ignored (logged) rather than acted on,
        as while the load balancer stops.
    """

    def __init__(self, reactor: Any, reload: Callable[[], object]) -> None:
        """
        @param reactor: the reactor whose thread calls C{reload}.
        @param reload: what to do for each SIGHUP.
        """
        self.reactor = reactor
        self.reload = reload
        self.paused = False
        self._previous: Any = None
        self._installed = False

    def install(self) -> None:
        """
        Handle SIGHUP from now on (call it once the reactor runs, as twistd
        installs its own signal handlers when the reactor starts).
        """
        if self._installed:
            return
        self._previous = signal.signal(signal.SIGHUP, self._received)
        self._installed = True
        self.paused = False

    def uninstall(self) -> None:
        """
        Put back the SIGHUP handler found by L{install}.
        """
        if not self._installed:
            return
        self._installed = False
        previous = self._previous
        signal.signal(signal.SIGHUP, signal.SIG_DFL if previous is None else previous)

    def stopping(self, stopped: Deferred[Any]) -> Deferred[Any]:
        """
        The load balancer is stopping: ignore SIGHUPs until C{stopped} fires,
        then put back the previous handler.

        @param stopped: fires once the load balancer has stopped.
        @return: C{stopped}.
        """
        self.paused = True

        def uninstall(result: object) -> object:
            self.uninstall()
            return result

        return stopped.addBoth(uninstall)

    def _received(self, number: int, frame: FrameType | None) -> None:
        self.reactor.callFromThread(self._handle)

    def _handle(self) -> None:
        if self.paused:
            log.info("SIGHUP ignored: the load balancer is stopping")
            return
        log.info("SIGHUP received: reloading the configuration")
        self.reload()
