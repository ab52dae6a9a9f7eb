"""
Tests for L{wslb_twisted.forwarding}: the client address behind trusted
proxies and the C{X-Forwarded-For} sent to backends.
"""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network

import pytest

from wslb_twisted import forwarding
from wslb_twisted.forwarding import (
    clientAddress,
    forwardedFor,
    parseTrustedProxies,
)

PROXIES = parseTrustedProxies(["10.0.0.0/8", "192.0.2.1", "2001:db8:ffff::/48"])
CLIENT = "203.0.113.7"
ATTACKER = "198.51.100.66"
FORGED = "6.6.6.6"


# parseTrustedProxies


def test_parseAddressesAndNetworks() -> None:
    """
    Trusted proxies are single addresses or CIDR networks, IPv4 or IPv6; an
    address is a network of one.
    """
    assert parseTrustedProxies(
        ["192.0.2.1", "10.0.0.0/8", "2001:db8::1", "2001:db8:ffff::/48"]
    ) == [
        IPv4Network("192.0.2.1/32"),
        IPv4Network("10.0.0.0/8"),
        IPv6Network("2001:db8::1/128"),
        IPv6Network("2001:db8:ffff::/48"),
    ]


def test_parseIgnoresHostBits() -> None:
    """
    A network written with host bits set means the network containing it.
    """
    assert parseTrustedProxies(["10.1.2.3/16"]) == [IPv4Network("10.1.0.0/16")]


def test_parseIPv4MappedAsIPv4() -> None:
    """
    An IPv4-mapped IPv6 address or network is trusted as the IPv4 one.
    """
    assert parseTrustedProxies(["::ffff:10.0.0.1", "::ffff:192.0.2.0/120"]) == [
        IPv4Network("10.0.0.1/32"),
        IPv4Network("192.0.2.0/24"),
    ]


def test_parseSkipsBlankValues() -> None:
    """
    Blank values (as from a trailing comma in a list) are skipped, and
    surrounding whitespace is ignored.
    """
    assert parseTrustedProxies(["", " 10.0.0.0/8 ", "  "]) == [
        IPv4Network("10.0.0.0/8")
    ]


@pytest.mark.parametrize(
    "junk", ["proxy.example.com", "10.0.0.0/33", "10.0.0.256", "10.0.0.1:80", "*"]
)
def test_parseRejectsJunkNamingIt(junk: str) -> None:
    """
    A value that is neither an address nor a network raises L{ValueError}
    naming the value.
    """
    with pytest.raises(ValueError, match=repr(junk).replace("*", r"\*")):
        parseTrustedProxies(["10.0.0.0/8", junk])


# clientAddress


def test_clientIsPeerWithoutTrustedProxies() -> None:
    """
    With no trusted proxies, the client address is the TCP peer, whatever
    X-Forwarded-For claims.
    """
    assert clientAddress(ATTACKER, FORGED, []) == ATTACKER


def test_noParsingWithoutTrustedProxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    With no trusted proxies, neither the peer nor the header is parsed.
    """

    def refuse(text: str) -> None:
        raise AssertionError(f"parsed {text!r}")

    monkeypatch.setattr(forwarding, "_parseAddress", refuse)
    assert clientAddress(ATTACKER, FORGED, []) == ATTACKER
    assert forwardedFor(ATTACKER, FORGED, []) == ATTACKER


def test_clientIsUntrustedPeer() -> None:
    """
    When the peer is not a trusted proxy, X-Forwarded-For is ignored: a
    client cannot spoof its address.
    """
    assert clientAddress(ATTACKER, FORGED, PROXIES) == ATTACKER


def test_clientFromTrustedPeer() -> None:
    """
    When the peer is a trusted proxy, the client is the address it forwarded
    for.
    """
    assert clientAddress("10.0.0.1", CLIENT, PROXIES) == CLIENT


def test_clientIsTrustedPeerWithoutHeader() -> None:
    """
    A trusted proxy that sends no (or an empty) X-Forwarded-For is itself the
    client.
    """
    assert clientAddress("10.0.0.1", None, PROXIES) == "10.0.0.1"
    assert clientAddress("10.0.0.1", "", PROXIES) == "10.0.0.1"


def test_clientBehindChainOfTrustedProxies() -> None:
    """
    Reading from the right, trusted proxies are skipped: the client is the
    first address that is not one.
    """
    header = f"{CLIENT}, 192.0.2.1, 10.0.0.2"
    assert clientAddress("10.0.0.1", header, PROXIES) == CLIENT


def test_clientSpoofBehindTrustedProxy() -> None:
    """
    Addresses a client puts in its own X-Forwarded-For, left of the one the
    trusted proxy appended, are not believed.
    """
    header = f"{FORGED}, {ATTACKER}"
    assert clientAddress("10.0.0.1", header, PROXIES) == ATTACKER


def test_clientSpoofOfTrustedAddress() -> None:
    """
    A client that claims to be a trusted proxy gains nothing: the proxy
    appends the client's real address, which is not trusted.
    """
    header = f"{FORGED}, 10.9.9.9, {ATTACKER}"
    assert clientAddress("10.0.0.1", header, PROXIES) == ATTACKER


def test_clientIsLeftmostWhenAllTrusted() -> None:
    """
    When every forwarded address is a trusted proxy, the client is the
    leftmost.
    """
    assert clientAddress("10.0.0.1", "10.0.0.3, 10.0.0.2", PROXIES) == "10.0.0.3"


def test_clientFromCIDRTrust() -> None:
    """
    A peer anywhere in a trusted network is trusted; one just outside is not.
    """
    assert clientAddress("10.255.255.254", CLIENT, PROXIES) == CLIENT
    assert clientAddress("11.0.0.1", CLIENT, PROXIES) == "11.0.0.1"


def test_clientIPv6() -> None:
    """
    IPv6 peers, proxies and clients work as IPv4 ones do; the client address
    is returned in canonical form.
    """
    header = "2001:DB8:0:0::ABCD, 2001:db8:ffff::2"
    assert clientAddress("2001:db8:ffff::1", header, PROXIES) == "2001:db8::abcd"


def test_clientUntrustedIPv6Peer() -> None:
    """
    An IPv6 peer outside the trusted networks is the client.
    """
    assert clientAddress("2001:db8::66", FORGED, PROXIES) == "2001:db8::66"


def test_clientFromIPv4MappedPeer() -> None:
    """
    A dual-stack listener's IPv4-mapped peer address is matched as the IPv4
    address it maps.
    """
    assert clientAddress("::ffff:10.0.0.1", CLIENT, PROXIES) == CLIENT


def test_clientEntriesWithPorts() -> None:
    """
    Entries written with a port (C{1.2.3.4:5}, C{[2001:db8::7]:443}) are read
    as their address.
    """
    header = f"[2001:db8::7]:443, {CLIENT}:5555"
    assert clientAddress("10.0.0.1", header, PROXIES) == CLIENT
    header = "[2001:db8::7]:443, 10.0.0.2:80"
    assert clientAddress("10.0.0.1", header, PROXIES) == "2001:db8::7"


def test_clientSkipsEmptyEntries() -> None:
    """
    Empty entries (doubled or trailing commas) are skipped.
    """
    assert clientAddress("10.0.0.1", f"{CLIENT},, ,", PROXIES) == CLIENT


def test_clientStopsAtUnparsableEntry() -> None:
    """
    An entry that is not an address ends the walk: the client is the last
    address read before it (written by a trusted proxy), never anything left
    of it.
    """
    header = f"{FORGED}, unknown, 10.0.0.2"
    assert clientAddress("10.0.0.1", header, PROXIES) == "10.0.0.2"


def test_clientIsPeerWhenRightmostEntryUnparsable() -> None:
    """
    When the rightmost entry is not an address, the client is the peer.
    """
    header = f"{FORGED}, [2001:db8::1]junk"
    assert clientAddress("10.0.0.1", header, PROXIES) == "10.0.0.1"


def test_clientUnparsablePeer() -> None:
    """
    A peer that is not an IP address (a UNIX socket) is never trusted.
    """
    assert clientAddress("/run/wslb.sock", CLIENT, PROXIES) == "/run/wslb.sock"


# forwardedFor


def test_forwardedForUntrustedPeerAlone() -> None:
    """
    The backend sees only the peer when the peer is not a trusted proxy: a
    client's own X-Forwarded-For is dropped.
    """
    assert forwardedFor(ATTACKER, FORGED, PROXIES) == ATTACKER


def test_forwardedForWithoutTrustedProxies() -> None:
    """
    With no trusted proxies, the backend sees only the peer.
    """
    assert forwardedFor(ATTACKER, FORGED, []) == ATTACKER


def test_forwardedForTrustedPeerAppended() -> None:
    """
    When the peer is a trusted proxy, the backend sees its list with the
    peer appended.
    """
    header = f"{CLIENT}, 10.0.0.2"
    assert forwardedFor("10.0.0.1", header, PROXIES) == f"{header}, 10.0.0.1"


def test_forwardedForTrustedPeerWithoutHeader() -> None:
    """
    A trusted proxy that sends no X-Forwarded-For is forwarded for alone.
    """
    assert forwardedFor("10.0.0.1", None, PROXIES) == "10.0.0.1"
    assert forwardedFor("10.0.0.1", " , ", PROXIES) == "10.0.0.1"


def test_forwardedForIPv6Peer() -> None:
    """
    A trusted IPv6 peer is appended as given.
    """
    assert (
        forwardedFor("2001:db8:ffff::1", CLIENT, PROXIES)
        == f"{CLIENT}, 2001:db8:ffff::1"
    )
