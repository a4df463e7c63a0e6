"""The TUN device: one interface holding the local ULA /128, one host route per peer.

Opened with ``IFF_TUN | IFF_NO_PI`` (raw IP packets, no packet-info header) and
non-blocking. Addresses and routes go through netlink (pyroute2) in the current network
namespace. The device is not persistent: closing its file descriptor deletes it together
with its address and routes, so teardown is also clean when the process dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import socket
import struct

from pyroute2 import IPRoute

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100
IFA_F_NODAD = 0x02
IFNAMSIZ = 16


class TunError(OSError):
    """The TUN device could not be created or configured (message says why and what to do)."""


class TunDevice:
    """A TUN interface: ``fd`` for packets, netlink for its address and routes."""

    def __init__(self, name: str = "btmm0", *, mtu: int = 1280, txqueuelen: int = 1000) -> None:
        if not name or len(name.encode()) >= IFNAMSIZ or "/" in name or " " in name:
            raise TunError(f"interface name {name!r} must be 1-15 characters without '/' or spaces")
        try:
            self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise TunError(f"cannot open /dev/net/tun: {exc.strerror} (needs root or CAP_NET_ADMIN)"
                           ) from None
        try:
            ifr = struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI)
            result = fcntl.ioctl(self.fd, TUNSETIFF, ifr)
        except OSError as exc:
            os.close(self.fd)
            raise TunError(f"cannot create TUN device {name}: {exc.strerror} "
                           "(is another btmm-tunnel-up using it? pick another with --tun)") from None
        self.name = result[:IFNAMSIZ].rstrip(b"\0").decode()
        self.mtu = mtu
        self._ipr = IPRoute()
        self.index = int(self._ipr.link_lookup(ifname=self.name)[0])
        self._ipr.link("set", index=self.index, mtu=mtu, txqlen=txqueuelen, state="up")
        self.routes: set[ipaddress.IPv6Address] = set()
        self.closed = False

    def set_address(self, address: ipaddress.IPv6Address) -> None:
        """Put ``address``/128 on the device (no DAD: it is ours alone)."""
        self._ipr.addr("add", index=self.index, address=str(address), prefixlen=128,
                       family=socket.AF_INET6, flags=IFA_F_NODAD)

    def add_route(self, peer: ipaddress.IPv6Address, mtu: int | None = None) -> None:
        """Host route ``peer``/128 into the device with the tunnel MTU."""
        self._ipr.route("replace", dst=str(peer), dst_len=128, oif=self.index,
                        family=socket.AF_INET6, metrics={"mtu": mtu or self.mtu})
        self.routes.add(peer)

    def remove_route(self, peer: ipaddress.IPv6Address) -> None:
        with contextlib.suppress(Exception):
            self._ipr.route("del", dst=str(peer), dst_len=128, oif=self.index, family=socket.AF_INET6)
        self.routes.discard(peer)

    def close(self) -> None:
        """Remove routes, close the fd (which deletes the device)."""
        if self.closed:
            return
        self.closed = True
        for peer in list(self.routes):
            self.remove_route(peer)
        with contextlib.suppress(OSError):
            os.close(self.fd)
        with contextlib.suppress(Exception):
            self._ipr.close()
