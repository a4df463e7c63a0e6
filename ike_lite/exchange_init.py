"""IKE_SA_INIT (RFC 7296 §1.2, §2.6, §2.10, §2.23): proposals, KE, nonces, NAT-D, COOKIE and
INVALID_KE_PAYLOAD retries, SKEYSEED, the float to port 4500.
"""

from __future__ import annotations

from ike_lite import events as ev
from ike_lite.const import (
    DhGroup,
    ExchangeType,
    NotifyType,
)
from ike_lite.core import SaCore, State, Task
from ike_lite.crypto import PRIVATE_RANDOM_LEN, KeyExchange
from ike_lite.keys import (
    derive_ike_keys,
    natd_hash,
    skeyseed_initial,
)
from ike_lite.proposals import Choice, accept_reply, describe, ike_proposal
from ike_lite.wire import (
    KE,
    SA,
    Message,
    Nonce,
    Notify,
    Payload,
    Proposal,
    encode_message,
)


class InitExchange(SaCore):
    """IKE_SA_INIT: ``start``/``_send_init``/``_on_init_response`` (initiator), ``respond_init``."""

    offered_ike: Proposal

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
            if cookie.data == self.cookie:
                return None  # a duplicate answering an earlier transmission; keep waiting
            if self.init_retries >= 3:
                return self._fail(ev.PEER_ERROR, f"{self.describe_peer()} keeps asking for cookies", now)
            self.init_retries += 1
            self.cookie = cookie.data
            self.pending = None
            return self._send_init(now)
        invalid_ke = msg.notify(NotifyType.INVALID_KE_PAYLOAD)
        if invalid_ke is not None:
            wanted = int.from_bytes(invalid_ke.data[:2], "big") if len(invalid_ke.data) >= 2 else 0
            if wanted == self.group:
                return None  # a duplicate answering our request before we switched groups
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
