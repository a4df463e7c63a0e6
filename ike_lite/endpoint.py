"""The IKE endpoint: every IKE SA behind one local UDP port pair (500 and 4500).

How this works
--------------
An :class:`IkeEndpoint` is the aioquic-style surface a driver talks to:

* ``receive_datagram(data, addr, now, natt=True)`` — one UDP payload from ``addr``.
  ``natt`` says it came in on the NAT-T port (4500), where IKE follows the 4-byte
  non-ESP marker (RFC 3948 §2.2) and a lone 0xFF byte is a keepalive. (ESP on that port is
  the datapath's business; it hands only marker-prefixed datagrams here.)
* ``datagrams_to_send(now)`` — list of :class:`Datagram` (bytes ready for the wire,
  marker included, and which local port to send them from).
* ``get_timer()`` / ``handle_timer(now)`` — the earliest deadline of any SA.
* ``next_event()`` — events from :mod:`ike_lite.events`.
* ``initiate(...)``, ``rekey_child``, ``rekey_ike``, ``delete_child``, ``close`` — commands.

It demultiplexes by our own SPI, answers new IKE_SA_INIT requests as a responder (with
stateless cookies, RFC 7296 §2.6, once more than ``cookie_threshold`` SAs are half-open),
and re-sends its cached IKE_SA_INIT reply to retransmitted requests. Bad datagrams are
dropped with a :class:`~ike_lite.events.Dropped` event; no exception escapes
``receive_datagram`` or ``handle_timer``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ike_lite import events as ev
from ike_lite.config import Config
from ike_lite.const import NON_ESP_MARKER, DhGroup, ExchangeType, Flag, NotifyType, PayloadType, ProtocolId
from ike_lite.core import SaCore
from ike_lite.errors import IkeError, ProtocolError, UsageError
from ike_lite.keys import cookie as make_cookie
from ike_lite.proposals import choose, describe
from ike_lite.sa import IkeSa
from ike_lite.wire import (
    KE,
    SA,
    Header,
    Message,
    Nonce,
    Notify,
    Payload,
    encode_message,
    parse_header,
    parse_message,
)

Addr = ev.Addr
COOKIE_VERSION = 1


@dataclass(frozen=True)
class Datagram:
    """One UDP payload to send to ``addr``; ``natt``: from the 4500 socket (marker included)."""

    data: bytes
    addr: Addr
    natt: bool = True


class IkeEndpoint:
    """Sans-I/O IKEv2 initiator and responder for one identity."""

    def __init__(self, config: Config, rng: Callable[[int], bytes], now: float = 0.0) -> None:
        self.config = config
        self.rng = rng
        self._sas: dict[bytes, SaCore] = {}  # by our SPI
        self._handles: dict[int, SaCore] = {}  # current IKE SA of each session
        self._half_open: dict[tuple[bytes, Addr], SaCore] = {}
        self._esp_spis: set[bytes] = set()
        self._out: list[Datagram] = []
        self._events: deque[ev.Event] = deque()
        self._next_handle = 1
        self._cookie_secret = rng(32)
        self.stats = {"cookies_sent": 0, "half_open_peak": 0, "dropped": 0}

    # ------------------------------------------------------------------ commands
    def initiate(
        self, peer_addr: Addr, peer_id: str | None, peer_inner: str, now: float, *, natt: bool = True
    ) -> int:
        """Start an IKE SA + first CHILD SA; returns the session handle.

        ``natt=True`` is BTMM mode: straight to the peer's NAT-T port with the non-ESP
        marker. ``natt=False`` starts on port 500 and floats to 4500 after IKE_SA_INIT.
        """
        handle = self._new_handle()
        sa = IkeSa(self, handle, True, self.new_ike_spi(), bytes(8), peer_addr, natt, now)
        self._sas[sa.our_spi] = sa
        self._handles[handle] = sa
        sa.start(peer_id, peer_inner, now)
        return handle

    def _sa(self, handle: int) -> SaCore:
        sa = self._handles.get(handle)
        if sa is None:
            raise UsageError(f"no IKE session with handle {handle}")
        return sa

    def rekey_child(self, handle: int, now: float, pfs: DhGroup | bool | None = None) -> None:
        """Rekey the session's CHILD SA (``pfs``: True/group = with a new DH, False = without)."""
        self._sa(handle).rekey_child(now, pfs)

    def rekey_ike(self, handle: int, now: float) -> None:
        self._sa(handle).rekey_ike(now)

    def delete_child(self, handle: int, now: float) -> None:
        self._sa(handle).delete_child(now)

    def close(self, handle: int, now: float) -> None:
        self._sa(handle).close(now)

    def sessions(self) -> list[int]:
        return sorted(self._handles)

    def session_info(self, handle: int) -> dict[str, object]:
        sa = self._sa(handle)
        return {
            "state": sa.state.value,
            "peer_addr": sa.peer_addr,
            "peer_id": sa.peer_id,
            "spi_i": sa.spi_i.hex(),
            "spi_r": sa.spi_r.hex(),
            "suite": sa.suite,
            "children": [c.spi_in.hex() for c in sa.children],
        }

    def keylog(self, handle: int) -> str:
        """The session's IKE keys as a line of Wireshark's ``ikev2_decryption_table`` UAT file
        (SPIs and keys as bare hex, SK_e with its salt; AEAD, so no SK_a)."""
        sa = self._sa(handle)
        if sa.keys is None or sa.aead is None:
            return ""
        alg = {
            "aes256gcm16": "AES-GCM-256 with 16 octet ICV [RFC5282]",
            "aes128gcm16": "AES-GCM-128 with 16 octet ICV [RFC5282]",
        }.get(sa.aead.name, "ChaCha20-Poly1305 [RFC7634]")
        return ",".join(
            [
                sa.spi_i.hex(),
                sa.spi_r.hex(),
                sa.keys.sk_ei.hex(),
                sa.keys.sk_er.hex(),
                f'"{alg}"',
                "",
                "",
                '"NONE [RFC4306]"',
            ]
        )

    # ------------------------------------------------------------------ aioquic surface
    def receive_datagram(self, data: bytes, addr: Addr, now: float, natt: bool = True) -> None:
        try:
            self._receive(data, addr, now, natt)
        except IkeError as exc:
            self.drop(0, str(exc), addr)

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        times = [t for sa in self._sas.values() if (t := sa.next_timer()) is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        for sa in list(self._sas.values()):
            t = sa.next_timer()
            if t is not None and t <= now:
                try:
                    sa.on_timer(now)
                except IkeError as exc:
                    self.drop(sa.handle, str(exc), sa.peer_addr)

    def next_event(self) -> ev.Event | None:
        return self._events.popleft() if self._events else None

    # ------------------------------------------------------------------ callbacks from IkeSa
    def emit(self, event: ev.Event) -> None:
        self._events.append(event)

    def send(self, data: bytes, addr: Addr, natt: bool) -> None:
        self._out.append(Datagram(data, addr, natt))

    def drop(self, handle: int, reason: str, addr: Addr) -> None:
        self.stats["dropped"] += 1
        self._events.append(ev.Dropped(handle, reason, addr))

    def new_ike_spi(self) -> bytes:
        while True:
            spi = self.rng(8)
            if spi != bytes(8) and spi not in self._sas:
                return spi

    def new_esp_spi(self) -> bytes:
        while True:
            spi = self.rng(4)
            if int.from_bytes(spi, "big") >= 256 and spi not in self._esp_spis:
                self._esp_spis.add(spi)
                return spi

    def established(self, sa: SaCore) -> None:
        self._unlist_half_open(sa)

    def _unlist_half_open(self, sa: SaCore) -> None:
        key = (sa.spi_i, sa.first_addr)
        if self._half_open.get(key) is sa:
            del self._half_open[key]

    def initial_contact(self, sa: SaCore, now: float) -> None:
        """``sa``'s peer sent INITIAL_CONTACT: drop our other IKE SAs with the same identity
        (the peer restarted and no longer has them), without sending Deletes."""
        for other in list(self._handles.values()):
            if other is not sa and other.peer_id == sa.peer_id and other.established_announced:
                other._fail(
                    ev.REPLACED,
                    f"peer {other.describe_peer()} reconnected (INITIAL_CONTACT); "
                    "its older tunnel is dropped",
                    now,
                )

    def adopt(self, sa: SaCore) -> None:
        """A rekeyed IKE SA takes over the session handle."""
        self._sas[sa.our_spi] = sa
        self._handles[sa.handle] = sa

    def forget(self, sa: SaCore) -> None:
        if self._sas.get(sa.our_spi) is sa:
            del self._sas[sa.our_spi]
        if self._handles.get(sa.handle) is sa:
            del self._handles[sa.handle]
        self._unlist_half_open(sa)

    # ------------------------------------------------------------------ demultiplexing
    def _new_handle(self) -> int:
        handle = self._next_handle
        self._next_handle += 1
        return handle

    def _receive(self, data: bytes, addr: Addr, now: float, natt: bool) -> None:
        if natt:
            if data == b"\xff":
                return  # NAT-T keepalive (RFC 3948 §2.3): not liveness
            if data[:4] != NON_ESP_MARKER:
                self.drop(0, "ESP (no non-ESP marker) handed to the IKE endpoint", addr)
                return
            data = data[4:]
        header = parse_header(data)
        try:
            msg = parse_message(data)
        except ProtocolError as exc:
            is_init = header.exchange == ExchangeType.IKE_SA_INIT and not header.is_response
            if is_init and exc.notify == NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD:
                self._reply_plain(
                    header, [Notify(NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD, exc.data)], addr, natt
                )
            raise
        h = msg.header
        if h.exchange == ExchangeType.IKE_SA_INIT and not h.is_response and h.spi_r == bytes(8):
            if not h.from_initiator or h.message_id != 0:
                raise ProtocolError("IKE_SA_INIT request with bad flags or message ID")
            return self._on_init_request(msg, addr, now, natt)
        ours = h.spi_r if h.from_initiator else h.spi_i
        sa = self._sas.get(ours)
        if sa is None:
            self.drop(0, f"no IKE SA with SPI {ours.hex()} ({h.exchange.name})", addr)
            return
        try:
            sa.receive(msg, addr, natt, now)
        except IkeError as exc:
            self.drop(sa.handle, f"{h.exchange.name}: {exc}", addr)
        return

    def _on_init_request(self, msg: Message, addr: Addr, now: float, natt: bool) -> None:
        h = msg.header
        existing = self._half_open.get((h.spi_i, addr))
        if existing is not None:
            if existing.msg1 == msg.raw and existing.cached_response is not None:
                existing._transmit(existing.cached_response[1], natt, now, to=addr)
            return
        payloads = msg.payloads
        sa_p = next((p for p in payloads if isinstance(p, SA)), None)
        ke = next((p for p in payloads if isinstance(p, KE)), None)
        nonce = next((p for p in payloads if isinstance(p, Nonce)), None)
        if sa_p is None or ke is None or nonce is None:
            raise ProtocolError("IKE_SA_INIT request without SA, KE or Nonce")
        if len(self._half_open) >= self.config.cookie_threshold:
            expected = make_cookie(self._cookie_secret, COOKIE_VERSION, nonce.data, addr[0], h.spi_i)
            got = payloads[0] if payloads and isinstance(payloads[0], Notify) else None
            if got is None or got.type != NotifyType.COOKIE or got.data != expected:
                self.stats["cookies_sent"] += 1
                return self._reply_plain(h, [Notify(NotifyType.COOKIE, expected)], addr, natt)
        spi_r = self.new_ike_spi()
        choice, retry = choose(
            sa_p.proposals,
            ProtocolId.IKE,
            self.config.ike_encr,
            self.config.groups,
            ke.group,
            b"",
            require_group=True,
        )
        if choice is None:
            if retry is not None:
                return self._reply_plain(
                    h, [Notify(NotifyType.INVALID_KE_PAYLOAD, int(retry).to_bytes(2, "big"))], addr, natt
                )
            self._reply_plain(h, [Notify(NotifyType.NO_PROPOSAL_CHOSEN)], addr, natt)
            offered = "; ".join(describe(p) for p in sa_p.proposals)
            self.emit(
                ev.IkeSaDown(
                    0,
                    ev.NO_PROPOSAL_CHOSEN,
                    f"initiator at {ev.fmt_addr(addr)} offered no acceptable IKE proposal "
                    f"({offered}) — btmm accepts only AES-GCM-256 or ChaCha20-Poly1305 with "
                    "PRF-HMAC-SHA256 and groups 31/19/14",
                    addr,
                    "",
                    False,
                )
            )
            return None
        sa = IkeSa(self, self._new_handle(), False, h.spi_i, spi_r, addr, natt, now)
        try:
            sa.respond_init(msg, choice, ke, nonce, now)
        except ProtocolError as exc:
            self._out = [d for d in self._out if d.addr != addr]
            return self._reply_plain(h, [Notify(NotifyType(exc.notify), exc.data)], addr, natt)
        self._sas[spi_r] = sa
        self._handles[sa.handle] = sa
        self._half_open[(h.spi_i, addr)] = sa
        self.stats["half_open_peak"] = max(self.stats["half_open_peak"], len(self._half_open))
        return None

    def _reply_plain(self, request: Header, payloads: list[Payload], addr: Addr, natt: bool) -> None:
        """A stateless IKE_SA_INIT reply (COOKIE, INVALID_KE_PAYLOAD, NO_PROPOSAL_CHOSEN)."""
        header = Header(request.spi_i, bytes(8), PayloadType.NONE, ExchangeType.IKE_SA_INIT, Flag.RESPONSE, 0)
        data = encode_message(header, payloads)
        self._out.append(Datagram(NON_ESP_MARKER + data if natt else data, addr, natt))
