"""
Who the client is when proxies stand in front of wslb.

The client address is the TCP peer, unless the peer is a trusted proxy
(C{TRUSTED_PROXIES} / C{--trusted-proxy}); then it is read from
C{X-Forwarded-For}, right to left, as nginx's C{real_ip_recursive} does.  The
relay uses L{clientAddress} for C{X-Real-IP} and for the C{ip-hash} strategy,
and L{forwardedFor} for the C{X-Forwarded-For} it sends to the backend.

With no trusted proxies (the default) nothing is parsed: the peer is the
answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from typing import TypeAlias

__all__ = [
    "Network",
    "clientAddress",
    "forwardedFor",
    "parseTrustedProxies",
]

Network: TypeAlias = IPv4Network | IPv6Network
"""
A trusted proxy network, as L{parseTrustedProxies} returns them.
"""

_Address: TypeAlias = IPv4Address | IPv6Address


def parseTrustedProxies(values: Iterable[str]) -> list[Network]:
    """
    Parse the trusted proxies setting.

    Each value is an address (C{10.0.0.1}, C{2001:db8::1}) or a CIDR network
    (C{10.0.0.0/8}, C{2001:db8::/32}); host bits in a network are ignored
    (C{10.0.0.7/24} means C{10.0.0.0/24}), IPv4-mapped IPv6 forms mean the
    IPv4 ones, and blank values are skipped.

    @param values: the configured values.
    @return: the trusted networks, in the given order.
    @raise ValueError: naming the first value that is neither.
    """
    networks: list[Network] = []
    for value in values:
        text = value.strip()
        if not text:
            continue
        try:
            network = ip_network(text, strict=False)
        except ValueError:
            raise ValueError(
                f"{value!r} is not an IP address or CIDR network"
            ) from None
        if (
            isinstance(network, IPv6Network)
            and network.prefixlen >= 96
            and network.network_address.ipv4_mapped is not None
        ):
            network = IPv4Network(
                (network.network_address.ipv4_mapped, network.prefixlen - 96)
            )
        networks.append(network)
    return networks


def _parseAddress(text: str) -> _Address | None:
    """
    Read one address from a peer or an C{X-Forwarded-For} entry.

    Accepts a bare address, C{address:port} for IPv4 and C{[address]:port} or
    C{[address]} for IPv6, which some proxies write.  IPv4-mapped IPv6
    addresses (a dual-stack listener's IPv4 peers) become IPv4 addresses.

    @param text: the text.
    @return: the address, or C{None} when C{text} is not one.
    """
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end == -1:
            return None
        rest = text[end + 1 :]
        if rest and not (rest[0] == ":" and _isPort(rest[1:])):
            return None
        text = text[1:end]
    elif text.count(":") == 1:
        text, _, port = text.partition(":")
        if not _isPort(port):
            return None
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _isPort(text: str) -> bool:
    """
    @param text: the text after a C{:}.
    @return: whether C{text} is a decimal port number.
    """
    return text.isascii() and text.isdigit() and int(text) <= 65535


def _isTrusted(address: _Address, trusted: Sequence[Network]) -> bool:
    """
    @param address: an address.
    @param trusted: the trusted networks.
    @return: whether C{address} is in one of C{trusted}.
    """
    return any(address in network for network in trusted)


def clientAddress(
    peer: str, xForwardedFor: str | None, trusted: Sequence[Network]
) -> str:
    """
    The address of the client, for C{X-Real-IP} and C{ip-hash}.

    That is C{peer} unless C{peer} is a trusted proxy.  Then it is the first
    address in C{xForwardedFor}, reading from the right, that is not a trusted
    proxy, or the leftmost address if all are trusted.  Empty entries are
    skipped.  An entry that is not an address ends the walk: the answer is
    the last address read before it (C{peer} if it is the rightmost entry).
    Only trusted proxies can have written the entries to the right of such an
    entry, so that answer is never chosen by the client, whereas anything to
    its left could be.  (This is what nginx's realip module does.)

    Addresses read from C{X-Forwarded-For} are returned in canonical form
    (C{2001:db8::1}, no port), so the same client always hashes the same.

    @param peer: the TCP peer's address (as L{twisted.internet.address.IPv4Address}
        or C{IPv6Address} C{host} gives it).
    @param xForwardedFor: the request's C{X-Forwarded-For} value (repeated
        headers joined with commas), or C{None}.
    @param trusted: the trusted proxy networks, from L{parseTrustedProxies}.
    @return: the client's address.
    """
    if not trusted or not xForwardedFor:
        return peer
    peerAddress = _parseAddress(peer)
    if peerAddress is None or not _isTrusted(peerAddress, trusted):
        return peer
    nearest = peer
    for entry in reversed(xForwardedFor.split(",")):
        if not entry.strip():
            continue
        address = _parseAddress(entry)
        if address is None:
            return nearest
        nearest = str(address)
        if not _isTrusted(address, trusted):
            return nearest
    return nearest


def forwardedFor(
    peer: str, xForwardedFor: str | None, trusted: Sequence[Network]
) -> str:
    """
    The C{X-Forwarded-For} value to send to the backend.

    When C{peer} is a trusted proxy, its list with C{peer} appended; otherwise
    C{peer} alone, so that a client cannot put addresses of its choosing in
    front of its own.

    @param peer: the TCP peer's address.
    @param xForwardedFor: the request's C{X-Forwarded-For} value, or C{None}.
    @param trusted: the trusted proxy networks, from L{parseTrustedProxies}.
    @return: the header value.
    """
    if not trusted or not xForwardedFor:
        return peer
    incoming = xForwardedFor.strip(" \t,")
    if not incoming:
        return peer
    peerAddress = _parseAddress(peer)
    if peerAddress is None or not _isTrusted(peerAddress, trusted):
        return peer
    return f"{incoming}, {peer}"
