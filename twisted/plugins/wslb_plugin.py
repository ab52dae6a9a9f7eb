"""
twistd service makers and the built-in balancing strategies of wslb.

Kept tiny and lazy: nothing here imports the load balancer until it is used.
"""

from twisted.application.service import ServiceMaker

from wslb_twisted.plugin import StrategyPlugin

wslb = ServiceMaker(
    "wslb", "wslb_twisted.tap", "A WebSocket load balancer.", "wslb"
)
wslbBackend = ServiceMaker(
    "wslb-backend",
    "wslb_twisted.demo.backend_tap",
    "A demo stock-quote WebSocket backend.",
    "wslb-backend",
)
wslbDemo = ServiceMaker(
    "wslb-demo",
    "wslb_twisted.demo.demo_tap",
    "Three demo quote backends and the load balancer in one process.",
    "wslb-demo",
)

roundRobin = StrategyPlugin(
    "round-robin",
    "wslb_twisted.strategies.RoundRobinStrategy",
    "healthy backends in list order, one connection each in turn",
)
leastConnections = StrategyPlugin(
    "least-connections",
    "wslb_twisted.strategies.LeastConnectionsStrategy",
    "the backend with the fewest active connections relative to its weight",
)
weighted = StrategyPlugin(
    "weighted",
    "wslb_twisted.strategies.WeightedStrategy",
    "smooth weighted round-robin",
)
ipHash = StrategyPlugin(
    "ip-hash",
    "wslb_twisted.strategies.IPHashStrategy",
    "a consistent hash of the client address",
)
