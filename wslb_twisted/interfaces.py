"""
The seams of wslb: the interfaces that other code (and third parties) implement.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IStrategy(Interface):
    """
    A balancing strategy: picks the backend for a new client connection.

    A strategy only chooses; it never connects, counts or checks health.  The
    relay calls L{pick} once per connection attempt, with the backends that are
    eligible for that attempt (healthy and not yet tried for this client), in
    the order of the configured backend list.
    """

    name = Attribute("The name operators select this strategy by, e.g. C{'ip-hash'}.")

    def pick(backends, clientAddress):  # type: ignore[no-untyped-def]  # noqa: N805
        """
        Choose one backend for a new connection.

        @param backends: the eligible backends, never empty, in configuration
            order.
        @type backends: L{Sequence} of L{wslb_twisted.backends.Backend}
        @param clientAddress: the client's address (the TCP peer, or the
            address a trusted proxy forwarded for), as a string.
        @type clientAddress: L{str}
        @return: one element of C{backends}.
        @rtype: L{wslb_twisted.backends.Backend}
        """


class IStrategyFactory(Interface):
    """
    A named maker of L{IStrategy} providers.

    Objects providing both this and L{twisted.plugin.IPlugin} at module level in
    any C{twisted/plugins/} directory on C{sys.path} are selectable by name with
    C{--algorithm}.  See L{wslb_twisted.plugin.StrategyPlugin}.
    """

    name = Attribute("The name operators select the strategy by.")
    description = Attribute("One line describing how the strategy balances.")

    def __call__():  # type: ignore[no-untyped-def]
        """
        Make a new strategy with fresh state.

        @rtype: L{IStrategy} provider
        """
