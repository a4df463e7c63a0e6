"""CHILD SA negotiation shared by IKE_AUTH and CREATE_CHILD_SA (RFC 7296 §1.3, §2.9, §2.17):
proposal choice, traffic-selector narrowing to the two ULA /128s, KEYMAT.
"""

from __future__ import annotations

import ipaddress

from ike_lite import events as ev
from ike_lite.const import (
    NotifyType,
    ProtocolId,
    TransformType,
)
from ike_lite.core import Child, SaCore
from ike_lite.crypto import PRIVATE_RANDOM_LEN, KeyExchange
from ike_lite.errors import ProtocolError
from ike_lite.keys import (
    child_keymat,
)
from ike_lite.proposals import accept_reply, choose, describe
from ike_lite.wire import (
    KE,
    SA,
    Nonce,
    Notify,
    Payload,
    Proposal,
    TrafficSelector,
    TrafficSelectors,
)

OUTBOUND_GRACE = 5.0  # s a rekey responder waits for the Delete before sending on the new SA


class ChildNegotiation(SaCore):
    """Both sides of negotiating one CHILD SA pair (used by IKE_AUTH and CREATE_CHILD_SA)."""

    def _ts_pair(self) -> tuple[TrafficSelectors, TrafficSelectors]:
        """(TSi, TSr) from the initiator's point of view of this exchange."""
        assert self.peer_inner is not None
        ours = TrafficSelectors(True, (TrafficSelector.host(self.cfg.local_inner),))
        theirs = TrafficSelectors(False, (TrafficSelector.host(self.peer_inner),))
        return ours, theirs

    def _respond_child(
        self,
        payloads: tuple[Payload, ...],
        nonce_i: bytes,
        nonce_r: bytes,
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
        self,
        child: Child,
        rekey_of: Child | None,
        now: float,
        setup: float | None = None,
        outbound: bool = True,
    ) -> None:
        if self.cfg.child_rekey_time is not None:
            child.rekey_at = now + self._jitter(self.cfg.child_rekey_time)
        if not outbound:
            child.outbound_at = now + OUTBOUND_GRACE
        self.children.append(child)
        self._emit(
            ev.ChildSaUp(
                self.handle,
                child.data(self.cfg.local_inner, self.peer_addr),
                rekey_of.spi_in if rekey_of else None,
                setup,
                outbound,
            )
        )

    def _remove_child(self, child: Child, reason: str) -> None:
        if child.superseded:  # its successor may still wait to carry our traffic
            for newer in self.children:
                if newer.outbound_at is not None and newer.peer_inner == child.peer_inner:
                    self._activate_outbound(newer)
        if child in self.children:
            self.children.remove(child)
            self._emit(ev.ChildSaDown(self.handle, child.spi_in, child.spi_out, child.peer_inner, reason))
