"""Run a :class:`~portmap.client.PortMapper` over real UDP sockets (blocking, selectors).

How this works
--------------
:class:`Driver` opens one UDP socket *connected* to ``gateway:5351`` (so the kernel only
delivers the gateway's replies, and an ICMP port-unreachable shows up as
ECONNREFUSED: "nothing listens on 5351 there") and, when it can, one socket bound to
``0.0.0.0:5350`` that receives the gateway's announcements to 224.0.0.1 (RFC 6886
§3.2.1, RFC 6887 §14.1). Its address on the gateway's network is ``local_address``
(the PCP client address).

:meth:`Driver.events` is a generator: it sends what the client wants to send, waits for
a datagram, the client's timer or the optional wake-up socket (for signal handlers),
and yields the client's events with the time they happened. The caller stops iterating
when it has what it needs; nothing here decides policy.
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address

from portmap.client import DEFAULT_LIFETIME, MAX_ATTEMPTS, Event, Mode, PortMapper
from portmap.wire import ANNOUNCE_GROUP, CLIENT_PORT, NONCE_LEN, SERVER_PORT

Clock = Callable[[], float]


@dataclass(frozen=True)
class Wakeup:
    """The wake-up socket became readable (a signal arrived): check your stop flag."""


@dataclass(frozen=True)
class PortRefused:
    """The gateway answered with ICMP port unreachable: nothing listens on UDP 5351."""


class Driver:
    """UDP sockets for one gateway; feeds a PortMapper (see the module notes)."""

    def __init__(self, gateway: IPv4Address, *, listen_announcements: bool = True,
                 clock: Clock = time.monotonic) -> None:
        self.gateway = gateway
        self.clock = clock
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.connect((str(gateway), SERVER_PORT))
        self.local_address = IPv4Address(self.sock.getsockname()[0])
        self.announce_sock: socket.socket | None = None
        self.announce_error = ""
        if listen_announcements:
            self._open_announcements()
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.sock, selectors.EVENT_READ, "unicast")
        if self.announce_sock is not None:
            self.sel.register(self.announce_sock, selectors.EVENT_READ, "announce")

    def _open_announcements(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with contextlib.suppress(AttributeError, OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(("", CLIENT_PORT))
            mreq = ANNOUNCE_GROUP.packed + self.local_address.packed
            with contextlib.suppress(OSError):  # 224.0.0.1 is joined by every host anyway
                s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
            s.setblocking(False)
        except OSError as exc:
            s.close()
            self.announce_error = f"cannot listen for announcements on UDP {CLIENT_PORT}: {exc.strerror}"
            return
        self.announce_sock = s

    def new_mapper(self, internal_port: int, *, mode: Mode = Mode.AUTO, nonce: bytes | None = None,
                   suggested_external_port: int | None = None, lifetime: int = DEFAULT_LIFETIME,
                   max_attempts: int = MAX_ATTEMPTS) -> PortMapper:
        """A PortMapper for this gateway and local address with a random PCP nonce."""
        return PortMapper(gateway=self.gateway, client_address=self.local_address,
                          internal_port=internal_port, mode=mode,
                          nonce=nonce if nonce is not None else os.urandom(NONCE_LEN),
                          suggested_external_port=suggested_external_port, lifetime=lifetime,
                          max_attempts=max_attempts)

    def events(self, client: PortMapper, *, wake: socket.socket | None = None,
               deadline: float | None = None) -> Iterator[tuple[float, Event | Wakeup | PortRefused]]:
        """Drive ``client``; yield ``(time, event)``; stop at ``deadline`` or when the client idles."""
        if wake is not None:
            self.sel.register(wake, selectors.EVENT_READ, "wake")
        try:
            while True:
                now = self.clock()
                timer = client.get_timer()
                if timer is not None and now >= timer:
                    client.handle_timer(now)
                for data, _addr in client.datagrams_to_send(now):
                    with contextlib.suppress(ConnectionRefusedError):
                        self.sock.send(data)
                while (event := client.next_event()) is not None:
                    yield now, event
                timer = client.get_timer()
                if timer is None:
                    return  # nothing left to do (deleted or failed)
                if deadline is not None and now >= deadline:
                    return
                wait = max(0.0, timer - now)
                if deadline is not None:
                    wait = min(wait, deadline - now)
                for key, _ in self.sel.select(wait):
                    if key.data == "wake":
                        with contextlib.suppress(BlockingIOError, InterruptedError):
                            wake.recv(512) if wake is not None else None
                        yield self.clock(), Wakeup()
                        continue
                    refused = self._receive(key.fileobj, client)  # type: ignore[arg-type]
                    if refused:
                        yield self.clock(), PortRefused()
        finally:
            if wake is not None:
                self.sel.unregister(wake)

    def _receive(self, sock: socket.socket, client: PortMapper) -> bool:
        for _ in range(64):  # drain what is queued, bounded
            try:
                data, addr = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return False
            except ConnectionRefusedError:
                return True
            except OSError as exc:
                if exc.errno == errno.ECONNREFUSED:
                    return True
                raise
            client.receive_datagram(data, (addr[0], addr[1]), self.clock())
        return False

    def close(self) -> None:
        self.sel.close()
        self.sock.close()
        if self.announce_sock is not None:
            self.announce_sock.close()

    def __enter__(self) -> Driver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
