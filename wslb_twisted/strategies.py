"""
The built-in balancing strategies: round-robin, least-connections, weighted
and ip-hash.

Each is an L{IStrategy} provider with state of its own; the relay makes one
per load balancer (through the plugins in C{twisted/plugins/wslb_plugin.py})
and calls C{pick} once per connection attempt with the eligible backends:
those that are healthy and not yet tried for the client, in configuration
order.  That subset changes between calls, so every strategy here is written
to stay fair and predictable when backends leave and return.

Strategies only read backends; they never connect, count or check health.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Sequence

from zope.interface import implementer

from wslb_twisted.backends import Backend
from wslb_twisted.interfaces import IStrategy

__all__ = [
    "IPHashStrategy",
    "LeastConnectionsStrategy",
    "RoundRobinStrategy",
    "WeightedStrategy",
]


class _Rotation:
    """
    Turn-taking in configuration order, when only subsets of that order are
    ever seen.

    The strategy that owns a rotation is shown the eligible backends, never the
    whole pool, so the rotation learns the configuration order from the lists
    it is given (each is in configuration order) and remembers the backend it
    chose last.  The next choice is the first candidate after the last choice
    in that order, wrapping to the first candidate; so a backend leaving the
    rotation, or the last chosen one leaving it, does not restart or skip the
    turn of the others.

    Backends are remembered for the life of the rotation (a pool is fixed at
    startup, so this is bounded by the configured backends).
    """

    def __init__(self) -> None:
        self._order: list[Backend] = []
        self._rank: dict[Backend, int] = {}
        self._last: Backend | None = None

    def learn(self, backends: Sequence[Backend]) -> None:
        """
        Take in the configuration order that C{backends} shows.

        When every backend is known and in the known order (the usual case)
        this only checks that, in one pass.

        @param backends: backends in configuration order.
        """
        rank = self._rank
        previous = -1
        for backend in backends:
            position = rank.get(backend)
            if position is None or position <= previous:
                self._merge(backends)
                return
            previous = position

    def _merge(self, backends: Sequence[Backend]) -> None:
        """
        Merge C{backends} into the known order.

        Known backends keep their places; a backend seen for the first time
        goes as late as the lists seen so far allow, just before the next
        backend it is known to precede.  Where C{backends} contradicts the
        known order (the pool was reordered), C{backends} wins.

        @param backends: backends in configuration order.
        """
        given = set(backends)
        merged: list[Backend] = []
        unknown: list[Backend] = []
        consumed = 0
        for backend in backends:
            position = self._rank.get(backend)
            if position is None:
                unknown.append(backend)
                continue
            if position >= consumed:
                merged.extend(
                    b for b in self._order[consumed:position] if b not in given
                )
                consumed = position + 1
            merged.extend(unknown)
            unknown.clear()
            merged.append(backend)
        merged.extend(b for b in self._order[consumed:] if b not in given)
        merged.extend(unknown)
        self._order = merged
        self._rank = {backend: position for position, backend in enumerate(merged)}

    def choose(self, candidates: Sequence[Backend]) -> Backend:
        """
        Take the next turn among C{candidates}.

        @param candidates: a non-empty subsequence of the backends last given
            to L{learn}.
        @return: the first candidate after the last choice in configuration
            order, or the first candidate if none comes after it.
        """
        chosen = candidates[0]
        if self._last is not None:
            rank = self._rank
            lastPosition = rank[self._last]
            for candidate in candidates:
                if rank[candidate] > lastPosition:
                    chosen = candidate
                    break
        self._last = chosen
        return chosen


@implementer(IStrategy)
class RoundRobinStrategy:
    """
    Healthy backends in configuration order, one connection each in turn.

    With eligible backends C{[a, b, c]} the picks are C{a, b, c, a, b, c}.  The
    turn survives changes to the eligible set: if C{b} leaves after C{a} was
    picked, C{c} is next; if C{a} itself leaves, C{b} is next; a backend that
    returns takes its turn at its place in the order.
    """

    name = "round-robin"

    def __init__(self) -> None:
        self._rotation = _Rotation()

    def pick(self, backends: Sequence[Backend], clientAddress: str) -> Backend:
        """
        Choose the backend whose turn it is.

        @param backends: the eligible backends, never empty, in configuration
            order.
        @param clientAddress: the client's address (unused).
        @return: the first of C{backends} after the previous pick in
            configuration order, wrapping around.
        """
        self._rotation.learn(backends)
        return self._rotation.choose(backends)


@implementer(IStrategy)
class LeastConnectionsStrategy:
    """
    The backend with the fewest active connections relative to its weight.

    Backends are compared by C{connections / weight}, exactly (by
    cross-multiplying, never in floating point), counting the connections of
    every worker process; backends that tie share the connections in turn,
    as L{RoundRobinStrategy} does.
    """

    name = "least-connections"

    def __init__(self) -> None:
        self._rotation = _Rotation()

    def pick(self, backends: Sequence[Backend], clientAddress: str) -> Backend:
        """
        Choose the least loaded backend.

        @param backends: the eligible backends, never empty, in configuration
            order; each with a C{weight} of at least 1.
        @param clientAddress: the client's address (unused).
        @return: the backend with the lowest C{connections / weight};
            among equals, the next in turn.
        """
        self._rotation.learn(backends)
        best = backends[0]
        tied = [best]
        for backend in backends[1:]:
            mine = backend.connections * best.weight
            theirs = best.connections * backend.weight
            if mine < theirs:
                best = backend
                tied = [backend]
            elif mine == theirs:
                tied.append(backend)
        return self._rotation.choose(tied)


@implementer(IStrategy)
class WeightedStrategy:
    """
    Smooth weighted round-robin, as nginx balances upstreams.

    Each pick, every eligible backend's current weight grows by its weight;
    the backend with the largest current weight (the first in configuration
    order among equals) is picked, and its current weight drops by the total
    weight of the eligible backends.  While the eligible set is unchanged,
    any C{sum(weights)} consecutive picks give each backend exactly its weight,
    spread out: weights 3, 1, 1 give C{a, b, a, c, a}.

    A backend that leaves the eligible set keeps its current weight until it
    returns, as in nginx.
    """

    name = "weighted"

    def __init__(self) -> None:
        self._current: dict[Backend, int] = {}

    def pick(self, backends: Sequence[Backend], clientAddress: str) -> Backend:
        """
        Choose the backend furthest behind its share.

        @param backends: the eligible backends, never empty, in configuration
            order.
        @param clientAddress: the client's address (unused).
        @return: the backend with the largest current weight.
        """
        current = self._current
        total = 0
        best = backends[0]
        bestWeight: int | None = None
        for backend in backends:
            weight = current.get(backend, 0) + backend.weight
            current[backend] = weight
            total += backend.weight
            if bestWeight is None or weight > bestWeight:
                best, bestWeight = backend, weight
        current[best] -= total
        return best


_POINTS_PER_WEIGHT = 160
_RINGS_KEPT = 8


def _hash64(data: bytes) -> int:
    """
    A stable 64-bit hash (the same in every process and Python version).

    @param data: what to hash.
    @return: an integer in M{[0, 2 ** 64)}.
    """
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class _Ring:
    """
    A consistent-hash ring: sorted point hashes and the backend owning each.

    @ivar hashes: the points, ascending.
    @ivar owners: C{owners[i]} owns C{hashes[i]}.
    """

    __slots__ = ("hashes", "owners")

    def __init__(self, hashes: list[int], owners: list[Backend]) -> None:
        self.hashes = hashes
        self.owners = owners

    def lookup(self, key: int) -> Backend:
        """
        The owner of the first point at or after C{key}, wrapping around.

        @param key: a 64-bit hash.
        @return: the owning backend.
        """
        index = bisect_left(self.hashes, key)
        if index == len(self.hashes):
            index = 0
        return self.owners[index]


@implementer(IStrategy)
class IPHashStrategy:
    """
    Consistent hashing of the client address.

    Every backend owns C{160 * weight} points on a ring of 64-bit hashes,
    derived from its C{id} and C{host:port} only, so a backend's points are the
    same whichever other backends are eligible.  A client address goes to the
    owner of the first point at or after the address's hash.  Hence one
    address always lands on the same backend while the eligible set is
    unchanged; when a backend leaves, only the addresses it held move (each to
    the owner of the next point); when it returns, they move back.

    Rings are built once per distinct eligible set and kept (the last few
    sets), so a pick is a hash and a binary search.  Backend ids, addresses
    and weights are assumed not to change while the strategy is in use.
    """

    name = "ip-hash"

    def __init__(self) -> None:
        self._points: dict[Backend, list[int]] = {}
        self._rings: OrderedDict[tuple[Backend, ...], _Ring] = OrderedDict()

    def pick(self, backends: Sequence[Backend], clientAddress: str) -> Backend:
        """
        Choose the backend owning the client's address.

        @param backends: the eligible backends, never empty, in configuration
            order.
        @param clientAddress: the client's address; the same string always
            maps to the same backend for the same C{backends}.
        @return: the backend owning the first ring point at or after the
            address's hash.
        """
        if len(backends) == 1:
            return backends[0]
        key = tuple(backends)
        ring = self._rings.get(key)
        if ring is None:
            ring = self._rings[key] = self._build(key)
            if len(self._rings) > _RINGS_KEPT:
                self._rings.popitem(last=False)
        else:
            self._rings.move_to_end(key)
        return ring.lookup(_hash64(clientAddress.encode("utf-8", "surrogateescape")))

    def _pointsOf(self, backend: Backend) -> list[int]:
        """
        The ring points of one backend, computed once.

        @param backend: a backend.
        @return: its C{160 * weight} point hashes.
        """
        points = self._points.get(backend)
        if points is None:
            label = f"{backend.id} {backend.host}:{backend.port} "
            points = self._points[backend] = [
                _hash64(f"{label}{index}".encode())
                for index in range(_POINTS_PER_WEIGHT * backend.weight)
            ]
        return points

    def _build(self, backends: tuple[Backend, ...]) -> _Ring:
        """
        Build the ring for one eligible set.

        @param backends: the eligible backends.
        @return: the ring of all their points.
        """
        points = sorted(
            (point, position)
            for position, backend in enumerate(backends)
            for point in self._pointsOf(backend)
        )
        return _Ring(
            [point for point, _ in points],
            [backends[position] for _, position in points],
        )
