"""
Shared fixtures: real backends and load balancers on 127.0.0.1.

The reactor is never imported at module level (pytest-twisted installs it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest_twisted
from helpers import RunningBackend, RunningLoadBalancer, startBackend, startLoadBalancer
from twisted.internet.defer import Deferred


@pytest_twisted.async_yield_fixture
async def backends() -> AsyncIterator[list[RunningBackend]]:
    """
    Three healthy test backends, stopped afterwards.
    """
    running = [startBackend(f"backend-{n}") for n in (1, 2, 3)]
    yield running
    for backend in running:
        await backend.stop()


@pytest_twisted.async_yield_fixture
async def startLB() -> AsyncIterator[Callable[..., Deferred[RunningLoadBalancer]]]:
    """
    A function starting load balancers, all stopped afterwards.
    """
    started: list[RunningLoadBalancer] = []

    async def start(backends: list[Any], **overrides: Any) -> RunningLoadBalancer:
        lb = await startLoadBalancer(backends, **overrides)
        started.append(lb)
        return lb

    yield start
    for lb in started:
        if lb.service.running:
            await lb.service.stopService()
