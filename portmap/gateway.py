"""Find the default IPv4 gateway: the box that NAT-PMP and PCP requests go to.

RFC 6886 §3 and RFC 6887 §8.1 send requests to the default router. We read the main
routing table over netlink (pyroute2), falling back to netifaces; the lowest-metric
default route wins. ``--gateway`` on the command line skips all this.
"""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, ip_address

from portmap.errors import PortmapError


class GatewayError(PortmapError):
    """No default IPv4 gateway could be found."""


def _from_netlink() -> IPv4Address | None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        routes = ipr.get_default_routes(family=socket.AF_INET)
    best: tuple[int, IPv4Address] | None = None
    for route in routes:
        gateway = route.get("RTA_GATEWAY")
        if not gateway:
            continue
        metric = route.get("RTA_PRIORITY") or 0
        candidate = (int(metric), IPv4Address(gateway))
        if best is None or candidate[0] < best[0]:
            best = candidate
    return None if best is None else best[1]


def _from_netifaces() -> IPv4Address | None:
    import netifaces

    entry = netifaces.gateways().get("default", {}).get(netifaces.AF_INET)
    if not entry:
        return None
    address = ip_address(entry[0])
    return address if isinstance(address, IPv4Address) else None


def default_gateway() -> IPv4Address:
    """The default IPv4 gateway of this network namespace, or GatewayError."""
    errors: list[str] = []
    for finder in (_from_netlink, _from_netifaces):
        try:
            found = finder()
        except Exception as exc:  # a finder that cannot run here: try the next one
            errors.append(f"{finder.__name__.strip('_')}: {exc}")
            continue
        if found is not None:
            return found
    detail = f" ({'; '.join(errors)})" if errors else ""
    raise GatewayError("no default IPv4 route, so no gateway to ask for a port mapping" + detail)
