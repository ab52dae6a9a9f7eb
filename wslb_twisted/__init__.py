"""
wslb: a WebSocket load balancer built on Twisted and Autobahn.
"""

__version__ = "0.1.0"
