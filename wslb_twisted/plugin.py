"""
Publishing a balancing strategy as a Twisted plugin.

A third-party strategy needs only a class implementing
L{wslb_twisted.interfaces.IStrategy} and, in a module inside a
C{twisted/plugins/} directory on C{sys.path}::

    from wslb_twisted.plugin import StrategyPlugin
    from mypackage.strategies import Fewest

    fewest = StrategyPlugin("fewest", Fewest, "the backend with fewest clients")

after which C{twistd -n wslb --algorithm fewest} uses it.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.plugin import IPlugin, getPlugins
from twisted.python.reflect import namedAny
from zope.interface import implementer

from wslb_twisted.interfaces import IStrategy, IStrategyFactory


@implementer(IPlugin, IStrategyFactory)
class StrategyPlugin:
    """
    A strategy made discoverable through Twisted's plugin system.

    @ivar name: the name selected with C{--algorithm}.
    @ivar description: one line shown to operators.
    """

    def __init__(
        self,
        name: str,
        factory: Callable[[], IStrategy] | str,
        description: str = "",
    ) -> None:
        """
        @param name: the name operators select the strategy by.
        @param factory: a callable making a fresh L{IStrategy} provider, or
            its fully qualified name (imported on first use, which keeps
            plugin files cheap to load).
        @param description: one line describing the strategy.
        """
        self.name = name
        self.description = description
        self._factory = factory

    def __call__(self) -> IStrategy:
        """
        Make a new strategy with fresh state.
        """
        factory = self._factory
        if isinstance(factory, str):
            factory = self._factory = namedAny(factory)
        return factory()

    def __repr__(self) -> str:
        return f"<StrategyPlugin {self.name!r}>"


def availableStrategies() -> dict[str, IStrategyFactory]:
    """
    Find every installed strategy plugin.

    Built-in strategies are found the same way as third-party ones, through
    L{twisted.plugin.getPlugins}; where two plugins share a name, the first
    found wins.

    @return: the strategy factories by name.
    """
    import twisted.plugins

    found: dict[str, IStrategyFactory] = {}
    for factory in getPlugins(IStrategyFactory, twisted.plugins):
        found.setdefault(factory.name, factory)
    return found
