"""CREATE_CHILD_SA (RFC 7296 §1.3, §2.8, §2.18, §2.25): CHILD SA rekey with or without PFS,
IKE SA rekey, collisions answered with TEMPORARY_FAILURE and retried.
"""

from __future__ import annotations

from ike_lite import events as ev
from ike_lite.child import ChildNegotiation
from ike_lite.const import (
    DhGroup,
    ExchangeType,
    NotifyType,
    ProtocolId,
)
from ike_lite.core import Child, Pending, Queued, State, Task
from ike_lite.crypto import PRIVATE_RANDOM_LEN, KeyExchange
from ike_lite.errors import ProtocolError
from ike_lite.keys import (
    derive_ike_keys,
    skeyseed_rekey,
)
from ike_lite.proposals import Choice, accept_reply, choose, esp_proposal, ike_proposal
from ike_lite.wire import (
    KE,
    SA,
    Message,
    Nonce,
    Notify,
    Payload,
    Proposal,
)


class CreateChildExchange(ChildNegotiation):
    """CREATE_CHILD_SA: CHILD and IKE SA rekeys, both roles."""

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
        new = type(self)(self.ep, self.handle, we_initiated, spi_i, spi_r, self.peer_addr, self.natt, now)
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
            payloads, nonce_p.data, nonce_r, now, ignore_dh=False, peer_ke=ke_p
        )
        self._send_response(ExchangeType.CREATE_CHILD_SA, mid, reply, now)
        if child is not None:
            old.superseded = True
            self._add_child(child, old, now, outbound=False)
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
