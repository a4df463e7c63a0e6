"""IKE mode of btmm-tunnel-up: drive ike_lite over the shared UDP port, key esp_udp.

How this works
--------------
:class:`IkeService` owns one :class:`ike_lite.IkeEndpoint` and is the only code that
touches it (one thread: :meth:`IkeService.run`). Datagrams arrive from

* the datapath's worker thread (``on_ike``: IKE with the non-ESP marker on 4500, marker
  already stripped) — queued and handed over through a wake-up pipe;
* optionally a plain UDP socket on port 500 (``ike_port``), for initiators that start
  the standard way (strongSwan's default) before floating to 4500.

Every ike_lite event is applied to the datapath (duck-typed: ``add_peer``, ``rekey``,
``remove_sa``, ``remove_peer``, ``update_outer``, ``send_ike``) — make-before-break: a
rekeyed CHILD SA is installed (new inbound, switch outbound) before the old inbound SA is
removed — and passed to ``on_event`` for records. Without a datapath
(``transport=UdpTransport``) the service runs IKE only (tests, benchmarks).

``run_ike_mode(args, datapath, out, stop)`` is the hook tools/tunnel_up.py calls for
``--listen``, ``--on-demand`` and ``tunnel-endpoint`` records on stdin. Its
:class:`TunnelManager` decides which peers are wanted: requests come from stdin and from
the control socket (:class:`ControlServer`, a Unix socket in the state dir: later pipelines
on this host hand their records to the one process that owns the port); on demand a peer's
ULA is only routed into the TUN device (armed) and the datapath's ``on_demand`` callback
starts IKE when a packet for it arrives (the datapath holds the packets meanwhile), also
after an idle close; ``--on-demand-all`` arms the account's whole /48 and finds the host of
an unknown ULA in DNS (:func:`endpoint_for_ula`). ``python -m tools.tunnel_ike``
runs a service with JSON-lines events on stdout and commands on stdin (used by the
interop tests and the benchmark).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import secrets
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    # ike_lite (~60 ms with cryptography) is imported where it is used, so that
    # `btmm-tunnel-up --help` (which only needs add_arguments) does not load it
    from ike_lite import Config
    from ike_lite import events as ev
    from tools.netns import Lab

Addr = tuple[str, int]


class Transport(Protocol):
    def send_ike(self, data: bytes, addr: Addr) -> None: ...


class UdpTransport:
    """IKE-only NAT-T socket (no ESP): stands in for the datapath in tests and benchmarks."""

    def __init__(self, bind: str = "0.0.0.0", port: int = 4500) -> None:  # noqa: S104
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((bind, port))
        self.on_ike: Callable[[bytes, Addr], None] | None = None

    def send_ike(self, data: bytes, addr: Addr) -> None:
        from ike_lite.const import NON_ESP_MARKER

        self.sock.sendto(NON_ESP_MARKER + data, addr)

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> None:
        from ike_lite.const import NON_ESP_MARKER

        for _ in range(256):
            try:
                data, addr = self.sock.recvfrom(65536)
            except BlockingIOError:
                return
            if data[:4] == NON_ESP_MARKER and self.on_ike is not None:
                self.on_ike(data[4:], addr)

    def close(self) -> None:
        self.sock.close()


class IkeService:
    """ike_lite endpoint + I/O + datapath keying. Thread-safe entry points: ``on_ike``,
    ``initiate``, ``command``, ``stop``; everything else runs in :meth:`run`'s thread."""

    def __init__(
        self,
        config: Config,
        transport: Transport,
        *,
        datapath: Any = None,
        ike_port: int | None = None,
        bind: str = "0.0.0.0",  # noqa: S104
        on_event: Callable[[ev.Event], None] | None = None,
        rng: Callable[[int], bytes] = secrets.token_bytes,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from ike_lite import IkeEndpoint

        self.clock = clock
        self.endpoint = IkeEndpoint(config, rng, clock())
        self.transport = transport
        self.datapath = datapath
        self.on_event = on_event
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stop = threading.Event()
        self.sock500: socket.socket | None = None
        if ike_port is not None:
            self.sock500 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock500.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock500.bind((bind, ike_port))
            self.sock500.setblocking(False)
        self.inner_of: dict[int, str] = {}
        self.current_spi: dict[str, bytes] = {}  # peer inner → spi_in of the SA the datapath uses
        self.nat_local: dict[int, bool] = {}
        self.first_sent: dict[int, float] = {}

    # ------------------------------------------------------------------ thread-safe entry points
    def on_ike(self, data: bytes, addr: Addr) -> None:
        """NAT-T IKE datagram (marker stripped), from any thread."""
        self._post("natt", (data, addr))

    def initiate(self, peer_addr: Addr, peer_id: str | None, peer_inner: str, natt: bool = True) -> None:
        self._post("initiate", (peer_addr, peer_id, peer_inner, natt))

    def command(self, name: str, handle: int | None = None, **kw: Any) -> None:
        """rekey-child [pfs], rekey-ike, delete-child, close — for one session or all."""
        self._post("command", (name, handle, kw))

    def on_datapath_event(self, event: Any) -> None:
        """esp_udp ``DatapathEvent`` (any thread): an SA near its sequence limit is rekeyed now."""
        if getattr(event, "kind", "") in ("rekey_needed", "seq_exhausted"):
            self._post("rekey-inner", str(event.inner))

    def stop(self) -> None:
        self._stop.set()
        self._wake()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def _post(self, kind: str, item: Any) -> None:
        self._inbox.put((kind, item))
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    # ------------------------------------------------------------------ the loop
    def run(self, stop: threading.Event | None = None, extra_fds: list[Any] | None = None) -> None:
        fds: list[Any] = [self._wake_r]
        if self.sock500 is not None:
            fds.append(self.sock500)
        fds += extra_fds or []
        while not self._stop.is_set() and not (stop is not None and stop.is_set()):
            timer = self.endpoint.get_timer()
            now = self.clock()
            timeout = 0.2 if timer is None else min(0.2, max(0.0, timer - now))
            readable, _, _ = select.select(fds, [], [], timeout)
            for f in readable:
                if f is self.sock500:
                    self._read500()
                elif f == self._wake_r:
                    with contextlib.suppress(OSError):
                        os.read(self._wake_r, 4096)
                elif hasattr(f, "read"):
                    f.read()
            self._drain_inbox()
            now = self.clock()
            timer = self.endpoint.get_timer()
            if timer is not None and timer <= now:
                self.endpoint.handle_timer(now)
            self._flush()
        self.close_all()

    def close_all(self, grace: float = 1.0) -> None:
        """Delete every IKE SA (best effort, ``grace`` seconds) — a clean exit."""
        now = self.clock()
        for handle in self.endpoint.sessions():
            with contextlib.suppress(Exception):
                self.endpoint.close(handle, now)
        self._flush()
        deadline = self.clock() + grace
        while self.endpoint.sessions() and self.clock() < deadline:
            time.sleep(0.02)
            self._drain_inbox()
            self.endpoint.handle_timer(self.clock())
            self._flush()

    def _read500(self) -> None:
        assert self.sock500 is not None
        for _ in range(256):
            try:
                data, addr = self.sock500.recvfrom(65536)
            except BlockingIOError:
                return
            self.endpoint.receive_datagram(data, addr, self.clock(), natt=False)

    def _drain_inbox(self) -> None:
        from ike_lite.const import NON_ESP_MARKER

        while True:
            try:
                kind, item = self._inbox.get_nowait()
            except queue.Empty:
                return
            now = self.clock()
            if kind == "natt":
                data, addr = item
                self.endpoint.receive_datagram(NON_ESP_MARKER + data, addr, now, natt=True)
            elif kind == "initiate":
                peer_addr, peer_id, peer_inner, natt = item
                handle = self.endpoint.initiate(peer_addr, peer_id, peer_inner, now, natt=natt)
                self.first_sent[handle] = now
                self.inner_of[handle] = peer_inner
            elif kind == "command":
                self._command(now, *item)
            elif kind == "rekey-inner":
                for handle, inner in list(self.inner_of.items()):
                    if inner == item and handle in self.endpoint.sessions():
                        self._command(now, "rekey-child", handle, {})
            self._flush()

    def _command(self, now: float, name: str, handle: int | None, kw: dict[str, Any]) -> None:
        from ike_lite import events as ev
        from ike_lite.const import DhGroup

        handles = [handle] if handle is not None else self.endpoint.sessions()
        for h in handles:
            try:
                if name == "rekey-child":
                    pfs = kw.get("pfs")
                    self.endpoint.rekey_child(
                        h, now, DhGroup(pfs) if isinstance(pfs, int) and not isinstance(pfs, bool) else pfs
                    )
                elif name == "rekey-ike":
                    self.endpoint.rekey_ike(h, now)
                elif name == "delete-child":
                    self.endpoint.delete_child(h, now)
                elif name == "close":
                    self.endpoint.close(h, now)
            except Exception as exc:
                self._deliver(ev.Dropped(h, f"command {name} failed: {exc}", ("", 0)))

    def _flush(self) -> None:
        from ike_lite import events as ev

        # Key the datapath first, then send: a responder must accept ESP on a new CHILD SA
        # before its IKE_AUTH (or CREATE_CHILD_SA) response lets the initiator use it — else
        # the initiator's first packets (e.g. held on-demand ones) arrive at an unknown SPI.
        events: list[ev.Event] = []
        while (e := self.endpoint.next_event()) is not None:
            self._apply(e)
            events.append(e)
        for d in self.endpoint.datagrams_to_send(self.clock()):
            try:
                if d.natt:
                    self.transport.send_ike(d.data[4:], d.addr)
                elif self.sock500 is not None:
                    self.sock500.sendto(d.data, d.addr)
                else:
                    self._deliver(ev.Dropped(0, "no port-500 socket for a non-NAT-T datagram", d.addr))
            except OSError as exc:
                self._deliver(ev.Dropped(0, f"send to {ev.fmt_addr(d.addr)} failed: {exc.strerror}", d.addr))
        for e in events:
            self._deliver(e)
        while (e := self.endpoint.next_event()) is not None:  # (none expected: sending makes no events)
            self._apply(e)
            self._deliver(e)

    def _deliver(self, e: ev.Event) -> None:
        if self.on_event is not None:
            self.on_event(e)

    # ------------------------------------------------------------------ datapath keying
    def _apply(self, e: ev.Event) -> None:
        from ike_lite import events as ev

        if isinstance(e, ev.IkeSaUp):
            self.nat_local[e.handle] = e.nat_local
        if self.datapath is None:
            return
        from esp_udp.sa import SAParams  # tools may import esp_udp; ike_lite never does

        try:
            if isinstance(e, ev.ChildSaUp):
                params = SAParams.from_json(e.child.as_dict())
                self.inner_of[e.handle] = e.child.inner
                if e.rekey_of is None:
                    self.datapath.add_peer(params, keepalive=self.nat_local.get(e.handle, False))
                elif e.outbound:
                    self.datapath.rekey(params, linger=60.0)
                else:  # we answered the peer's rekey: receive on it now, send once the peer has it
                    self.datapath.install_inbound(
                        str(params.inner), params.spi_in, params.suite, params.key_in
                    )
                self.current_spi[e.child.inner] = e.child.spi_in
            elif isinstance(e, ev.ChildSaOutbound):
                params = SAParams.from_json(e.child.as_dict())
                self.datapath.replace_outbound(
                    str(params.inner), params.spi_out, params.suite, params.key_out
                )
            elif isinstance(e, ev.ChildSaDown):
                if e.reason == ev.REKEYED or self.current_spi.get(e.inner) != e.spi_in:
                    # superseded, or the peer already has a newer tunnel (INITIAL_CONTACT)
                    self.datapath.remove_sa(int.from_bytes(e.spi_in, "big"))
                else:
                    self.current_spi.pop(e.inner, None)
                    self.datapath.remove_peer(e.inner)
            elif isinstance(e, ev.PeerAddressChanged) and e.handle in self.inner_of:
                self.datapath.update_outer(self.inner_of[e.handle], e.peer_addr)
        except Exception as exc:
            self._deliver(ev.Dropped(e.handle, f"datapath refused {type(e).__name__}: {exc}", ("", 0)))


# ---------------------------------------------------------------------------- records
def event_record(e: ev.Event) -> dict[str, Any] | None:
    """The JSON-able form of an event (no keys), for records and the test runner."""
    from ike_lite import events as ev

    base: dict[str, Any] = {"event": type(e).__name__, "handle": e.handle}
    if isinstance(e, ev.IkeSaUp):
        base.update(
            peer=ev.fmt_addr(e.peer_addr),
            peer_id=e.peer_id,
            suite=e.suite,
            initiator=e.initiator,
            spi_i=e.spi_i.hex(),
            spi_r=e.spi_r.hex(),
            nat_local=e.nat_local,
            nat_remote=e.nat_remote,
        )
    elif isinstance(e, ev.ChildSaUp):
        c = e.child
        base.update(
            inner=c.inner,
            outer=ev.fmt_addr(c.outer),
            suite=c.suite,
            spi_in=c.spi_in.hex(),
            spi_out=c.spi_out.hex(),
            rekey_of=e.rekey_of.hex() if e.rekey_of else None,
            setup_ms=round(e.setup_s * 1000, 3) if e.setup_s is not None else None,
        )
    elif isinstance(e, ev.ChildSaOutbound):
        base.update(inner=e.child.inner, spi_out=e.child.spi_out.hex())
    elif isinstance(e, ev.ChildSaDown):
        base.update(inner=e.inner, spi_in=e.spi_in.hex(), spi_out=e.spi_out.hex(), reason=e.reason)
    elif isinstance(e, ev.IkeSaDown | ev.ChildSaFailed):
        base.update(reason=e.reason, message=e.message)
        if isinstance(e, ev.IkeSaDown):
            base.update(peer=ev.fmt_addr(e.peer_addr), peer_id=e.peer_id, established=e.established)
    elif isinstance(e, ev.IkeSaRekeyed):
        base.update(spi_i=e.spi_i.hex(), spi_r=e.spi_r.hex())
    elif isinstance(e, ev.PeerAddressChanged):
        base.update(peer=ev.fmt_addr(e.peer_addr))
    elif isinstance(e, ev.Dropped):
        base.update(reason=e.reason, peer=ev.fmt_addr(e.peer_addr))
    elif isinstance(e, ev.MessageLogged):
        base.update(
            direction=e.direction,
            exchange=e.exchange,
            message_id=e.message_id,
            response=e.response,
            payloads=list(e.payloads),
            length=e.length,
        )
    return base


def parse_addr(text: str, default_port: int = 4500) -> Addr:
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, default_port
    return host.strip("[]"), int(port)


def append_private(path: Path, lines: list[str]) -> None:
    """Append key lines to a file created 0600 (keylogs hold secrets)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write("".join(line + "\n" for line in lines))


# ---------------------------------------------------------------------------- tunnel_up hook
@dataclass
class WantedPeer:
    """A peer this host was asked to reach (a ``tunnel-endpoint`` record), and its fate."""

    record: dict[str, Any]
    inner: str
    peer_id: str
    addr: Addr
    ever_up: bool = False
    up: bool = False
    attempts: int = 0
    handle: int | None = None
    last_bytes: int = -1
    last_activity: float = 0.0
    from_stdin: bool = True
    on_demand: bool = False
    armed: bool = False  # on demand: the ULA is routed into the TUN, traffic starts IKE
    negotiating: bool = False  # on demand: an initiator is running (or its lookup)
    stale: bool = False  # the endpoint may have moved: resolve again before the next attempt
    next_trigger: float = 0.0  # on demand: no new attempt before (after a failure)
    last_up: dict[str, Any] | None = None  # the last `tunnel` up record (answers repeat requests)
    on_demand_origin: bool = False  # was on demand before a removal


RETRY_FIRST = 1.0
RETRY_MAX = 30.0
CONTROL_MAX_CLIENTS = 64
UNKNOWN_RETRY = 30.0  # seconds before a ULA no host advertises is looked up again (on-demand-all)
CONTROL_MAX_LINE = 65536


class ControlConn:
    """One client of the control socket: the peers it waits for, and the way back to it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.waiting: set[str] = set()
        self.input_done = False
        self.closed = False
        self._lock = threading.Lock()

    def send(self, record: dict[str, Any]) -> None:
        data = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        with self._lock:
            if self.closed:
                return
            try:
                self.sock.sendall(data)
            except OSError:
                self._close_locked()

    def settle(self, inner: str, record: dict[str, Any]) -> None:
        if inner in self.waiting:
            self.waiting.discard(inner)
            self.send(record)
        self.maybe_close()

    def maybe_close(self) -> None:
        """Close once the client's input is done and every peer it asked for is settled."""
        if self.input_done and not self.waiting:
            with self._lock:
                self._close_locked()

    def _close_locked(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()


class ControlServer:
    """The daemon's Unix socket (mode 0600): a thread accepts, one thread per client reads."""

    def __init__(self, path: Path, on_client: Callable[[ControlConn], None]) -> None:
        from tools.cli import Fatal
        from tools.tunnel_up import unix_address

        self.path = path
        self.on_client = on_client
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with unix_address(path) as address:
                probe.connect(address)
        except (FileNotFoundError, ConnectionRefusedError):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # a socket left behind by a process that was killed
        except OSError:
            pass
        else:
            raise Fatal(f"another btmm-tunnel-up already answers on {path}: hand records to it "
                        "(btmm-tunnel-up --via), or stop it first")
        finally:
            probe.close()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            with unix_address(path) as address:
                self.sock.bind(address)
        except OSError as exc:
            self.sock.close()
            raise Fatal(f"cannot create control socket {path}: {exc.strerror or exc} "
                        "(choose another with --control PATH, or --control none)") from None
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self.inode = os.stat(path).st_ino
        self.sock.listen(16)
        self.clients: set[ControlConn] = set()
        self._stopped = threading.Event()

    def serve(self) -> None:
        threading.Thread(target=self._accept, daemon=True, name="btmm-control").start()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                readable, _, _ = select.select([self.sock], [], [], 0.5)
            except (OSError, ValueError):
                return
            if not readable:
                continue
            try:
                conn_sock, _ = self.sock.accept()
            except OSError:
                continue
            if len([c for c in self.clients if not c.closed]) >= CONTROL_MAX_CLIENTS:
                conn_sock.close()
                continue
            conn = ControlConn(conn_sock)
            self.clients = {c for c in self.clients if not c.closed} | {conn}
            threading.Thread(target=self.on_client, args=(conn,), daemon=True,
                             name="btmm-control-client").start()

    def busy(self) -> bool:
        return any(not c.closed for c in self.clients)

    def close(self) -> None:
        self._stopped.set()
        self.sock.close()
        for conn in list(self.clients):
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self.inode:  # still ours (not a successor's)
                self.path.unlink()


class TunnelManager:
    """The initiator side of IKE mode: which peers are wanted, armed, up; records out.

    Requests (``tunnel-endpoint`` records) come from stdin and from control-socket clients;
    results go to stdout (every record) and back to the client that asked (the record that
    settles its peer: up, armed, or an error). Thread-safe: the IKE service thread delivers
    events, reader threads deliver requests, the datapath's worker announces on-demand
    packets, a timer thread closes idle tunnels; shared state is under ``lock``.
    """

    def __init__(self, args: argparse.Namespace, datapath: Any, out: Any, stop: threading.Event,
                 host: Any) -> None:
        self.args = args
        self.datapath = datapath
        self.out = out
        self.stop = stop
        self.host = host
        self.listening = bool(getattr(args, "listen", False))
        self.account_wide = bool(getattr(args, "on_demand_all", False))
        self.on_demand_default = bool(getattr(args, "on_demand", False)) or self.account_wide
        self.daemon = self.listening or self.on_demand_default
        self.unknown: dict[str, float] = {}  # ULA → no new lookup before (on-demand-all)
        self.cancelled: dict[str, float] = {}  # removed while negotiating: close if up before this
        self.idle_timeout = float(getattr(args, "idle_timeout", 600.0) or 0.0)
        self.failures = 0
        self.reasons: list[str] = []
        self.lock = threading.RLock()
        self.wanted: dict[str, WantedPeer] = {}  # by peer inner ULA
        self.closing: dict[int, tuple[WantedPeer, str]] = {}  # handle → peer we closed, and why
        self.stdin_done = threading.Event()
        self.service: IkeService | None = None
        self.control: ControlServer | None = None
        self.demand: queue.SimpleQueue[str] = queue.SimpleQueue()
        esp_keylog = getattr(args, "keylog", None)
        self.esp_keylog = Path(esp_keylog) if esp_keylog else None
        self.keylog = Path(esp_keylog + ".ikev2") if esp_keylog else None

    # ------------------------------------------------------------------ output
    def emit_for(self, inner: str, record: dict[str, Any]) -> None:
        """A record about peer ``inner``: to stdout, and to every client waiting for that peer."""
        self.out.emit(record)
        if self.control is not None:
            for conn in list(self.control.clients):
                conn.settle(inner, record)

    def reply(self, conn: ControlConn | None, record: dict[str, Any]) -> None:
        """A record for the requester only (stdin requests: stdout)."""
        if conn is None:
            self.out.emit(record)
        else:
            conn.send(record)

    def fail(self, peer: WantedPeer, message: str, reason: str) -> None:
        from tools.cli import error_record

        if peer.from_stdin:
            self.failures += 1
            self.reasons.append(reason)
        self.out.warn(message)
        self.emit_for(peer.inner, error_record("btmm-tunnel-up", message, peer.record, reason=reason))

    def state_record(self, peer: WantedPeer, state: str, **fields: Any) -> dict[str, Any]:
        from tools.cli import derive

        return derive(peer.record, "tunnel", state=state, peer=peer.inner, inner_remote=peer.inner,
                      inner_local=str(self.host.ula), outer=f"{peer.addr[0]}:{peer.addr[1]}", **fields)

    # ------------------------------------------------------------------ requests
    def handle_record(self, record: dict[str, Any], conn: ControlConn | None,
                      from_stdin: bool = True) -> None:
        from tools.cli import derive, error_record

        if record.get("type") != "tunnel-endpoint":
            self.reply(conn, record)  # error records (and anything else) pass along
            return
        inner = str(record.get("inner") or "")
        if record.get("event") == "removed":
            self.remove(inner, record, conn)
            return
        try:
            port = int(record.get("outer_port", 4500))
            addr = (str(record["outer_address"]), port)
            peer_id, inner = str(record.get("ike_id") or record["host"]), str(record["inner"])
        except (KeyError, ValueError, TypeError) as exc:
            if conn is None:
                self.failures += 1
            self.reply(conn, error_record("btmm-tunnel-up", f"tunnel-endpoint record lacks {exc}", record))
            return
        on_demand = bool(record.get("on_demand", self.on_demand_default))
        with self.lock:
            existing = self.wanted.get(inner)
            if existing is not None:
                if existing.up and existing.last_up is not None:
                    answer: dict[str, Any] | None = derive(record, "tunnel", **{
                        k: v for k, v in existing.last_up.items() if k not in ("type", "v")})
                    answer_state = "up"
                elif existing.armed and not existing.negotiating:
                    answer, answer_state = self.state_record(existing, "armed"), "armed"
                else:
                    answer, answer_state = None, "negotiating"
                    if conn is not None:
                        conn.waiting.add(inner)
                if answer is not None:
                    answer["already"] = True
                    self.reply(conn, answer)
                self.out.explain(f"{peer_id}: already wanted ({answer_state}); record not started again")
                return
            peer = WantedPeer(record=record, inner=inner, peer_id=peer_id, addr=addr,
                              from_stdin=conn is None and from_stdin, on_demand=on_demand)
            self.wanted[inner] = peer
            if conn is not None and not on_demand:
                conn.waiting.add(inner)
        if on_demand:
            if conn is not None:
                conn.waiting.add(inner)
            self.arm(peer)
            return
        self.out.explain(f"IKE to {peer_id} at {fmt(addr)} for {inner}")
        assert self.service is not None
        self.service.initiate(addr, peer_id, inner, natt=port != 500)

    def remove(self, inner: str, record: dict[str, Any], conn: ControlConn | None) -> None:
        """The service disappeared (``event: removed``): close its tunnel, disarm its ULA."""
        with self.lock:
            peer = self.wanted.get(inner)
            if peer is None:
                self.reply(conn, dict(record, type="tunnel", state="down", peer=inner, inner_remote=inner,
                                      reason="not-wanted", message=f"no tunnel to {inner} here"))
                return
            if conn is not None:
                conn.waiting.add(inner)
            peer.on_demand_origin = peer.on_demand
            peer.on_demand = False  # no re-arming after this close
            was_up = peer.handle is not None and peer.up
        if peer.armed:
            self.disarm(peer)
        if was_up:
            self.close_peer(inner, "the service disappeared from DNS")
        else:
            with self.lock:
                self.wanted.pop(inner, None)
                if peer.negotiating or not peer.on_demand_origin:
                    self.cancelled[inner] = time.monotonic() + 60  # a negotiation may still finish
            self.emit_for(inner, self.state_record(peer, "down", reason="removed",
                                                   message="closed: the service disappeared from DNS"))

    # ------------------------------------------------------------------ on demand
    def arm(self, peer: WantedPeer) -> None:
        """Route the peer's ULA into the TUN device; the first packet to it starts IKE."""
        if not hasattr(self.datapath, "route_prefix"):
            self.fail(peer, "on-demand tunnels need an esp_udp datapath with route_prefix/on_demand "
                      "(update btmm)", "unsupported")
            with self.lock:
                self.wanted.pop(peer.inner, None)
            return
        self.datapath.on_demand = self.on_demand_packet
        self.datapath.route_prefix(peer.inner)
        first = not peer.armed
        peer.armed = True
        if first:
            self.out.explain(f"{peer.peer_id}: armed — traffic to {peer.inner} brings the tunnel up")
            self.emit_for(peer.inner, self.state_record(peer, "armed"))

    def disarm(self, peer: WantedPeer) -> None:
        peer.armed = False
        with contextlib.suppress(Exception):
            self.datapath.unroute_prefix(peer.inner)

    def on_demand_packet(self, destination: str) -> None:
        """The datapath's worker thread: a packet to ``destination`` has no SA. Never blocks."""
        self.demand.put(destination)

    def demand_loop(self) -> None:
        """Start IKE for armed peers that got traffic (own thread: re-resolving may take a while)."""
        while not self.stop.is_set():
            try:
                destination = self.demand.get(timeout=0.5)
            except queue.Empty:
                continue
            if destination == "":
                return
            self.trigger(destination)

    def arm_account(self) -> None:
        """``--on-demand-all``: route the account's whole ULA /48 into the TUN device."""
        prefix = str(self.host.account.ula_prefix)
        self.datapath.on_demand = self.on_demand_packet
        self.datapath.route_prefix(prefix)
        self.out.explain(f"armed the account's {prefix}: traffic to any of its ULAs looks the host up")
        self.out.emit(make_tunnel_record(state="armed", peer=prefix, inner_remote=prefix, scope="account",
                                         inner_local=str(self.host.ula)))

    def lookup(self, destination: str) -> None:
        """Traffic to a ULA of the account without a record: find its host in DNS, then arm it."""
        import ipaddress

        now = time.monotonic()
        with self.lock:
            if self.unknown.get(destination, 0.0) > now or destination in self.wanted:
                return
            self.unknown[destination] = now + UNKNOWN_RETRY  # one lookup at a time, and not again soon
        try:
            prefix = ipaddress.IPv6Network(str(self.host.account.ula_prefix))
            inside = ipaddress.IPv6Address(destination) in prefix
        except ValueError:
            inside = False
        server = self.host.account.server
        if not inside or destination == str(self.host.ula) or not server:
            return
        self.out.explain(f"traffic to {destination}: looking its host up in {self.host.account.domain}")
        try:
            record = endpoint_for_ula(server, self.host.account.domain, destination)
        except Exception as exc:
            record = None
            self.out.explain(f"looking up {destination} failed: {exc}")
        if record is None:
            from tools.cli import error_record

            self.out.emit(error_record("btmm-tunnel-up", f"traffic to {destination}: no host of the account "
                                       "advertises this ULA (no service with this AAAA), so no tunnel",
                                       {"inner": destination}, reason="unknown_ula"))
            return
        with self.lock:
            self.unknown.pop(destination, None)
        record["on_demand"] = True
        self.handle_record(record, None, from_stdin=False)
        self.trigger(destination)

    def trigger(self, destination: str) -> None:
        if self.account_wide:
            with self.lock:
                known = destination in self.wanted
            if not known:
                self.lookup(destination)
                return
        with self.lock:
            peer = self.wanted.get(destination)
            why = ("not armed" if peer is None or not peer.armed else "tunnel up" if peer.up
                   else "already negotiating" if peer.negotiating
                   else "backing off after a failure" if time.monotonic() < peer.next_trigger else "")
            if why or peer is None:
                self.out.explain(f"traffic to {destination}: no new tunnel ({why})")
                return
            peer.negotiating = True
            stale = peer.stale
        self.emit_for(destination, self.state_record(peer, "triggered"))
        if stale:
            addr = self.reresolve(peer) or peer.addr
            if addr != peer.addr:
                self.out.explain(f"{peer.peer_id} moved to {fmt(addr)}")
                peer.addr = addr
            peer.stale = False
        self.out.explain(f"traffic to {destination}: IKE to {peer.peer_id} at {fmt(peer.addr)}")
        if self.service is not None and not self.service.stopped:
            self.service.initiate(peer.addr, peer.peer_id, peer.inner, natt=peer.addr[1] != 500)

    # ------------------------------------------------------------------ reconnect, idle
    def maybe_finish(self) -> None:
        """An initiator-only process ends once nothing is wanted, stdin is done and no client waits."""
        if self.daemon or self.service is None or not self.stdin_done.is_set():
            return
        with self.lock:
            if self.wanted:
                return
        if self.control is not None and self.control.busy():
            return
        if not self.service.endpoint.sessions():
            self.service.stop()

    def schedule_retry(self, peer: WantedPeer) -> None:
        delay = min(RETRY_MAX, RETRY_FIRST * (2 ** min(peer.attempts, 6)))
        peer.attempts += 1
        self.out.explain(f"reconnecting to {peer.peer_id} in {delay:.0f} s (attempt {peer.attempts})")
        timer = threading.Timer(delay, self.reconnect, args=(peer,))
        timer.daemon = True
        timer.start()

    def reconnect(self, peer: WantedPeer) -> None:
        if self.stop.is_set() or self.service is None or self.service.stopped:
            return
        with self.lock:
            if self.wanted.get(peer.inner) is not peer or peer.up:
                return
        addr = self.reresolve(peer) or peer.addr
        if addr != peer.addr:
            self.out.explain(f"{peer.peer_id} moved to {fmt(addr)}")
            peer.addr = addr
        self.service.initiate(addr, peer.peer_id, peer.inner, natt=addr[1] != 500)

    def reresolve(self, peer: WantedPeer) -> Addr | None:
        """The peer's current outer endpoint from DNS (None: keep the old one)."""
        server = self.host.account.server
        host_name = str(peer.record.get("host") or peer.peer_id)
        if not server:
            return None
        try:
            return resolve_outer(server, host_name)
        except Exception as exc:  # a failed lookup just means: try the old address
            self.out.explain(f"re-resolving {host_name} failed ({exc}); trying the last known endpoint")
            return None

    def close_peer(self, inner: str, why: str) -> None:
        with self.lock:
            peer = self.wanted.get(inner)
            if peer is not None and not peer.on_demand:
                self.wanted.pop(inner, None)
            if peer is not None and peer.handle is not None:
                self.closing[peer.handle] = (peer, why)
        if peer is not None and peer.handle is not None and self.service is not None:
            self.out.explain(f"closing the tunnel to {peer.peer_id}: {why}")
            self.service.command("close", peer.handle)

    def idle_watch(self) -> None:
        """Close initiated tunnels that carried no traffic for ``idle_timeout`` seconds."""
        idle_timeout = self.idle_timeout
        while not self.stop.wait(min(2.0, max(0.5, idle_timeout / 4)) if idle_timeout > 0 else 1.0):
            if self.service is None or self.service.stopped:
                return
            self.maybe_finish()
            if idle_timeout <= 0:
                continue
            counters = {p["inner"]: p for p in self.datapath.counters().get("peers", [])}
            now = time.monotonic()
            with self.lock:
                peers = [p for p in self.wanted.values() if p.up and p.handle not in self.closing]
            for peer in peers:
                c = counters.get(peer.inner, {})
                total = int(c.get("bytes_in", 0)) + int(c.get("bytes_out", 0))
                if total != peer.last_bytes:
                    peer.last_bytes, peer.last_activity = total, now
                elif now - peer.last_activity >= idle_timeout:
                    self.out.explain(f"{peer.peer_id}: no traffic for {idle_timeout:.0f} s")
                    self.close_peer(peer.inner, "idle")

    # ------------------------------------------------------------------ IKE events
    def on_event(self, e: ev.Event) -> None:
        from ike_lite import events as ev

        if isinstance(e, ev.ChildSaUp):
            self.child_up(e)
        elif isinstance(e, ev.IkeSaDown):
            self.ike_down(e)
        elif isinstance(e, ev.ChildSaFailed):
            self.out.warn(e.message)
        elif isinstance(e, ev.MessageLogged):
            arrow = "→" if e.direction == "out" else "←"
            kind = "response" if e.response else "request"
            again = " (retransmission)" if e.retransmission else ""
            self.out.explain(
                f"IKE {arrow} {ev.fmt_addr(e.peer_addr)} {e.exchange} #{e.message_id} {kind} "
                f"[{' '.join(e.payloads)}] {e.length} B{again}"
            )
        elif isinstance(e, ev.Dropped):
            self.out.explain(f"dropped from {ev.fmt_addr(e.peer_addr)}: {e.reason}")
        elif isinstance(e, ev.IkeSaUp | ev.IkeSaRekeyed):
            if isinstance(e, ev.IkeSaUp):
                self.out.explain(f"IKE SA up with {e.peer_id} at {ev.fmt_addr(e.peer_addr)} ({e.suite})")
            if self.keylog is not None and self.service is not None:
                line = self.service.endpoint.keylog(e.handle)
                if line:
                    append_private(self.keylog, [line])

    def child_up(self, e: ev.ChildSaUp) -> None:
        from ike_lite import events as ev
        from tools.cli import derive

        c = e.child
        if self.esp_keylog is not None:
            from esp_udp.keylog import esp_sa_lines
            from esp_udp.sa import SAParams

            append_private(self.esp_keylog, esp_sa_lines(SAParams.from_json(c.as_dict())))
        self.out.explain(f"CHILD SA with {c.inner}: SPI in {c.spi_in.hex()} out {c.spi_out.hex()}")
        with self.lock:
            peer = self.wanted.get(c.inner)
            cancelled = (peer is None and self.cancelled.pop(c.inner, 0.0) > time.monotonic()
                         and not e.rekey_of)
            if peer is not None:
                peer.up, peer.ever_up, peer.attempts, peer.handle = True, True, 0, e.handle
                peer.negotiating = False
                peer.last_activity = time.monotonic()
        record = derive(
            peer.record if peer is not None else None, "tunnel",
            state="rekeyed" if e.rekey_of else "up", peer=c.inner, inner_local=c.local_inner,
            inner_remote=c.inner, outer=ev.fmt_addr(c.outer), spi_in=c.spi_in.hex(),
            spi_out=c.spi_out.hex(), suite=c.suite,
            setup_ms=round(e.setup_s * 1000, 3) if e.setup_s is not None else None,
        )
        if peer is not None:
            peer.last_up = record
        self.emit_for(c.inner, record)
        if cancelled and self.service is not None:
            self.out.explain(f"{c.inner} was removed while its tunnel was being negotiated: closing it")
            self.service.command("close", e.handle)

    def ike_down(self, e: ev.IkeSaDown) -> None:
        from ike_lite import events as ev
        from tools.cli import derive

        service = self.service
        inner = service.inner_of.get(e.handle, "") if service is not None else ""
        with self.lock:
            peer = self.wanted.get(inner) if inner else None
            if peer is None:
                peer = next((p for p in self.wanted.values() if p.handle == e.handle), None)
            closed = self.closing.pop(e.handle, None)
            if peer is not None:
                peer.up = False
                peer.negotiating = False
                peer.handle = None if peer.handle == e.handle else peer.handle
        if peer is not None and peer.on_demand and peer.armed and not self.stop.is_set():
            # before anyone hears "down": remove_peer took the /128 route with it, and a packet
            # sent right after must still reach the datapath (and bring the tunnel back)
            with contextlib.suppress(Exception):
                self.datapath.route_prefix(peer.inner)
        if e.established:
            self.emit_for(inner or e.peer_id, derive(
                closed[0].record if closed else peer.record if peer is not None else None,
                "tunnel", state="down", peer=inner or e.peer_id, inner_remote=inner,
                outer=ev.fmt_addr(e.peer_addr), reason="idle" if closed and closed[1] == "idle"
                else "removed" if closed and "disappeared" in closed[1] else e.reason,
                message=f"closed: {closed[1]}" if closed else e.message,
            ))
        if peer is None:
            if not e.established:
                self.failures += 1
                self.reasons.append(e.reason)
                self.out.warn(e.message)
                from tools.cli import error_record

                self.out.emit(error_record("btmm-tunnel-up", e.message, None, reason=e.reason))
            self.maybe_finish()
            return
        if peer.on_demand:
            self.down_on_demand(peer, e)
        else:
            retry = (peer.ever_up and e.reason not in (ev.CLOSED, ev.AUTHENTICATION_FAILED)
                     and not self.stop.is_set())
            if retry:
                self.schedule_retry(peer)
            elif not e.established or e.reason != ev.CLOSED:
                if not e.established:
                    self.fail(peer, e.message, e.reason)
                with self.lock:
                    self.wanted.pop(peer.inner, None)
            else:
                with self.lock:
                    self.wanted.pop(peer.inner, None)
        self.maybe_finish()

    def down_on_demand(self, peer: WantedPeer, e: ev.IkeSaDown) -> None:
        """An on-demand peer stays armed: its route is back in the TUN, the next packet retries
        (after resolving the peer again; after a failure, not before a backoff)."""
        from ike_lite import events as ev

        peer.stale = True
        if not e.established:
            peer.attempts += 1
            backoff = min(RETRY_MAX, RETRY_FIRST * (2 ** min(peer.attempts - 1, 6)))
            peer.next_trigger = time.monotonic() + backoff
            self.fail(peer, e.message, e.reason)
            if e.reason == ev.AUTHENTICATION_FAILED:  # another account: traffic must not retry forever
                self.disarm(peer)
                with self.lock:
                    self.wanted.pop(peer.inner, None)
                return
        else:
            peer.attempts = 0
        self.out.explain(f"{peer.peer_id}: tunnel down, still armed — the next packet brings it back")

    # ------------------------------------------------------------------ readers
    def read_stdin(self) -> None:
        from tools.cli import read_records

        try:
            for record in read_records(iter(sys.stdin.readline, ""), "btmm-tunnel-up"):
                if self.stop.is_set():
                    return
                self.handle_record(record, None)
        finally:
            self.stdin_done.set()
            self.maybe_finish()

    def serve_client(self, conn: ControlConn) -> None:
        from tools.cli import read_records

        try:
            stream = conn.sock.makefile("r", encoding="utf-8", errors="replace")
            lines = iter(lambda: stream.readline(CONTROL_MAX_LINE), "")
            for record in read_records(lines, "btmm-tunnel-up"):
                if self.stop.is_set():
                    break
                self.handle_record(record, conn)
        except (OSError, ValueError):
            pass
        finally:
            conn.input_done = True
            conn.maybe_close()
            self.maybe_finish()


def make_tunnel_record(**fields: Any) -> dict[str, Any]:
    from tools.cli import make_record

    return make_record("tunnel", **fields)


def fmt(addr: Addr) -> str:
    return f"{addr[0]}:{addr[1]}"


def run_ike_mode(args: argparse.Namespace, datapath: Any, out: Any, stop: threading.Event) -> int:
    """The hook tools/tunnel_up.py calls (see its ``IkeMode`` docstring).

    ``--listen``: answer every host of the account (its PSK authenticates them; their inner
    addresses must lie in the account's ULA /48). Every ``tunnel-endpoint`` record on stdin
    (read as it arrives, so ``btmm-browse --watch | ...`` works; with or without
    ``--listen``) or from a control-socket client starts an initiator to that peer (BTMM
    mode: straight to its UDP port with the non-ESP marker; port 500 means the standard
    start and float) — or, on demand, arms it. One ``tunnel`` record per CHILD SA (state
    armed / triggered / up / rekeyed / down), carrying the input record's other fields
    along; a negotiation that never succeeds becomes an error record with the reason and one
    human sentence (no plaintext fallback: the peer's ULA simply stays unreachable).

    A tunnel that was up and goes down (the peer restarted, DPD declared it dead) is brought
    back: the peer's endpoint is resolved again in DNS (it may have moved) and IKE retried
    with backoff (1 s doubling to 30 s) until it is up or we are stopped — for an on-demand
    peer, when the next packet to it arrives. A tunnel without traffic for
    ``--idle-timeout`` seconds (default 600, BTMM's 10 minutes) is closed (an on-demand peer
    stays armed). Without ``--listen``/``--on-demand`` the process ends when no requested
    tunnel is left, stdin is done and no control client is connected.
    """
    from ike_lite import Config
    from ike_lite.const import DhGroup
    from tools.account_file import load_host
    from tools.cli import Fatal, stdin_records_available
    from tools.tunnel_up import control_path

    host = load_host(
        getattr(args, "account", None), getattr(args, "host", None), getattr(args, "state_dir", None)
    )
    config = Config(
        psk=host.account.ike_psk,
        local_id=host.fqdn,
        local_inner=str(host.ula),
        dpd_interval=getattr(args, "dpd", 30.0),
        pfs_group=DhGroup.CURVE25519 if getattr(args, "pfs", False) else None,
        peer_prefix=str(host.account.ula_prefix),
        log_messages=bool(getattr(args, "verbose", False)),
    )
    manager = TunnelManager(args, datapath, out, stop, host)
    service = IkeService(
        config, datapath, datapath=datapath, ike_port=getattr(args, "ike_port", None),
        on_event=manager.on_event,
    )
    manager.service = service
    datapath.on_ike = service.on_ike
    datapath.on_event = service.on_datapath_event
    if manager.account_wide:
        manager.arm_account()
    path = control_path(args)
    if path is not None:
        manager.control = ControlServer(path, manager.serve_client)
        manager.control.serve()
        out.explain(f"control socket {path}")
    try:
        if stdin_records_available():
            threading.Thread(target=manager.read_stdin, daemon=True, name="btmm-stdin").start()
        else:
            manager.stdin_done.set()
            if not manager.daemon:
                raise Fatal("nothing to do: pipe tunnel-endpoint records in (btmm-resolve-tunnel | "
                            "btmm-tunnel-up), or pass --listen, --on-demand or --static-keys FILE")
        threading.Thread(target=manager.idle_watch, daemon=True, name="btmm-idle").start()
        threading.Thread(target=manager.demand_loop, daemon=True, name="btmm-demand").start()
        publisher = threading.Thread(target=publish_status, args=(args, datapath, stop, service, manager),
                                     daemon=True)
        publisher.start()
        service.run(stop)
        service.stop()
        manager.demand.put("")
        publisher.join(timeout=2)
    finally:
        if manager.control is not None:
            manager.control.close()
    # A daemon's job is serving: initiators it refused were reported as error records, but a
    # clean stop is success. An initiator's exit code says what became of its tunnels.
    return exit_code(manager.reasons, manager.failures) if not manager.daemon else 0


def resolve_outer(server: str, host_name: str, timeout: float = 2.0) -> Addr | None:
    """Outer endpoint of ``host_name`` from its ``_autotunnel._udp`` SRV and A records."""
    import asyncio

    from dnssd_wa import driver, names

    h, port = driver.parse_hostport(server, driver.DNS_PORT)

    async def go() -> Addr | None:
        async with driver.DnsClient(driver.ServerConfig(h, port, timeout=timeout)) as client:
            ep, _ = await driver.resolve_tunnel_endpoint(client, names.domain_name(host_name))
        if ep.outer_address and ep.outer_port:
            return ep.outer_address, ep.outer_port
        return None

    return asyncio.run(go())


def endpoint_for_ula(server: str, domain: str, ula: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """The ``tunnel-endpoint`` record of the account host whose AAAA is ``ula`` — or None.

    The record set has no reverse mapping (DESIGN.md §4), so this walks it forward: the
    service types of the domain (``_services._dns-sd._udp`` PTR), their instances and hosts
    with their AAAA records (a browse), then the matching host's autotunnel records. Sound for
    every host that advertises at least one service (as BTMM's clients found hosts); a host
    without services cannot be found from its ULA alone.
    """
    import asyncio
    import ipaddress

    from dnssd_wa import driver, names

    h, port = driver.parse_hostport(server, driver.DNS_PORT)
    target = ipaddress.IPv6Address(ula)
    dom = names.domain_name(domain)

    async def go() -> dict[str, Any] | None:
        async with driver.DnsClient(driver.ServerConfig(h, port, timeout=timeout)) as client:
            enum = names.child([b"_services", b"_dns-sd", b"_udp"], dom)
            targets, _ = await driver.ptr_lists(client, [enum])
            types = sorted({".".join(names.label_text(label) for label in t.labels[:2])
                            for t in targets.get(enum, []) if len(t.labels) > 2})
            if not types:
                return None
            services, _ = await driver.browse(client, dom, types)
            match = next((svc for svc in services
                          if any(ipaddress.IPv6Address(a) == target for a in svc.addresses)), None)
            if match is None:
                return None
            ep, _ = await driver.resolve_tunnel_endpoint(client, names.domain_name(match.host))
        if not (ep.inner and ep.outer_address and ep.outer_port):
            return None
        return {"type": "tunnel-endpoint", "v": 1, "host": ep.host, "inner": ep.inner,
                "outer_address": ep.outer_address, "outer_port": ep.outer_port,
                "autotunnel_name": ep.autotunnel_name, "ike_id": ep.ike_id, "found_by": "ula"}

    return asyncio.run(go())


def publish_status(
    args: argparse.Namespace, datapath: Any, stop: threading.Event, service: IkeService,
    manager: TunnelManager | None = None,
) -> None:
    """Keep btmm-status's view of the tunnels fresh (as the static-keys mode does), then clear it."""
    from tools.account_file import state_dir
    from tools.status_file import clear, publish
    from tools.tunnel_up import STATUS_COMPONENT, status_body

    directory = state_dir(getattr(args, "state_dir", None))
    try:
        while not stop.is_set() and not service.stopped:
            body = status_body(datapath)
            body["ike_sessions"] = len(service.endpoint.sessions())
            if manager is not None:
                with manager.lock:
                    body["armed"] = sorted(p.inner for p in manager.wanted.values() if p.armed and not p.up)
                body["control"] = str(manager.control.path) if manager.control is not None else None
            publish(directory, STATUS_COMPONENT, body)
            stop.wait(0.5)
    finally:
        clear(directory, STATUS_COMPONENT)


def exit_code(reasons: list[str], failures: int) -> int:
    """tools/cli.py's codes: 2 when the peer refused our credentials (different account files),
    3 when a peer could not be reached, 1 for other per-tunnel failures."""
    from ike_lite import events as ev
    from tools.cli import EXIT_OK, EXIT_PARTIAL, EXIT_REMOTE, EXIT_USAGE

    if ev.AUTHENTICATION_FAILED in reasons:
        return EXIT_USAGE
    if reasons and all(r == ev.TIMEOUT for r in reasons):
        return EXIT_REMOTE
    return EXIT_PARTIAL if failures else EXIT_OK


# ---------------------------------------------------------------------------- test/bench runner
class ServiceProcess:
    """``python -m tools.tunnel_ike`` in a network namespace, events read as JSON lines, commands
    written as JSON lines (used by tests/ike and bench/ike_setup.py; stopped by PID with the Lab)."""

    def __init__(self, lab: Lab, ns: str, tmp: Path, *extra: str, psk: bytes, inner: str, ident: str) -> None:
        psk_file = tmp / f"psk-{ns}"
        psk_file.write_bytes(psk)
        psk_file.chmod(0o600)
        argv = [
            sys.executable,
            "-m",
            "tools.tunnel_ike",
            "--psk-file",
            str(psk_file),
            "--id",
            ident,
            "--inner",
            inner,
            *extra,
        ]
        self.proc = lab.popen(
            ns,
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(tmp / f"runner-{ns}.err", "wb"),
            cwd=str(Path(__file__).resolve().parents[1]),
        )
        self.events: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self.seen: list[dict[str, Any]] = []
        self.errfile = tmp / f"runner-{ns}.err"
        threading.Thread(target=self._read, daemon=True).start()
        self.wait("ready", timeout=20)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put(json.loads(line))

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()

    def wait(self, event: str, timeout: float = 15.0, **match: Any) -> dict[str, Any]:
        for e in self.seen:
            if e["event"] == event and all(e.get(k) == v for k, v in match.items()):
                self.seen.remove(e)
                return e
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                e = self.events.get(timeout=0.1)
            except queue.Empty:
                continue
            if e["event"] == event and all(e.get(k) == v for k, v in match.items()):
                return e
            self.seen.append(e)
        err = self.errfile.read_text(errors="replace")[-1500:]
        from tools.netns import LabError

        raise LabError(
            f"no {event} {match} within {timeout}s; saw {[x['event'] for x in self.seen][-20:]}"
            f"; stderr: {err}"
        )

    def clear(self) -> None:
        """Forget events seen so far (each check starts fresh)."""
        self.drain()
        self.seen.clear()

    def drain(self) -> list[dict[str, Any]]:
        while True:
            try:
                self.seen.append(self.events.get_nowait())
            except queue.Empty:
                return self.seen


def _runner_main(argv: list[str] | None = None) -> int:
    from ike_lite import Config
    from ike_lite import events as ev
    from ike_lite.const import NON_ESP_MARKER, DhGroup

    p = argparse.ArgumentParser(
        prog="python -m tools.tunnel_ike",
        description="ike_lite service with JSON-lines events (tests, benchmarks)",
    )
    p.add_argument("--psk-file", required=True)
    p.add_argument("--id", required=True)
    p.add_argument("--inner", required=True)
    p.add_argument("--port", type=int, default=4500)
    p.add_argument("--ike-port", type=int, default=None)
    p.add_argument("--datapath", action="store_true", help="key a real esp_udp Datapath (TUN)")
    p.add_argument("--tun", default="btmm0")
    p.add_argument("--dpd", type=float, default=None)
    p.add_argument("--ike-encr", default="aes256gcm16,chacha20poly1305")
    p.add_argument("--esp-encr", default="aes256gcm16,chacha20poly1305")
    p.add_argument("--groups", default="31,19,14")
    p.add_argument("--cookie-threshold", type=int, default=100)
    p.add_argument("--log-messages", action="store_true")
    p.add_argument("--keylog", default=None, help="append IKE keys (Wireshark ikev2_decryption_table)")
    args = p.parse_args(argv)
    psk = Path(args.psk_file).read_bytes()
    config = Config(
        psk=psk,
        local_id=args.id,
        local_inner=args.inner,
        dpd_interval=args.dpd,
        ike_encr=tuple(args.ike_encr.split(",")),
        esp_encr=tuple(args.esp_encr.split(",")),
        groups=tuple(DhGroup(int(g)) for g in args.groups.split(",")),
        cookie_threshold=args.cookie_threshold,
        log_messages=args.log_messages,
        retransmit_timeout=0.5,
        retransmit_tries=4,
    )
    lock = threading.Lock()

    def emit(obj: dict[str, Any]) -> None:
        with lock:
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()

    def on_event(e: ev.Event) -> None:
        if args.keylog and isinstance(e, ev.IkeSaUp | ev.IkeSaRekeyed):
            append_private(Path(args.keylog), [service.endpoint.keylog(e.handle)])
        rec = event_record(e)
        if rec is not None:
            rec["t"] = time.monotonic()
            emit(rec)

    dp: Any = None
    transport: Any
    extra: list[Any] = []
    if args.datapath:
        from esp_udp.datapath import Datapath

        dp = Datapath(args.inner, port=args.port, tun_name=args.tun)
        dp.start()
        transport = dp
    else:
        transport = UdpTransport(port=args.port)
        transport.sock.setblocking(False)
        extra.append(transport)
    service = IkeService(config, transport, datapath=dp, ike_port=args.ike_port, on_event=on_event)
    if dp is not None:
        dp.on_ike = service.on_ike
        dp.on_event = service.on_datapath_event
    else:
        transport.on_ike = lambda data, addr: service.endpoint.receive_datagram(
            NON_ESP_MARKER + data, addr, time.monotonic(), natt=True
        )

    def commands() -> None:
        for line in sys.stdin:
            try:
                cmd = json.loads(line)
            except json.JSONDecodeError:
                continue
            if cmd.get("cmd") == "initiate":
                service.initiate(
                    parse_addr(cmd["addr"]), cmd.get("peer_id"), cmd["inner"], natt=cmd.get("natt", True)
                )
            elif cmd.get("cmd") == "stats":
                emit(
                    {
                        "event": "stats",
                        **service.endpoint.stats,
                        "sessions": len(service.endpoint.sessions()),
                        "t": time.monotonic(),
                    }
                )
            elif cmd.get("cmd") == "quit":
                break
            else:
                service.command(cmd["cmd"], cmd.get("handle"), **cmd.get("args", {}))
        service.stop()

    threading.Thread(target=commands, daemon=True).start()
    emit({"event": "ready", "port": args.port, "t": time.monotonic()})
    try:
        service.run(extra_fds=extra)
    finally:
        if dp is not None:
            dp.close()
    emit({"event": "stopped"})
    return 0


if __name__ == "__main__":
    sys.exit(_runner_main())
