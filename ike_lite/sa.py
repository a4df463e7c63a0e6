"""One IKE SA and its CHILD SAs: the exchanges of RFC 7296 as a sans-I/O state machine.

How this works
--------------
An :class:`IkeSa` is driven by its :class:`~ike_lite.endpoint.IkeEndpoint`: it receives
parsed messages (``receive``), timer ticks (``on_timer``) and local commands
(``rekey_child``, ``rekey_ike``, ``delete_child``, ``close``); it writes datagrams and
events back through the endpoint. Like strongSwan's task manager it owns both message-ID
counters (§2.2): at most one request of ours is in flight (window 1); further local work
waits in ``queue`` as *tasks*. A request is retransmitted with exponential backoff until
its response arrives or the tries run out (→ ``timeout`` / ``dead_peer``). The peer's
requests are processed in order; the last response is cached and re-sent when the
request is retransmitted (§2.1).

Tasks (one handler pair per exchange, as strongSwan's ``tasks/``):

========================  ===============================  ================================
task                      our request                      handler of the response
========================  ===============================  ================================
INIT (initiator)          IKE_SA_INIT                      ``_on_init_response``
AUTH (initiator)          IKE_AUTH + first CHILD SA        ``_on_auth_response``
CHILD_REKEY               CREATE_CHILD_SA + REKEY_SA       ``_on_child_rekey_response``
IKE_REKEY                 CREATE_CHILD_SA (IKE proposal)   ``_on_ike_rekey_response``
DELETE_CHILD / DELETE_IKE INFORMATIONAL + Delete           ``_on_delete_response``
DPD                       empty INFORMATIONAL              (liveness only)
========================  ===============================  ================================

Peer requests go to ``_REQUEST_HANDLERS`` by exchange type. Make-before-break: a rekeyed
CHILD SA is announced (``ChildSaUp`` with ``rekey_of``) before the old one is deleted; an
IKE SA rekey moves the CHILD SAs to a new :class:`IkeSa` with the same handle and the old
SA lingers in state REKEYED until its Delete exchange is done.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from ike_lite import events as ev
from ike_lite.const import (
    NON_ESP_MARKER,
    AuthMethod,
    DhGroup,
    ExchangeType,
    Flag,
    IdType,
    NotifyType,
    PayloadType,
    ProtocolId,
    TransformType,
)
from ike_lite.crypto import PRIVATE_RANDOM_LEN, Aead, KeyExchange, open_sk, seal_sk
from ike_lite.errors import ProtocolError
from ike_lite.keys import (
    IkeKeys,
    child_keymat,
    derive_ike_keys,
    natd_hash,
    psk_auth,
    skeyseed_initial,
    skeyseed_rekey,
)
from ike_lite.proposals import Choice, accept_reply, choose, describe, esp_proposal, ike_proposal
from ike_lite.wire import (
    GENERIC_LEN,
    HEADER_LEN,
    KE,
    SA,
    Auth,
    Delete,
    Header,
    Identification,
    Message,
    Nonce,
    Notify,
    Payload,
    Proposal,
    TrafficSelector,
    TrafficSelectors,
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


class IkeSa:
    """An IKE SA (either role) with its CHILD SAs."""

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

    # ------------------------------------------------------------------ basics
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

    # ------------------------------------------------------------------ sending
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

    def _transmit(self, packet: bytes, natt: bool, now: float) -> None:
        self.last_sent = now
        self.ep.send(packet, self.peer_addr, natt)

    # ------------------------------------------------------------------ task queue
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

    # ------------------------------------------------------------------ IKE_SA_INIT (initiator)
    def start(self, peer_id: str | None, peer_inner: str, now: float) -> None:
        self.expected_peer_id = peer_id
        self.peer_inner = peer_inner
        self.nonce_i = self._random(self.cfg.nonce_len)
        self.group = self.cfg.groups[0]
        self.started = now
        self._send_init(now)

    def _natd(self, for_peer: bool) -> Notify:
        """NAT_DETECTION_DESTINATION_IP (the peer's address) or _SOURCE_IP (ours, maybe faked)."""
        if for_peer:
            host, port = self.peer_addr
            return Notify(
                NotifyType.NAT_DETECTION_DESTINATION_IP, natd_hash(self.spi_i, self.spi_r, host, port)
            )
        local_port = 4500 if self.natt else 500
        if self.cfg.local_addr is None or self.cfg.force_encap:
            data = natd_hash(self.spi_i, self.spi_r, "0.0.0.0", 0)  # noqa: S104 - never matches
        else:
            data = natd_hash(self.spi_i, self.spi_r, self.cfg.local_addr, local_port)
        return Notify(NotifyType.NAT_DETECTION_SOURCE_IP, data)

    def _send_init(self, now: float) -> None:
        assert self.group is not None
        self.ke = KeyExchange(self.group, self._random(PRIVATE_RANDOM_LEN[self.group]))
        payloads: list[Payload] = []
        if self.cookie:
            payloads.append(Notify(NotifyType.COOKIE, self.cookie))
        self.offered_ike = ike_proposal(self.cfg.ike_encr, self.cfg.groups)
        payloads += [
            SA((self.offered_ike,)),
            KE(self.group, self.ke.public),
            Nonce(self.nonce_i),
            self._natd(False),
            self._natd(True),
        ]
        self.state = State.INIT_SENT
        self.next_id_out = 0
        self._send_request(Task.INIT, ExchangeType.IKE_SA_INIT, payloads, now)

    def _on_init_response(self, msg: Message, now: float) -> None:
        cookie = msg.notify(NotifyType.COOKIE)
        if cookie is not None:
            if self.init_retries >= 3:
                return self._fail(ev.PEER_ERROR, f"{self.describe_peer()} keeps asking for cookies", now)
            self.init_retries += 1
            self.cookie = cookie.data
            self.pending = None
            return self._send_init(now)
        invalid_ke = msg.notify(NotifyType.INVALID_KE_PAYLOAD)
        if invalid_ke is not None:
            wanted = int.from_bytes(invalid_ke.data[:2], "big") if len(invalid_ke.data) >= 2 else 0
            if wanted in self.cfg.groups and wanted != self.group and self.init_retries < 3:
                self.init_retries += 1
                self.group = DhGroup(wanted)
                self.pending = None
                return self._send_init(now)
            return self._fail(
                ev.INVALID_KE_PAYLOAD,
                f"{self.describe_peer()} wants key-exchange group {wanted}, which btmm "
                "does not allow (only 31, 19, 14)",
                now,
            )
        error = self._first_error(msg.payloads)
        if error is not None:
            return self._fail_on_error(error, "IKE", now)
        sa, ke, nonce = (
            self._need(msg.payloads, SA),
            self._need(msg.payloads, KE),
            self._need(msg.payloads, Nonce),
        )
        choice = accept_reply(sa.proposals, self.offered_ike, self.cfg.ike_encr, self.cfg.groups, ke.group)
        if choice is None or self.ke is None or ke.group != self.group:
            return self._fail(
                ev.NO_PROPOSAL_CHOSEN,
                f"{self.describe_peer()} chose an IKE proposal we did not offer "
                f"({describe(sa.proposals[0])})",
                now,
            )
        self.spi_r = msg.header.spi_r
        self.nonce_r = nonce.data
        self.msg2 = msg.raw
        self._derive_initial(choice, self.ke.shared(ke.data))
        self._check_natd(msg.payloads)
        self.pending = None
        if not self.natt:  # RFC 7296 §2.23: float to 4500; btmm always encapsulates
            self.natt = True
            if self.peer_addr[1] == 500:
                self.peer_addr = (self.peer_addr[0], 4500)
        self._send_auth(now)

    def _derive_initial(self, choice: Choice, shared: bytes) -> None:
        self.aead = choice.aead
        self.suite = choice.ike_suite()
        seed = skeyseed_initial(self.nonce_i, self.nonce_r, shared)
        self.keys = derive_ike_keys(
            seed, self.nonce_i, self.nonce_r, self.spi_i, self.spi_r, choice.aead.key_len
        )

    def _check_natd(self, payloads: tuple[Payload, ...]) -> None:
        src = [
            n.data for n in payloads if isinstance(n, Notify) and n.type == NotifyType.NAT_DETECTION_SOURCE_IP
        ]
        dst = [
            n.data
            for n in payloads
            if isinstance(n, Notify) and n.type == NotifyType.NAT_DETECTION_DESTINATION_IP
        ]
        host, port = self.peer_addr
        self.nat_remote = bool(src) and natd_hash(self.spi_i, self.spi_r, host, port) not in src
        if self.cfg.local_addr is None:
            self.nat_local = True  # unknown: keepalives cost one byte per interval
        else:
            mine = natd_hash(self.spi_i, self.spi_r, self.cfg.local_addr, 4500 if self.natt else 500)
            self.nat_local = bool(dst) and mine not in dst

    # ------------------------------------------------------------------ IKE_SA_INIT (responder)
    def respond_init(self, msg: Message, choice: Choice, ke: KE, nonce: Nonce, now: float) -> None:
        self.nonce_i = nonce.data
        self.nonce_r = self._random(self.cfg.nonce_len)
        self.group = choice.group
        assert choice.group is not None
        self.ke = KeyExchange(choice.group, self._random(PRIVATE_RANDOM_LEN[choice.group]))
        shared = self.ke.shared(ke.data)
        self.msg1 = msg.raw
        payloads: list[Payload] = [
            SA((choice.proposal,)),
            KE(choice.group, self.ke.public),
            Nonce(self.nonce_r),
            self._natd(False),
            self._natd(True),
        ]
        self._check_natd(msg.payloads)
        self._derive_initial(choice, shared)
        self.next_id_in = 1
        header = self._header(ExchangeType.IKE_SA_INIT, 0, response=True)
        self.msg2 = encode_message(header, payloads)
        packet = self._frame(self.msg2)
        self.cached_response = (0, packet)
        self._log("in", ExchangeType.IKE_SA_INIT, 0, False, msg.payloads, len(msg.raw))
        self._log("out", ExchangeType.IKE_SA_INIT, 0, True, payloads, len(self.msg2))
        self._transmit(packet, self.natt, now)

    # ------------------------------------------------------------------ IKE_AUTH
    def _id_payload(self, initiator: bool) -> Identification:
        return Identification(initiator, IdType.FQDN, self.cfg.local_id.encode())

    def _ts_pair(self) -> tuple[TrafficSelectors, TrafficSelectors]:
        """(TSi, TSr) from the initiator's point of view of this exchange."""
        assert self.peer_inner is not None
        ours = TrafficSelectors(True, (TrafficSelector.host(self.cfg.local_inner),))
        theirs = TrafficSelectors(False, (TrafficSelector.host(self.peer_inner),))
        return ours, theirs

    def _send_auth(self, now: float) -> None:
        assert self.keys is not None
        idi = self._id_payload(True)
        auth = psk_auth(self.cfg.psk, self.msg1, self.nonce_r, self.keys.sk_pi, idi.body())
        spi_in = self.ep.new_esp_spi()
        self.offered_esp = esp_proposal(self.cfg.esp_encr, spi_in)
        tsi, tsr = self._ts_pair()
        payloads: list[Payload] = [idi]
        if self.expected_peer_id:
            payloads.append(Identification(False, IdType.FQDN, self.expected_peer_id.encode()))
        payloads += [
            Auth(AuthMethod.PSK, auth),
            Notify(NotifyType.INITIAL_CONTACT),
            SA((self.offered_esp,)),
            tsi,
            tsr,
        ]
        self.state = State.AUTH_SENT
        self._send_request(Task.AUTH, ExchangeType.IKE_AUTH, payloads, now, {"spi_in": spi_in})

    def _on_auth_response(self, msg: Message, payloads: tuple[Payload, ...], now: float) -> None:
        assert self.keys is not None and self.pending is not None
        spi_in = self.pending.ctx["spi_in"]
        assert isinstance(spi_in, bytes)
        self.pending = None
        if self._notify_in(payloads, NotifyType.AUTHENTICATION_FAILED):
            return self._fail(
                ev.AUTHENTICATION_FAILED,
                f"peer {self.describe_peer()} refused our PSK — the two hosts hold different account files",
                now,
            )
        auth_p = self._get(payloads, Auth)
        idr = self._get(payloads, Identification)
        if auth_p is None or idr is None:
            error = self._first_error(payloads)
            if error is not None:
                return self._fail_on_error(error, "IKE", now)
            raise ProtocolError("IKE_AUTH response without IDr/AUTH", NotifyType.INVALID_SYNTAX)
        self.peer_id = idr.text()
        expected = psk_auth(self.cfg.psk, self.msg2, self.nonce_i, self.keys.sk_pr, idr.body())
        if auth_p.method != AuthMethod.PSK or auth_p.data != expected:
            self._queue_delete_and_fail(
                ev.AUTHENTICATION_FAILED,
                f"{self.describe_peer()} answered with an AUTH that does not match our PSK — the "
                "two hosts hold different account files",
                now,
            )
            return None
        if self.expected_peer_id and self.peer_id != self.expected_peer_id:
            self._queue_delete_and_fail(
                ev.AUTHENTICATION_FAILED,
                f"peer at {ev.fmt_addr(self.peer_addr)} identified as {self.peer_id}, expected "
                f"{self.expected_peer_id} — the tunnel-endpoint record points at another host",
                now,
            )
            return None
        self._established(now)
        error = self._first_error(payloads)
        if error is not None:
            self._queue_delete_and_fail(*self._error_text(error, "ESP"), now)
            return None
        child, reason = self._accept_child_reply(
            payloads, spi_in, self.offered_esp, self.nonce_i, self.nonce_r, b"", None, now
        )
        if child is None:
            self._queue_delete_and_fail(*reason, now)
            return None
        self._add_child(child, None, now, setup=now - self.started)
        return None

    def _on_auth_request(self, msg: Message, payloads: tuple[Payload, ...], now: float) -> None:
        assert self.keys is not None
        idi, auth_p = self._get(payloads, Identification), self._get(payloads, Auth)
        if idi is None or auth_p is None or not idi.initiator:
            raise ProtocolError("IKE_AUTH request without IDi/AUTH", NotifyType.INVALID_SYNTAX)
        self.peer_id = idi.text()
        expected = psk_auth(self.cfg.psk, self.msg1, self.nonce_r, self.keys.sk_pi, idi.body())
        allowed = self.cfg.accept_peer is None or self.cfg.accept_peer(self.peer_id)
        if auth_p.method != AuthMethod.PSK or auth_p.data != expected or not allowed:
            self._send_response(
                ExchangeType.IKE_AUTH, msg.header.message_id, [Notify(NotifyType.AUTHENTICATION_FAILED)], now
            )
            why = (
                "presented a PSK that does not match ours — the two hosts hold different account files"
                if allowed
                else "is not allowed to connect"
            )
            return self._fail(ev.AUTHENTICATION_FAILED, f"initiator {self.describe_peer()} {why}", now)
        idr = self._id_payload(False)
        auth = psk_auth(self.cfg.psk, self.msg2, self.nonce_i, self.keys.sk_pr, idr.body())
        reply: list[Payload] = [idr, Auth(AuthMethod.PSK, auth)]
        child_payloads, child, failure = self._respond_child(
            payloads, self.nonce_i, self.nonce_r, None, now, ignore_dh=True
        )
        reply += child_payloads
        self._send_response(ExchangeType.IKE_AUTH, msg.header.message_id, reply, now)
        self._established(now)
        if child is not None:
            self._add_child(child, None, now, setup=now - self.created)
        elif failure is not None:
            self._emit(ev.ChildSaFailed(self.handle, failure[0], failure[1]))
        return None

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

    def _jitter(self, seconds: float) -> float:
        return seconds * (0.9 + 0.1 * self._random(1)[0] / 255)

    # ------------------------------------------------------------------ CHILD SA negotiation helpers
    def _respond_child(
        self,
        payloads: tuple[Payload, ...],
        nonce_i: bytes,
        nonce_r: bytes,
        ke_local: KeyExchange | None,
        now: float,
        ignore_dh: bool,
        peer_ke: KE | None = None,
    ) -> tuple[list[Payload], Child | None, tuple[str, str] | None]:
        """Responder side of a CHILD SA: (payloads to answer, the child, failure)."""
        sa_p = self._get(payloads, SA)
        tsi = next((p for p in payloads if isinstance(p, TrafficSelectors) and p.initiator), None)
        tsr = next((p for p in payloads if isinstance(p, TrafficSelectors) and not p.initiator), None)
        if sa_p is None or tsi is None or tsr is None:
            return (
                [Notify(NotifyType.NO_PROPOSAL_CHOSEN)],
                None,
                (ev.NO_PROPOSAL_CHOSEN, f"{self.describe_peer()} sent no CHILD SA proposal"),
            )
        proposals = sa_p.proposals
        if ignore_dh:
            proposals = tuple(
                Proposal(
                    p.number, p.protocol, p.spi, tuple(t for t in p.transforms if t.type != TransformType.DH)
                )
                for p in proposals
            )
        spi_in = self.ep.new_esp_spi()
        choice, _ = choose(
            proposals,
            ProtocolId.ESP,
            self.cfg.esp_encr,
            self.cfg.groups,
            peer_ke.group if peer_ke else None,
            spi_in,
            require_group=False,
        )
        if choice is None:
            offered = "; ".join(describe(p) for p in sa_p.proposals)
            return (
                [Notify(NotifyType.NO_PROPOSAL_CHOSEN)],
                None,
                (
                    ev.NO_PROPOSAL_CHOSEN,
                    f"{self.describe_peer()} offered no acceptable ESP proposal "
                    f"({offered}) — btmm accepts only AES-GCM-256 or ChaCha20-Poly1305",
                ),
            )
        narrowed = self._narrow(tsi, tsr)
        if narrowed is None:
            theirs = ", ".join(ts.describe() for ts in tsi.selectors)
            ours = ", ".join(ts.describe() for ts in tsr.selectors)
            return (
                [Notify(NotifyType.TS_UNACCEPTABLE)],
                None,
                (
                    ev.TS_UNACCEPTABLE,
                    f"{self.describe_peer()} proposed traffic selectors {theirs} → "
                    f"{ours}, which do not cover its ULA and ours ({self.cfg.local_inner})",
                ),
            )
        peer_inner = narrowed
        peer_spi = next(p.spi for p in sa_p.proposals if p.number == choice.proposal.number)
        if len(peer_spi) != 4:
            raise ProtocolError("ESP proposal without a 4-byte SPI", NotifyType.INVALID_SYNTAX)
        shared = b""
        reply: list[Payload] = [SA((choice.proposal,))]
        if not ignore_dh:  # CREATE_CHILD_SA carries Nr (and KEr with PFS); IKE_AUTH does not
            reply.append(Nonce(nonce_r))
        if choice.group is not None and peer_ke is not None:
            ke_local = KeyExchange(choice.group, self._random(PRIVATE_RANDOM_LEN[choice.group]))
            shared = ke_local.shared(peer_ke.data)
            reply.append(KE(choice.group, ke_local.public))
        assert self.keys is not None
        key_ir, key_ri = child_keymat(self.keys.sk_d, nonce_i, nonce_r, choice.aead.key_len, shared)
        child = Child(spi_in, peer_spi, choice.aead, key_ir, key_ri, peer_inner, now)
        self.peer_inner = peer_inner
        reply += [
            TrafficSelectors(True, (TrafficSelector.host(peer_inner),)),
            TrafficSelectors(False, (TrafficSelector.host(self.cfg.local_inner),)),
        ]
        return reply, child, None

    def _narrow(self, tsi: TrafficSelectors, tsr: TrafficSelectors) -> str | None:
        """RFC 7296 §2.9 narrowing to (peer ULA /128, our ULA /128); None = TS_UNACCEPTABLE."""
        usable_r = [ts for ts in tsr.selectors if ts.is_all_traffic and ts.contains(self.cfg.local_inner)]
        if not usable_r:
            return None
        wanted = self.peer_inner
        if wanted is None and self.cfg.peer_inner_for is not None:
            wanted = self.cfg.peer_inner_for(self.peer_id)
        candidates = [ts for ts in tsi.selectors if ts.is_all_traffic and len(ts.start) == 16]
        if self.cfg.peer_prefix is not None:
            net = ipaddress.IPv6Network(self.cfg.peer_prefix, strict=False)
            candidates = [
                ts
                for ts in candidates
                if ipaddress.IPv6Address(ts.start) in net and ipaddress.IPv6Address(ts.end) in net
            ]
        if wanted is not None:
            return wanted if any(ts.contains(wanted) for ts in candidates) else None
        for ts in candidates:
            if ts.start == ts.end:
                return str(ipaddress.IPv6Address(ts.start))
        return None

    def _accept_child_reply(
        self,
        payloads: tuple[Payload, ...],
        spi_in: bytes,
        offered: Proposal,
        nonce_i: bytes,
        nonce_r: bytes,
        shared: bytes,
        ke_local: KeyExchange | None,
        now: float,
    ) -> tuple[Child | None, tuple[str, str]]:
        """Initiator side: check SA/TS of a CHILD SA reply and derive its keys."""
        sa_p = self._get(payloads, SA)
        ke_p = self._get(payloads, KE)
        if sa_p is None:
            return None, (ev.NO_PROPOSAL_CHOSEN, f"{self.describe_peer()} created no CHILD SA")
        choice = accept_reply(
            sa_p.proposals, offered, self.cfg.esp_encr, self.cfg.groups, ke_p.group if ke_p else None
        )
        if choice is None or len(sa_p.proposals[0].spi) != 4:
            return None, (
                ev.NO_PROPOSAL_CHOSEN,
                f"{self.describe_peer()} chose an ESP proposal we did not "
                f"offer ({describe(sa_p.proposals[0])})",
            )
        if choice.group is not None:
            if ke_local is None or ke_p is None or ke_p.group != ke_local.group:
                return None, (ev.NO_PROPOSAL_CHOSEN, f"{self.describe_peer()} answered PFS without our group")
            shared = ke_local.shared(ke_p.data)
        assert self.peer_inner is not None
        tsi = next((p for p in payloads if isinstance(p, TrafficSelectors) and p.initiator), None)
        tsr = next((p for p in payloads if isinstance(p, TrafficSelectors) and not p.initiator), None)
        mine, theirs = self.cfg.local_inner, self.peer_inner
        if not self._ts_is(tsi, mine) or not self._ts_is(tsr, theirs):
            got = "/".join(ts.describe() for t in (tsi, tsr) if t for ts in t.selectors)
            return None, (
                ev.TS_UNACCEPTABLE,
                f"{self.describe_peer()} narrowed the traffic selectors to {got}, not {mine} ↔ {theirs}",
            )
        key_ir, key_ri = child_keymat(
            self.keys.sk_d if self.keys else b"", nonce_i, nonce_r, choice.aead.key_len, shared
        )
        return Child(spi_in, sa_p.proposals[0].spi, choice.aead, key_ri, key_ir, theirs, now), ("", "")

    @staticmethod
    def _ts_is(ts: TrafficSelectors | None, address: str) -> bool:
        return (
            ts is not None
            and len(ts.selectors) == 1
            and ts.selectors[0].contains(address)
            and ts.selectors[0].start == ts.selectors[0].end
            and ts.selectors[0].is_all_traffic
        )

    def _add_child(
        self, child: Child, rekey_of: Child | None, now: float, setup: float | None = None
    ) -> None:
        if self.cfg.child_rekey_time is not None:
            child.rekey_at = now + self._jitter(self.cfg.child_rekey_time)
        self.children.append(child)
        self._emit(
            ev.ChildSaUp(
                self.handle,
                child.data(self.cfg.local_inner, self.peer_addr),
                rekey_of.spi_in if rekey_of else None,
                setup,
            )
        )

    def _remove_child(self, child: Child, reason: str) -> None:
        if child in self.children:
            self.children.remove(child)
            self._emit(ev.ChildSaDown(self.handle, child.spi_in, child.spi_out, child.peer_inner, reason))

    # ------------------------------------------------------------------ CREATE_CHILD_SA
    def _start_child_rekey(self, item: Queued, now: float) -> None:
        old = item.ctx.get("child")
        if not isinstance(old, Child) or old not in self.children or old.superseded:
            return self._pump(now)
        pfs = item.ctx.get("pfs", self.cfg.pfs_group)
        nonce = self._random(self.cfg.nonce_len)
        spi_in = self.ep.new_esp_spi()
        group = DhGroup(pfs) if isinstance(pfs, int) else None
        ke_local = KeyExchange(group, self._random(PRIVATE_RANDOM_LEN[group])) if group else None
        offered = esp_proposal(self.cfg.esp_encr, spi_in, group)
        tsi, tsr = self._ts_pair()
        payloads: list[Payload] = [
            Notify(NotifyType.REKEY_SA, b"", ProtocolId.ESP, old.spi_in),
            SA((offered,)),
            Nonce(nonce),
        ]
        if ke_local is not None:
            payloads.append(KE(ke_local.group, ke_local.public))
        payloads += [tsi, tsr]
        self._send_request(
            Task.CHILD_REKEY,
            ExchangeType.CREATE_CHILD_SA,
            payloads,
            now,
            {"old": old, "nonce": nonce, "spi_in": spi_in, "offered": offered, "ke": ke_local},
        )
        return None

    def _on_child_rekey_response(self, pending: Pending, payloads: tuple[Payload, ...], now: float) -> None:
        ctx = pending.ctx
        old, nonce_i, spi_in, offered = ctx["old"], ctx["nonce"], ctx["spi_in"], ctx["offered"]
        ke_local = ctx["ke"]
        assert isinstance(old, Child) and isinstance(nonce_i, bytes) and isinstance(spi_in, bytes)
        assert isinstance(offered, Proposal)
        if self._notify_in(payloads, NotifyType.TEMPORARY_FAILURE) or (
            self._notify_in(payloads, NotifyType.NO_ADDITIONAL_SAS)
        ):
            pfs = ke_local.group if isinstance(ke_local, KeyExchange) else None
            self._retry_later(Queued(Task.CHILD_REKEY, {"child": old, "pfs": pfs}), now)
            return None
        if self._notify_in(payloads, NotifyType.CHILD_SA_NOT_FOUND):
            return None
        nonce_p = self._get(payloads, Nonce)
        if nonce_p is None:
            error = self._first_error(payloads)
            reason = self._error_text(error, "ESP") if error else (ev.PEER_ERROR, "rekey reply without nonce")
            self._emit(ev.ChildSaFailed(self.handle, *reason))
            return None
        child, reason = self._accept_child_reply(
            payloads,
            spi_in,
            offered,
            nonce_i,
            nonce_p.data,
            b"",
            ke_local if isinstance(ke_local, KeyExchange) else None,
            now,
        )
        if child is None:
            self._emit(ev.ChildSaFailed(self.handle, *reason))
            return None
        old.superseded = True
        self._add_child(child, old, now)
        self.queue.insert(0, Queued(Task.DELETE_CHILD, {"child": old, "reason": ev.REKEYED}))
        return None

    def _start_ike_rekey(self, item: Queued, now: float) -> None:
        if self.state != State.ESTABLISHED:
            return self._pump(now)
        assert self.group is not None
        nonce = self._random(self.cfg.nonce_len)
        new_spi = self.ep.new_ike_spi()
        group = self.group
        ke_local = KeyExchange(group, self._random(PRIVATE_RANDOM_LEN[group]))
        groups = (group, *[g for g in self.cfg.groups if g != group])
        offered = ike_proposal(self.cfg.ike_encr, groups, new_spi)
        payloads: list[Payload] = [SA((offered,)), Nonce(nonce), KE(group, ke_local.public)]
        self._send_request(
            Task.IKE_REKEY,
            ExchangeType.CREATE_CHILD_SA,
            payloads,
            now,
            {"nonce": nonce, "spi": new_spi, "offered": offered, "ke": ke_local},
        )
        return None

    def _on_ike_rekey_response(self, pending: Pending, payloads: tuple[Payload, ...], now: float) -> None:
        ctx = pending.ctx
        nonce_i, new_spi, offered, ke_local = ctx["nonce"], ctx["spi"], ctx["offered"], ctx["ke"]
        assert isinstance(nonce_i, bytes) and isinstance(new_spi, bytes)
        assert isinstance(offered, Proposal) and isinstance(ke_local, KeyExchange)
        invalid_ke = self._get_notify(payloads, NotifyType.INVALID_KE_PAYLOAD)
        if invalid_ke is not None and len(invalid_ke.data) >= 2:
            wanted = int.from_bytes(invalid_ke.data[:2], "big")
            if wanted in self.cfg.groups and wanted != ke_local.group:
                self.group = DhGroup(wanted)  # the peer wants another group for the new IKE SA
                self.enqueue(Task.IKE_REKEY, now)
            return None
        if self._notify_in(payloads, NotifyType.TEMPORARY_FAILURE):
            self._retry_later(Queued(Task.IKE_REKEY), now)
            return None
        sa_p, nonce_p, ke_p = self._get(payloads, SA), self._get(payloads, Nonce), self._get(payloads, KE)
        if sa_p is None or nonce_p is None or ke_p is None:
            return None  # peer refused the rekey; the old SA stays usable
        choice = accept_reply(sa_p.proposals, offered, self.cfg.ike_encr, self.cfg.groups, ke_p.group)
        if choice is None or ke_p.group != ke_local.group or len(sa_p.proposals[0].spi) != 8:
            return None
        self._rekey_into(
            True,
            new_spi,
            sa_p.proposals[0].spi,
            choice,
            nonce_i,
            nonce_p.data,
            ke_local.shared(ke_p.data),
            now,
        )
        self.queue.insert(0, Queued(Task.DELETE_IKE, {"reason": ev.REKEYED}))
        return None

    def _retry_later(self, item: Queued, now: float) -> None:
        """The peer was busy (a rekey collision, RFC 7296 §2.25): try again in 1–3 s."""
        self.retry_item = item
        self.retry_at = now + 1.0 + 2.0 * self._random(1)[0] / 255

    def _rekey_into(
        self,
        we_initiated: bool,
        spi_i: bytes,
        spi_r: bytes,
        choice: Choice,
        nonce_i: bytes,
        nonce_r: bytes,
        shared: bytes,
        now: float,
    ) -> None:
        """Create the IKE SA that replaces this one; CHILD SAs move over."""
        assert self.keys is not None
        new = IkeSa(self.ep, self.handle, we_initiated, spi_i, spi_r, self.peer_addr, self.natt, now)
        new.peer_id, new.expected_peer_id, new.peer_inner = (
            self.peer_id,
            self.expected_peer_id,
            self.peer_inner,
        )
        new.nonce_i, new.nonce_r, new.group = nonce_i, nonce_r, choice.group
        new.aead, new.suite = choice.aead, choice.ike_suite()
        seed = skeyseed_rekey(self.keys.sk_d, shared, nonce_i, nonce_r)
        new.keys = derive_ike_keys(seed, nonce_i, nonce_r, spi_i, spi_r, choice.aead.key_len)
        new.children, self.children = self.children, []
        new.nat_local, new.nat_remote = self.nat_local, self.nat_remote
        new.established_announced = True
        new.state = State.ESTABLISHED
        new.expire_at = None
        self.state = State.REKEYED
        self.expire_at = (
            now + 4 * self.cfg.retransmit_timeout * self.cfg.retransmit_base**self.cfg.retransmit_tries
        )
        new.ike_rekey_at = now + new._jitter(self.cfg.ike_rekey_time) if self.cfg.ike_rekey_time else None
        self.ep.adopt(new)
        self._emit(ev.IkeSaRekeyed(self.handle, spi_i, spi_r))

    def _on_create_child_request(self, msg: Message, payloads: tuple[Payload, ...], now: float) -> None:
        mid = msg.header.message_id
        busy = self.pending is not None and self.pending.task in (Task.CHILD_REKEY, Task.IKE_REKEY)
        if self.state != State.ESTABLISHED or busy:
            return self._send_response(
                ExchangeType.CREATE_CHILD_SA, mid, [Notify(NotifyType.TEMPORARY_FAILURE)], now
            )
        sa_p, nonce_p = self._get(payloads, SA), self._get(payloads, Nonce)
        if sa_p is None or nonce_p is None:
            raise ProtocolError("CREATE_CHILD_SA without SA or Nonce", NotifyType.INVALID_SYNTAX)
        ke_p = self._get(payloads, KE)
        nonce_r = self._random(self.cfg.nonce_len)
        if any(p.protocol == ProtocolId.IKE for p in sa_p.proposals):
            return self._respond_ike_rekey(mid, sa_p, nonce_p, ke_p, nonce_r, now)
        rekey = next((n for n in payloads if isinstance(n, Notify) and n.type == NotifyType.REKEY_SA), None)
        if rekey is None:
            return self._send_response(
                ExchangeType.CREATE_CHILD_SA, mid, [Notify(NotifyType.NO_ADDITIONAL_SAS)], now
            )
        old = next((c for c in self.children if c.spi_out == rekey.spi and not c.superseded), None)
        if old is None:
            return self._send_response(
                ExchangeType.CREATE_CHILD_SA,
                mid,
                [Notify(NotifyType.CHILD_SA_NOT_FOUND, b"", ProtocolId.ESP, rekey.spi)],
                now,
            )
        self.peer_inner = old.peer_inner
        reply, child, failure = self._respond_child(
            payloads, nonce_p.data, nonce_r, None, now, ignore_dh=False, peer_ke=ke_p
        )
        self._send_response(ExchangeType.CREATE_CHILD_SA, mid, reply, now)
        if child is not None:
            old.superseded = True
            self._add_child(child, old, now)
        elif failure is not None:
            self._emit(ev.ChildSaFailed(self.handle, *failure))
        return None

    def _respond_ike_rekey(
        self, mid: int, sa_p: SA, nonce_p: Nonce, ke_p: KE | None, nonce_r: bytes, now: float
    ) -> None:
        new_spi = self.ep.new_ike_spi()
        choice, retry = choose(
            sa_p.proposals,
            ProtocolId.IKE,
            self.cfg.ike_encr,
            self.cfg.groups,
            ke_p.group if ke_p else None,
            new_spi,
            require_group=True,
        )
        if choice is None or ke_p is None or choice.group is None:
            if retry is not None:
                return self._send_response(
                    ExchangeType.CREATE_CHILD_SA,
                    mid,
                    [Notify(NotifyType.INVALID_KE_PAYLOAD, int(retry).to_bytes(2, "big"))],
                    now,
                )
            return self._send_response(
                ExchangeType.CREATE_CHILD_SA, mid, [Notify(NotifyType.NO_PROPOSAL_CHOSEN)], now
            )
        peer_spi = next(p.spi for p in sa_p.proposals if p.number == choice.proposal.number)
        if len(peer_spi) != 8:
            raise ProtocolError("IKE rekey proposal without an 8-byte SPI", NotifyType.INVALID_SYNTAX)
        ke_local = KeyExchange(choice.group, self._random(PRIVATE_RANDOM_LEN[choice.group]))
        shared = ke_local.shared(ke_p.data)
        self._send_response(
            ExchangeType.CREATE_CHILD_SA,
            mid,
            [SA((choice.proposal,)), Nonce(nonce_r), KE(choice.group, ke_local.public)],
            now,
        )
        self._rekey_into(False, peer_spi, new_spi, choice, nonce_p.data, nonce_r, shared, now)
        return None

    # ------------------------------------------------------------------ INFORMATIONAL
    def _start_delete_child(self, item: Queued, now: float) -> None:
        child = item.ctx.get("child")
        if not isinstance(child, Child) or child not in self.children:
            return self._pump(now)
        self._send_request(
            Task.DELETE_CHILD,
            ExchangeType.INFORMATIONAL,
            [Delete(ProtocolId.ESP, (child.spi_in,))],
            now,
            dict(item.ctx),
        )
        return None

    def _start_delete_ike(self, item: Queued, now: float) -> None:
        if self.state == State.ESTABLISHED:
            self.state = State.DELETING
        self._send_request(
            Task.DELETE_IKE, ExchangeType.INFORMATIONAL, [Delete(ProtocolId.IKE)], now, dict(item.ctx)
        )

    def _start_dpd(self, item: Queued, now: float) -> None:
        self._send_request(Task.DPD, ExchangeType.INFORMATIONAL, [], now)

    def _on_informational_response(self, pending: Pending, payloads: tuple[Payload, ...], now: float) -> None:
        if pending.task == Task.DELETE_CHILD:
            child = pending.ctx.get("child")
            reason = pending.ctx.get("reason", ev.CLOSED)
            if isinstance(child, Child):
                self._remove_child(child, str(reason))
        elif pending.task == Task.DELETE_IKE:
            reason = str(pending.ctx.get("reason", ev.CLOSED))
            message = str(pending.ctx.get("message", "tunnel closed"))
            if self.state == State.REKEYED:
                self.state = State.DEAD
                self.ep.forget(self)
            else:
                self._fail(reason, message, now)

    def _on_informational_request(self, msg: Message, payloads: tuple[Payload, ...], now: float) -> None:
        mid = msg.header.message_id
        deletes = [p for p in payloads if isinstance(p, Delete)]
        if any(d.protocol == ProtocolId.IKE for d in deletes):
            self._send_response(ExchangeType.INFORMATIONAL, mid, [], now)
            if self.state == State.REKEYED:
                self.state = State.DEAD
                self.ep.forget(self)
                return
            return self._fail(ev.DELETED_BY_PEER, f"peer {self.describe_peer()} closed the tunnel", now)
        reply: list[Payload] = []
        gone: list[Child] = []
        for d in deletes:
            if d.protocol != ProtocolId.ESP:
                continue
            for spi in d.spis:
                child = next((c for c in self.children if c.spi_out == spi), None)
                if child is not None:
                    gone.append(child)
        # A Delete crossing ours for the same SA: we still answer with our inbound SPIs.
        if gone:
            reply.append(Delete(ProtocolId.ESP, tuple(c.spi_in for c in gone)))
        self._send_response(ExchangeType.INFORMATIONAL, mid, reply, now)
        for child in gone:
            self._remove_child(child, ev.REKEYED if child.superseded else ev.DELETED_BY_PEER)
        return None

    # ------------------------------------------------------------------ receive
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
            self._transmit(self.cached_response[1], self.natt, now)
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
                self.pending = pending
                self._on_auth_response(msg, payloads, now)
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

    # ------------------------------------------------------------------ timers
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

    # ------------------------------------------------------------------ local commands
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

    # ------------------------------------------------------------------ payload helpers
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
