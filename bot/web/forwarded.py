"""The client's own address behind reverse proxies we trust (Caddy, nginx on the same host).

`X-Forwarded-For` is believed only when the connection comes from a trusted proxy, and then only up
to the right-most address no trusted proxy vouches for: everything left of it was written by the
client and may be forged. Not aiohttp-remotes: its strict mode answers 400 to direct connections and
rewrites scheme and host too, while Kindling only needs the address for throttling.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from aiohttp import hdrs, web

Network = IPv4Network | IPv6Network


def client_address(request: web.Request, trusted: Iterable[Network]) -> str | None:
    """The address of whoever sent the request: the peer, or what trusted proxies say they saw."""
    trusted = tuple(trusted)
    peer = request.remote
    if not trusted or not _is_trusted(peer, trusted):
        return peer
    hops = [hop.strip() for header in request.headers.getall(hdrs.X_FORWARDED_FOR, []) for hop in header.split(",")]
    for hop in reversed(hops):
        if _parse(hop) is None:  # a proxy we trust would not write this: keep the last address it vouched for
            return peer
        if not _is_trusted(hop, trusted):
            return hop
        peer = hop
    return peer  # every hop is a trusted proxy: the left-most is the client


def _is_trusted(address: str | None, trusted: tuple[Network, ...]) -> bool:
    parsed = _parse(address)
    return parsed is not None and any(parsed in network for network in trusted)


def _parse(address: str | None) -> IPv4Address | IPv6Address | None:
    try:
        return ip_address(address or "")
    except ValueError:
        return None
