"""The state every IKE SA keeps and the machinery all exchanges share.

:class:`SaCore` owns the message-ID counters, the single request in flight (window 1)
and its retransmission, the response cache, the task queue, timers (DPD, rekeys,
keepalives, half-open expiry), SK encryption and the failure path. The exchanges
themselves live in the mixins of :mod:`ike_lite.exchange_init`, :mod:`ike_lite.exchange_auth`,
:mod:`ike_lite.exchange_create` and :mod:`ike_lite.exchange_info`; :class:`ike_lite.sa.IkeSa`
combines them.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from ike_lite import events as ev
from ike_lite.const import (
    NON_ESP_MARKER,
    DhGroup,
    ExchangeType,
    Flag,
    NotifyType,
    PayloadType,
    ProtocolId,
)
from ike_lite.crypto import Aead, KeyExchange, open_sk, seal_sk
from ike_lite.errors import ProtocolError
from ike_lite.keys import (
    IkeKeys,
)
from ike_lite.wire import (
    GENERIC_LEN,
    HEADER_LEN,
    Delete,
    Header,
    Message,
    Notify,
    Payload,
    encode_message,
    encode_payloads,
    first_type,
    parse_payloads,
)

if TYPE_CHECKING:
    from ike_lite.endpoint import IkeEndpoint

Addr = ev.Addr
P = TypeVar("P")


class State(enum.Enum):
    INIT_SENT = "init-sent"  # initiator: IKE_SA_INIT in flight
    AUTH_SENT = "auth-sent"  # initiator: IKE_AUTH in flight
    HALF_OPEN = "half-open"  # responder: IKE_SA_INIT answered, waiting for IKE_AUTH
    ESTABLISHED = "established"
    REKEYED = "rekeyed"  # replaced by a new IKE SA; waiting for / doing its Delete
    DELETING = "deleting"
    DEAD = "dead"


class Task(enum.Enum):
    INIT = "init"
    AUTH = "auth"
    CHILD_REKEY = "child-rekey"
    IKE_REKEY = "ike-rekey"
    DELETE_CHILD = "delete-child"
    DELETE_IKE = "delete-ike"
    DPD = "dpd"


@dataclass
class Child:
    """One CHILD SA pair (ESP, tunnel mode, UDP-encapsulated)."""

    spi_in: bytes
    spi_out: bytes
    aead: Aead
    key_in: bytes
    key_out: bytes
    peer_inner: str
    created: float
    rekey_at: float | None = None
    superseded: bool = False  # a rekey replaced it; waiting for its Delete
    outbound_at: float | None = None  # rekey responder: switch sending to it at the latest then

    def data(self, local_inner: str, outer: Addr) -> ev.ChildSa:
        return ev.ChildSa(
            self.peer_inner,
            local_inner,
            outer,
            self.aead.name,
            self.spi_in,
            self.spi_out,
            self.key_in,
            self.key_out,
        )


@dataclass
class Pending:
    """Our request in flight."""

    task: Task
    message_id: int
    packet: bytes
    natt: bool
    sent_at: float
    retransmit_at: float
    tries: int = 1
    ctx: dict[str, object] = field(default_factory=dict)


@dataclass
class Queued:
    task: Task
    ctx: dict[str, object] = field(default_factory=dict)


class SaCore:
    """An IKE SA (either role) with its CHILD SAs: state and shared machinery."""

    def __init__(
        self,
        ep: IkeEndpoint,
        handle: int,
        initiator: bool,
        spi_i: bytes,
        spi_r: bytes,
        peer_addr: Addr,
        natt: bool,
        now: float,
    ) -> None:
        self.ep = ep
        self.cfg = ep.config
        self.handle = handle
        self.initiator = initiator  # original initiator of *this* IKE SA (the I flag)
        self.spi_i = spi_i
        self.spi_r = spi_r
        self.peer_addr = peer_addr
        self.first_addr = peer_addr  # where IKE_SA_INIT came from (the half-open index key)
        self.natt = natt
        self.state = State.INIT_SENT if initiator else State.HALF_OPEN
        self.created = now
        self.started = now  # first request sent (setup timing)
        self.peer_id = ""
        self.expected_peer_id: str | None = None
        self.peer_inner: str | None = None
        self.nonce_i = b""
        self.nonce_r = b""
        self.ke: KeyExchange | None = None
        self.group: DhGroup | None = None
        self.cookie = b""
        self.init_retries = 0
        self.keys: IkeKeys | None = None
        self.aead: Aead | None = None
        self.suite = ""
        self.msg1 = b""  # IKE_SA_INIT request as sent (signed by the initiator's AUTH)
        self.msg2 = b""  # IKE_SA_INIT response
        self.children: list[Child] = []
        self.next_id_out = 0  # message ID of our next request
        self.next_id_in = 0  # message ID we expect in the peer's next request
        self.cached_response: tuple[int, bytes] | None = None
        self.pending: Pending | None = None
        self.queue: list[Queued] = []
        self.iv_counter = 0
        self.last_recv = now
        self.last_sent = now
        self.nat_local = False
        self.nat_remote = False
        self.ike_rekey_at: float | None = None
        self.retry_at: float | None = None  # rekey retry after TEMPORARY_FAILURE (a collision)
        self.retry_item: Queued | None = None
        self.expire_at: float | None = now + self.cfg.half_open_timeout if not initiator else None
        self.established_announced = False

    @property
    def our_spi(self) -> bytes:
        return self.spi_i if self.initiator else self.spi_r

    def _random(self, n: int) -> bytes:
        return self.ep.rng(n)

    def _emit(self, event: ev.Event) -> None:
        self.ep.emit(event)

    def _fail(self, reason: str, message: str, now: float) -> None:
        """The IKE SA is gone: announce its CHILD SAs and itself down, forget it."""
        if self.state == State.DEAD:
            return
        established = self.state in (State.ESTABLISHED, State.DELETING, State.REKEYED)
        was_rekeyed = self.state == State.REKEYED
        self.state = State.DEAD
        self.pending = None
        self.queue.clear()
        for child in self.children:
            self._emit(ev.ChildSaDown(self.handle, child.spi_in, child.spi_out, child.peer_inner, reason))
        self.children.clear()
        if not was_rekeyed:
            self._emit(
                ev.IkeSaDown(
                    self.handle,
                    reason,
                    message,
                    self.peer_addr,
                    self.peer_id or self.expected_peer_id or "",
                    established,
                )
            )
        self.ep.forget(self)

    def describe_peer(self) -> str:
        who = self.peer_id or self.expected_peer_id or ""
        return f"{who} at {ev.fmt_addr(self.peer_addr)}" if who else ev.fmt_addr(self.peer_addr)

    def _frame(self, ike: bytes) -> bytes:
        return NON_ESP_MARKER + ike if self.natt else ike

    def _header(self, exchange: ExchangeType, message_id: int, response: bool) -> Header:
        flags = (Flag.INITIATOR if self.initiator else 0) | (Flag.RESPONSE if response else 0)
        return Header(self.spi_i, self.spi_r, 0, exchange, flags, message_id)

    def _encrypt(self, header: Header, payloads: list[Payload]) -> bytes:
        if self.keys is None or self.aead is None:
            raise ProtocolError("no keys yet", NotifyType.INVALID_SYNTAX)
        inner = encode_payloads(payloads)
        self.iv_counter += 1
        iv = self.iv_counter.to_bytes(8, "big")
        content_len = len(iv) + len(inner) + 1 + self.aead.icv_len
        length = HEADER_LEN + GENERIC_LEN + content_len
        h = Header(
            header.spi_i, header.spi_r, PayloadType.SK, header.exchange, header.flags, header.message_id
        )
        aad = (
            h.encode(length)
            + bytes([first_type(payloads), 0])
            + (GENERIC_LEN + content_len).to_bytes(2, "big")
        )
        key = self.keys.sk_ei if self.initiator else self.keys.sk_er
        return aad + seal_sk(self.aead, key, iv, aad, inner)

    def _decrypt(self, msg: Message) -> tuple[Payload, ...]:
        sk = msg.encrypted
        if sk is None or self.keys is None or self.aead is None:
            raise ProtocolError("expected an encrypted (SK) payload", NotifyType.INVALID_SYNTAX)
        key = self.keys.sk_er if self.initiator else self.keys.sk_ei
        inner = open_sk(self.aead, key, sk.aad, sk.content)
        outer = msg.payloads[:-1]
        return (*outer, *parse_payloads(sk.first_payload, inner, allow_sk=False))

    def _log(
        self,
        direction: str,
        exchange: int,
        message_id: int,
        response: bool,
        payloads: tuple[Payload, ...] | list[Payload],
        length: int,
        retrans: bool = False,
    ) -> None:
        if not self.cfg.log_messages:
            return
        names = tuple(p.type.name if isinstance(p, Notify) else p.PTYPE.name for p in payloads)
        self._emit(
            ev.MessageLogged(
                self.handle,
                direction,
                ExchangeType(exchange).name,
                message_id,
                response,
                names,
                self.peer_addr,
                length,
                retrans,
            )
        )

    def _send_request(
        self,
        task: Task,
        exchange: ExchangeType,
        payloads: list[Payload],
        now: float,
        ctx: dict[str, object] | None = None,
    ) -> None:
        mid = self.next_id_out
        header = self._header(exchange, mid, response=False)
        ike = (
            encode_message(header, payloads)
            if exchange == ExchangeType.IKE_SA_INIT
            else self._encrypt(header, payloads)
        )
        if exchange == ExchangeType.IKE_SA_INIT:
            self.msg1 = ike
        self.pending = Pending(
            task, mid, self._frame(ike), self.natt, now, now + self.cfg.retransmit_timeout, ctx=ctx or {}
        )
        self._log("out", exchange, mid, False, payloads, len(ike))
        self._transmit(self.pending.packet, self.natt, now)

    def _send_response(
        self,
        exchange: ExchangeType,
        message_id: int,
        payloads: list[Payload],
        now: float,
        plain: bool = False,
    ) -> None:
        header = self._header(exchange, message_id, response=True)
        ike = encode_message(header, payloads) if plain else self._encrypt(header, payloads)
        packet = self._frame(ike)
        self.cached_response = (message_id, packet)
        self._log("out", exchange, message_id, True, payloads, len(ike))
        self._transmit(packet, self.natt, now)

    def _transmit(self, packet: bytes, natt: bool, now: float, to: Addr | None = None) -> None:
        self.last_sent = now
        self.ep.send(packet, to or self.peer_addr, natt)

    def enqueue(self, task: Task, now: float, **ctx: object) -> None:
        if self.state == State.DEAD:
            return
        self.queue.append(Queued(task, dict(ctx)))
        self._pump(now)

    def _pump(self, now: float) -> None:
        while (
            self.pending is None
            and self.queue
            and self.state in (State.ESTABLISHED, State.REKEYED, State.DELETING)
        ):
            item = self.queue.pop(0)
            starter: Callable[[Queued, float], None] = {
                Task.CHILD_REKEY: self._start_child_rekey,
                Task.IKE_REKEY: self._start_ike_rekey,
                Task.DELETE_CHILD: self._start_delete_child,
                Task.DELETE_IKE: self._start_delete_ike,
                Task.DPD: self._start_dpd,
            }[item.task]
            starter(item, now)

    def _established(self, now: float) -> None:
        self.state = State.ESTABLISHED
        self.expire_at = None
        self.ep.established(self)
        if self.cfg.ike_rekey_time is not None:
            self.ike_rekey_at = now + self._jitter(self.cfg.ike_rekey_time)
        if not self.established_announced:
            self.established_announced = True
            self._emit(
                ev.IkeSaUp(
                    self.handle,
                    self.peer_addr,
                    self.peer_id,
                    self.initiator,
                    self.suite,
                    self.spi_i,
                    self.spi_r,
                    self.nat_local,
                    self.nat_remote,
                )
            )

    def _activate_outbound(self, child: Child) -> None:
        """A rekey responder's new CHILD SA starts carrying our traffic (RFC 7296 §2.8)."""
        if child.outbound_at is not None:
            child.outbound_at = None
            self._emit(ev.ChildSaOutbound(self.handle, child.data(self.cfg.local_inner, self.peer_addr)))

    def _jitter(self, seconds: float) -> float:
        return seconds * (0.9 + 0.1 * self._random(1)[0] / 255)

    def _retry_later(self, item: Queued, now: float) -> None:
        """The peer was busy (a rekey collision, RFC 7296 §2.25): try again in 1–3 s."""
        self.retry_item = item
        self.retry_at = now + 1.0 + 2.0 * self._random(1)[0] / 255

    def receive(self, msg: Message, addr: Addr, natt: bool, now: float) -> None:
        if self.state == State.DEAD:
            return
        h = msg.header
        if h.is_response:
            return self._receive_response(msg, addr, natt, now)
        if h.from_initiator == self.initiator:
            return  # a request claiming our role
        if (
            h.message_id == self.next_id_in - 1
            and self.cached_response is not None
            and self.cached_response[0] == h.message_id
        ):
            self._log("in", h.exchange, h.message_id, False, msg.payloads, len(msg.raw), True)
            self._transmit(self.cached_response[1], self.natt, now, to=addr)  # §2.11: to the source
            return
        if h.message_id != self.next_id_in:
            self.ep.drop(self.handle, f"request message ID {h.message_id}, expected {self.next_id_in}", addr)
            return
        if h.exchange == ExchangeType.IKE_SA_INIT:
            return
        try:
            payloads = self._decrypt(msg)
        except ProtocolError as exc:  # unsupported critical payload inside SK: answer it (§2.5)
            self._authenticated(addr, natt, now)
            self.next_id_in += 1
            self._send_response(h.exchange, h.message_id, [Notify(NotifyType(exc.notify), exc.data)], now)
            return
        self._authenticated(addr, natt, now)
        self.next_id_in += 1
        self._log("in", h.exchange, h.message_id, False, payloads, len(msg.raw))
        handler = {
            ExchangeType.IKE_AUTH: self._on_auth_request,
            ExchangeType.CREATE_CHILD_SA: self._on_create_child_request,
            ExchangeType.INFORMATIONAL: self._on_informational_request,
        }.get(h.exchange)
        if handler is None:
            self._send_response(h.exchange, h.message_id, [Notify(NotifyType.INVALID_SYNTAX)], now)
            return
        if h.exchange == ExchangeType.IKE_AUTH and self.state != State.HALF_OPEN:
            self._send_response(h.exchange, h.message_id, [Notify(NotifyType.INVALID_SYNTAX)], now)
            return
        if h.exchange != ExchangeType.IKE_AUTH and self.state == State.HALF_OPEN:
            return
        try:
            handler(msg, payloads, now)
        except ProtocolError as exc:
            if self.cached_response is None or self.cached_response[0] != h.message_id:
                self._send_response(h.exchange, h.message_id, [Notify(NotifyType(exc.notify), exc.data)], now)
            if self.state == State.HALF_OPEN:
                self._fail(
                    ev.PROTOCOL_ERROR, f"initiator {self.describe_peer()} broke the protocol: {exc}", now
                )
        self._pump(now)

    def _authenticated(self, addr: Addr, natt: bool, now: float) -> None:
        """An integrity-checked message arrived: liveness, and follow the peer's address (§2.23)."""
        self.last_recv = now
        if addr != self.peer_addr or natt != self.natt:
            moved = addr != self.peer_addr
            self.peer_addr, self.natt = addr, natt
            if moved and self.state in (State.ESTABLISHED, State.REKEYED) and self.children:
                self._emit(ev.PeerAddressChanged(self.handle, addr))

    def _receive_response(self, msg: Message, addr: Addr, natt: bool, now: float) -> None:
        pending = self.pending
        h = msg.header
        if pending is None or h.message_id != pending.message_id:
            return
        if h.from_initiator == self.initiator:
            return
        if pending.task == Task.INIT:
            if h.exchange != ExchangeType.IKE_SA_INIT:
                return
            self.last_recv = now
            self._log("in", h.exchange, h.message_id, True, msg.payloads, len(msg.raw))
            self.next_id_out = 1
            try:
                self._on_init_response(msg, now)
            except ProtocolError as exc:
                self._fail(
                    ev.PROTOCOL_ERROR, f"{self.describe_peer()} sent a bad IKE_SA_INIT reply: {exc}", now
                )
            return
        payloads = self._decrypt(msg)  # IntegrityError/DecodeError: dropped by the endpoint
        self._authenticated(addr, natt, now)
        self._log("in", h.exchange, h.message_id, True, payloads, len(msg.raw))
        self.next_id_out += 1
        self.pending = None
        try:
            if pending.task == Task.AUTH:
                self._on_auth_response(pending, payloads, now)
            elif pending.task == Task.CHILD_REKEY:
                self._on_child_rekey_response(pending, payloads, now)
            elif pending.task == Task.IKE_REKEY:
                self._on_ike_rekey_response(pending, payloads, now)
            else:
                self._on_informational_response(pending, payloads, now)
        except ProtocolError as exc:
            self.pending = None
            self._queue_delete_and_fail(
                ev.PROTOCOL_ERROR, f"{self.describe_peer()} sent a bad {h.exchange.name} reply: {exc}", now
            )
        self._pump(now)

    def next_timer(self) -> float | None:
        times: list[float] = []
        if self.state == State.DEAD:
            return None
        if self.pending is not None:
            times.append(self.pending.retransmit_at)
        if self.expire_at is not None:
            times.append(self.expire_at)
        if self.state == State.ESTABLISHED and self.pending is None:
            if self.cfg.dpd_interval is not None:
                times.append(self.last_recv + self.cfg.dpd_interval)
            if self.ike_rekey_at is not None:
                times.append(self.ike_rekey_at)
            if self.retry_at is not None:
                times.append(self.retry_at)
            times += [c.rekey_at for c in self.children if c.rekey_at is not None and not c.superseded]
        times += [c.outbound_at for c in self.children if c.outbound_at is not None]
        if self.state == State.ESTABLISHED and self.nat_local and self.cfg.keepalive_interval is not None:
            times.append(self.last_sent + self.cfg.keepalive_interval)
        return min(times) if times else None

    def on_timer(self, now: float) -> None:
        if self.state == State.DEAD:
            return
        if self.expire_at is not None and now >= self.expire_at:
            if self.state == State.REKEYED:
                self.state = State.DEAD
                self.ep.forget(self)
                return
            if self.state == State.HALF_OPEN:
                self.state = State.DEAD
                self.ep.forget(self)
                return
        p = self.pending
        if p is not None and now >= p.retransmit_at:
            if p.tries >= self.cfg.retransmit_tries:
                return self._on_timeout(p, now)
            p.tries += 1
            p.retransmit_at = now + self.cfg.retransmit_timeout * self.cfg.retransmit_base ** (p.tries - 1)
            self._transmit(p.packet, p.natt, now)
        for child in self.children:
            if child.outbound_at is not None and now >= child.outbound_at:
                self._activate_outbound(child)
        if self.state == State.ESTABLISHED and self.pending is None and not self.queue:
            if self.retry_at is not None and now >= self.retry_at:
                self.retry_at = None
                if self.retry_item is not None:
                    self.queue.append(self.retry_item)
                    self.retry_item = None
                    self._pump(now)
            elif self.ike_rekey_at is not None and now >= self.ike_rekey_at:
                self.ike_rekey_at = None
                self.enqueue(Task.IKE_REKEY, now)
            elif due := [
                c for c in self.children if c.rekey_at is not None and now >= c.rekey_at and not c.superseded
            ]:
                due[0].rekey_at = None
                self.enqueue(Task.CHILD_REKEY, now, child=due[0])
            elif self.cfg.dpd_interval is not None and now >= self.last_recv + self.cfg.dpd_interval:
                self.enqueue(Task.DPD, now)
        if (
            self.state == State.ESTABLISHED
            and self.nat_local
            and self.cfg.keepalive_interval is not None
            and now >= self.last_sent + self.cfg.keepalive_interval
        ):
            self._transmit(b"\xff", True, now)
        return None

    def _on_timeout(self, p: Pending, now: float) -> None:
        waited = now - p.sent_at
        where = ev.fmt_addr(self.peer_addr)
        if p.task in (Task.INIT, Task.AUTH):
            port = self.peer_addr[1]
            return self._fail(
                ev.TIMEOUT,
                f"no answer from {where} after {p.tries} tries over {waited:.1f} s — "
                f"the peer is down or UDP {port} is blocked on the way",
                now,
            )
        if p.task == Task.DELETE_IKE:
            if self.state == State.REKEYED:
                self.state = State.DEAD
                self.ep.forget(self)
                return None
            return self._fail(
                str(p.ctx.get("reason", ev.CLOSED)), str(p.ctx.get("message", "tunnel closed")), now
            )
        return self._fail(
            ev.DEAD_PEER,
            f"peer {self.describe_peer()} stopped answering ({p.task.value}, "
            f"{p.tries} tries over {waited:.1f} s) — tunnel down",
            now,
        )

    def rekey_child(self, now: float, pfs: DhGroup | bool | None = None) -> None:
        child = next((c for c in self.children if not c.superseded), None)
        if child is None:
            return
        ctx: dict[str, object] = {"child": child}
        if pfs is False:
            ctx["pfs"] = None
        elif pfs is not None and pfs is not True:
            ctx["pfs"] = pfs
        elif pfs is True:
            ctx["pfs"] = self.group or self.cfg.groups[0]
        self.enqueue(Task.CHILD_REKEY, now, **ctx)

    def rekey_ike(self, now: float) -> None:
        self.enqueue(Task.IKE_REKEY, now)

    def delete_child(self, now: float) -> None:
        for child in [c for c in self.children if not c.superseded]:
            self.enqueue(Task.DELETE_CHILD, now, child=child, reason=ev.CLOSED)

    def close(self, now: float, reason: str = ev.CLOSED, message: str = "tunnel closed") -> None:
        if self.state in (State.ESTABLISHED, State.DELETING):
            self.queue = [q for q in self.queue if q.task in (Task.DELETE_CHILD,)]
            self.enqueue(Task.DELETE_IKE, now, reason=reason, message=message)
        else:
            self._fail(reason, message, now)

    def _queue_delete_and_fail(self, reason: str, message: str, now: float) -> None:
        """Tell the peer we drop the IKE SA, and announce the failure now."""
        self.pending = None
        self.queue.clear()
        if self.keys is not None and self.state in (State.AUTH_SENT, State.ESTABLISHED):
            header = self._header(ExchangeType.INFORMATIONAL, self.next_id_out, response=False)
            self._transmit(self._frame(self._encrypt(header, [Delete(ProtocolId.IKE)])), self.natt, now)
        self._fail(reason, message, now)

    @staticmethod
    def _get(payloads: tuple[Payload, ...], kind: type[P]) -> P | None:
        return next((p for p in payloads if isinstance(p, kind)), None)

    def _need(self, payloads: tuple[Payload, ...], kind: type[P]) -> P:
        found = self._get(payloads, kind)
        if found is None:
            raise ProtocolError(f"missing {kind.__name__} payload", NotifyType.INVALID_SYNTAX)
        return found

    @staticmethod
    def _get_notify(payloads: tuple[Payload, ...], type_: NotifyType) -> Notify | None:
        return next((p for p in payloads if isinstance(p, Notify) and p.type == type_), None)

    @staticmethod
    def _notify_in(payloads: tuple[Payload, ...], type_: NotifyType) -> bool:
        return any(isinstance(p, Notify) and p.type == type_ for p in payloads)

    @staticmethod
    def _first_error(payloads: tuple[Payload, ...]) -> Notify | None:
        return next((p for p in payloads if isinstance(p, Notify) and p.type.is_error), None)

    def _error_text(self, error: Notify, what: str) -> tuple[str, str]:
        peer = self.describe_peer()
        if error.type == NotifyType.NO_PROPOSAL_CHOSEN:
            return (
                ev.NO_PROPOSAL_CHOSEN,
                f"{peer} accepts none of our {what} proposals "
                f"({', '.join(self.cfg.ike_encr if what == 'IKE' else self.cfg.esp_encr)}"
                + (", PRF HMAC-SHA2-256, groups 31/19/14" if what == "IKE" else "")
                + ") — allow one of them on the peer",
            )
        if error.type == NotifyType.TS_UNACCEPTABLE:
            return (
                ev.TS_UNACCEPTABLE,
                f"{peer} refused the traffic selectors {self.cfg.local_inner} ↔ "
                f"{self.peer_inner} — its idea of our ULA or its own differs from the account's",
            )
        if error.type == NotifyType.AUTHENTICATION_FAILED:
            return (
                ev.AUTHENTICATION_FAILED,
                f"peer {peer} refused our PSK — the two hosts hold different account files",
            )
        return (ev.PEER_ERROR, f"{peer} answered with error {error.type.name}")

    def _fail_on_error(self, error: Notify, what: str, now: float) -> None:
        self._fail(*self._error_text(error, what), now)

    # ------------------------------------------------------------------ provided by the exchange mixins
    def _send_auth(self, now: float) -> None:
        raise NotImplementedError

    def _on_init_response(self, msg: Message, now: float) -> None:
        raise NotImplementedError

    def _on_auth_response(self, pending: Pending, payloads: tuple[Payload, ...], now: float) -> None:
        raise NotImplementedError

    def _on_auth_request(self, msg: Message, payloads: tuple[Payload, ...], now: float) -> None:
        raise NotImplementedError

    def _on_create_child_request(self, msg: Message, payloads: tuple[Payload, ...], now: float) -> None:
        raise NotImplementedError

    def _on_informational_request(self, msg: Message, payloads: tuple[Payload, ...], now: float) -> None:
        raise NotImplementedError

    def _on_child_rekey_response(self, pending: Pending, payloads: tuple[Payload, ...], now: float) -> None:
        raise NotImplementedError

    def _on_ike_rekey_response(self, pending: Pending, payloads: tuple[Payload, ...], now: float) -> None:
        raise NotImplementedError

    def _on_informational_response(self, pending: Pending, payloads: tuple[Payload, ...], now: float) -> None:
        raise NotImplementedError

    def _start_child_rekey(self, item: Queued, now: float) -> None:
        raise NotImplementedError

    def _start_ike_rekey(self, item: Queued, now: float) -> None:
        raise NotImplementedError

    def _start_delete_child(self, item: Queued, now: float) -> None:
        raise NotImplementedError

    def _start_delete_ike(self, item: Queued, now: float) -> None:
        raise NotImplementedError

    def _start_dpd(self, item: Queued, now: float) -> None:
        raise NotImplementedError
