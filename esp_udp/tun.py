"""The TUN device: one interface holding the local ULA /128, one host route per peer.

Opened with ``IFF_TUN | IFF_NO_PI`` (raw IP packets, no packet-info header) and
non-blocking. Addresses and routes go through netlink (pyroute2) in the current network
namespace. The device is not persistent: closing its file descriptor deletes it together
with its address and routes, so teardown is also clean when the process dies.

Network namespaces are per *thread* on Linux, and pyroute2 does not pin its socket to
the namespace of the thread that created it. So every netlink operation runs on one
small helper thread started by the constructor: it inherits the creating thread's
namespace, and so the device can be driven from any thread of the process (the
datapath's control calls come from IKE or the CLI).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import queue
import socket
import struct
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # pyroute2 costs ~100 ms to import: only the netlink thread loads it
    from pyroute2 import IPRoute

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100
IFF_VNET_HDR = 0x4000
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
IFA_F_NODAD = 0x02
IFNAMSIZ = 16
T = TypeVar("T")


class _NetlinkThread:
    """Runs netlink calls on one thread that stays in the creator's network namespace."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[IPRoute], Any], queue.SimpleQueue[Any]] | None] = (
            queue.SimpleQueue())
        ready: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="tun-netlink", daemon=True)
        self._thread.start()
        error = ready.get()
        if error is not None:
            raise error

    def _run(self, ready: queue.SimpleQueue[BaseException | None]) -> None:
        try:
            from pyroute2 import IPRoute

            ipr = IPRoute()
        except BaseException as exc:
            ready.put(exc)
            return
        ready.put(None)
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                fn, reply = job
                try:
                    reply.put((True, fn(ipr)))
                except BaseException as exc:
                    reply.put((False, exc))
        finally:
            with contextlib.suppress(Exception):
                ipr.close()

    def call(self, fn: Callable[[IPRoute], T]) -> T:
        reply: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._jobs.put((fn, reply))
        ok, value = reply.get()
        if not ok:
            raise value
        result: T = value
        return result

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=5)


class TunError(OSError):
    """The TUN device could not be created or configured (message says why and what to do)."""


class TunDevice:
    """A TUN interface: ``fd`` for packets, netlink for its address and routes."""

    def __init__(self, name: str = "btmm0", *, mtu: int = 1280, txqueuelen: int = 1000,
                 offload: bool = False, tso: bool = False) -> None:
        """``offload``: virtio-net headers, so coalesced TCP can be written (GRO, see
        esp_udp.offload); ``tso`` also lets the kernel hand over checksum-offloaded TCP
        super-packets to be segmented here. TSO is off if the kernel refuses it."""
        if not name or len(name.encode()) >= IFNAMSIZ or "/" in name or " " in name:
            raise TunError(f"interface name {name!r} must be 1-15 characters without '/' or spaces")
        try:
            self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise TunError(f"cannot open /dev/net/tun: {exc.strerror} (needs root or CAP_NET_ADMIN)"
                           ) from None
        flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if offload else 0)
        try:
            ifr = struct.pack("16sH", name.encode(), flags)
            result = fcntl.ioctl(self.fd, TUNSETIFF, ifr)
        except OSError as exc:
            os.close(self.fd)
            raise TunError(f"cannot create TUN device {name}: {exc.strerror} "
                           "(is another btmm-tunnel-up using it? pick another with --tun)") from None
        self.offload = offload
        self.tso = False
        if offload and tso:
            try:
                # IPv4 and IPv6 TCP super-packets, cut into segments by esp_udp.offload
                fcntl.ioctl(self.fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
                self.tso = True
            except OSError:
                pass  # the header stays; the kernel hands over plain packets
        self.name = result[:IFNAMSIZ].rstrip(b"\0").decode()
        self.mtu = mtu
        try:
            self._nl = _NetlinkThread()
            self.index = int(self._nl.call(lambda ipr: ipr.link_lookup(ifname=self.name))[0])
            self._nl.call(lambda ipr: ipr.link("set", index=self.index, mtu=mtu, txqlen=txqueuelen,
                                               state="up"))
        except Exception as exc:
            os.close(self.fd)
            raise TunError(f"cannot configure TUN device {self.name}: {exc}") from None
        self.routes: set[ipaddress.IPv6Address | ipaddress.IPv4Address] = set()
        self.prefixes: set[ipaddress.IPv6Network | ipaddress.IPv4Network] = set()
        self.closed = False

    def set_address(self, address: ipaddress.IPv6Address) -> None:
        """Put ``address``/128 on the device (no DAD: it is ours alone)."""
        self._nl.call(lambda ipr: ipr.addr("add", index=self.index, address=str(address), prefixlen=128,
                                           family=socket.AF_INET6, flags=IFA_F_NODAD))

    def set_address4(self, address: ipaddress.IPv4Address) -> None:
        """Put the inner IPv4 ``address``/32 on the device."""
        self._nl.call(lambda ipr: ipr.addr("add", index=self.index, address=str(address), prefixlen=32,
                                           family=socket.AF_INET))

    def _route(self, op: str, net: ipaddress.IPv6Network | ipaddress.IPv4Network, mtu: int) -> None:
        family = socket.AF_INET6 if net.version == 6 else socket.AF_INET
        if op == "del":
            self._nl.call(lambda ipr: ipr.route("del", dst=str(net.network_address), dst_len=net.prefixlen,
                                                oif=self.index, family=family))
        else:
            self._nl.call(lambda ipr: ipr.route("replace", dst=str(net.network_address),
                                                dst_len=net.prefixlen, oif=self.index, family=family,
                                                metrics={"mtu": mtu}))

    def add_route(self, peer: ipaddress.IPv6Address | ipaddress.IPv4Address, mtu: int | None = None) -> None:
        """Host route ``peer``/128 (or /32) into the device with the tunnel MTU.

        ``replace``: an existing route (e.g. a re-added peer) is overwritten, and a prefix
        route through the device (:meth:`add_prefix`) covering ``peer`` does not conflict.
        """
        self._route("replace", ipaddress.ip_network(peer), mtu or self.mtu)
        self.routes.add(peer)

    def remove_route(self, peer: ipaddress.IPv6Address | ipaddress.IPv4Address) -> None:
        with contextlib.suppress(Exception):
            self._route("del", ipaddress.ip_network(peer), 0)
        self.routes.discard(peer)

    def add_prefix(self, net: ipaddress.IPv6Network | ipaddress.IPv4Network, mtu: int | None = None) -> None:
        """Route a whole prefix (or one address as /128, /32) into the device."""
        self._route("replace", net, mtu or self.mtu)
        self.prefixes.add(net)

    def remove_prefix(self, net: ipaddress.IPv6Network | ipaddress.IPv4Network) -> None:
        with contextlib.suppress(Exception):
            self._route("del", net, 0)
        self.prefixes.discard(net)

    def close(self) -> None:
        """Remove routes, close the fd (which deletes the device)."""
        if self.closed:
            return
        self.closed = True
        for peer in list(self.routes):
            self.remove_route(peer)
        for net in list(self.prefixes):
            self.remove_prefix(net)
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self._nl.close()
