"""
The C{twistd wslb-demo} command.
"""

from __future__ import annotations

from twisted.application.service import IService
from twisted.python import usage


class Options(usage.Options):
    """
    Options of C{twistd wslb-demo}.
    """

    synopsis = "[options]"
    longdesc = (
        "Run three demo stock-quote backends (3001-3003, health 4001-4003) and "
        "the load balancer (3000, monitoring and dashboard on 3004) in one "
        "process."
    )
    optParameters = [
        ["base-port", None, "3000", "The load balancer's port; the others follow it."],
        ["interface", None, "127.0.0.1", "The address to listen on."],
        ["algorithm", None, "round-robin", "The balancing algorithm."],
        ["rate", None, "2", "Quotes per second per symbol from each backend."],
        ["health-interval", None, "2000", "Milliseconds between health checks."],
    ]

    def postOptions(self) -> None:
        """
        Check the values.
        """
        from wslb_twisted.plugin import availableStrategies

        try:
            base = int(self["base-port"])
        except ValueError:
            base = -1
        if not (0 <= base <= 65535 - 1004):
            raise usage.UsageError(
                f"--base-port={self['base-port']!r} is not a port number in 0-64531"
            )
        self["base-port"] = base
        known = availableStrategies()
        if self["algorithm"] not in known:
            raise usage.UsageError(
                f"--algorithm={self['algorithm']!r} is not a known algorithm "
                f"(have: {', '.join(sorted(known))})"
            )
        for name, low in (("rate", 0.0), ("health-interval", 0.0)):
            try:
                value = float(self[name])
            except ValueError:
                value = low
            if not value > low:
                raise usage.UsageError(
                    f"--{name}={self[name]!r} is not a positive number"
                )
            self[name] = value


def makeService(options: Options) -> IService:
    """
    Make the demo's service from parsed options.
    """
    from wslb_twisted.demo.demo import DemoService

    return DemoService(
        basePort=options["base-port"],
        interface=options["interface"],
        algorithm=options["algorithm"],
        rate=options["rate"],
        healthInterval=options["health-interval"] / 1000.0,
    )
