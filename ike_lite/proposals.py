"""Building and choosing SA proposals (RFC 7296 §2.7, §3.3) for the suites btmm allows.

IKE: ENCR AES-GCM-16-256 or ChaCha20-Poly1305, PRF HMAC-SHA2-256, groups 31/19/14.
ESP: the same AEADs, no ESN, optional PFS group. Nothing weaker is offered or accepted;
AEAD proposals carrying an INTEG transform other than NONE are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ike_lite.const import DhGroup, EncrId, PrfId, ProtocolId, TransformType
from ike_lite.crypto import AEADS, SUPPORTED_GROUPS, Aead, aead_for
from ike_lite.wire import Proposal, Transform

GROUP_NAMES = {DhGroup.CURVE25519: "x25519", DhGroup.ECP_256: "ecp256", DhGroup.MODP_2048: "modp2048"}


def group_name(group: int) -> str:
    return GROUP_NAMES.get(DhGroup(group), f"dh{int(group)}")


@dataclass(frozen=True)
class Choice:
    """What a proposal negotiated: the AEAD, the DH group (or None) and the reply proposal."""

    aead: Aead
    group: DhGroup | None
    proposal: Proposal

    def ike_suite(self) -> str:
        return f"{self.aead.name}-prfsha256-{group_name(self.group or 0)}"


def _encr_transforms(names: Sequence[str]) -> list[Transform]:
    out = []
    for name in names:
        aead = AEADS[name]
        keylen = None if aead.encr == EncrId.CHACHA20_POLY1305 else aead.key_bits
        out.append(Transform.make(TransformType.ENCR, aead.encr, keylen))
    return out


def ike_proposal(encr: Sequence[str], groups: Sequence[DhGroup], spi: bytes = b"") -> Proposal:
    transforms = [*_encr_transforms(encr), Transform.make(TransformType.PRF, PrfId.HMAC_SHA2_256)]
    transforms += [Transform.make(TransformType.DH, g) for g in groups]
    return Proposal(1, ProtocolId.IKE, spi, tuple(transforms))


def esp_proposal(encr: Sequence[str], spi: bytes, pfs: DhGroup | None = None) -> Proposal:
    transforms = _encr_transforms(encr)
    if pfs is not None:
        transforms.append(Transform.make(TransformType.DH, pfs))
    transforms.append(Transform.make(TransformType.ESN, 0))
    return Proposal(1, ProtocolId.ESP, spi, tuple(transforms))


def describe(proposal: Proposal) -> str:
    """Short human text of a proposal, e.g. ``ENCR 12/128, INTEG 2, PRF 2, DH 2``."""
    parts = []
    for t in proposal.transforms:
        kl = f"/{t.key_length}" if t.key_length else ""
        parts.append(f"{t.type.name} {int(t.id)}{kl}")
    return ", ".join(parts) or "no transforms"


def choose(
    proposals: Sequence[Proposal],
    protocol: ProtocolId,
    encr: Sequence[str],
    groups: Sequence[DhGroup],
    ke_group: int | None,
    spi: bytes,
    require_group: bool,
) -> tuple[Choice | None, DhGroup | None]:
    """Pick the first acceptable proposal.

    Returns ``(choice, None)``; or ``(None, group)`` when a proposal is acceptable only with
    a different KE group (the caller answers INVALID_KE_PAYLOAD naming ``group``); or
    ``(None, None)`` for NO_PROPOSAL_CHOSEN. ``require_group``: IKE proposals need a group;
    ESP proposals may carry one (PFS) and then KEi must match it.
    """
    allowed = [AEADS[n] for n in encr]
    retry_group: DhGroup | None = None
    for p in proposals:
        if p.protocol != protocol:
            continue
        aead = next(
            (
                a
                for t in p.of_type(TransformType.ENCR)
                if (a := aead_for(t.id, t.key_length)) is not None and a in allowed
            ),
            None,
        )
        if aead is None:
            continue
        if any(t.id != 0 for t in p.of_type(TransformType.INTEG)):
            continue
        if protocol == ProtocolId.IKE and not any(
            t.id == PrfId.HMAC_SHA2_256 for t in p.of_type(TransformType.PRF)
        ):
            continue
        esn = p.of_type(TransformType.ESN)
        if esn and not any(t.id == 0 for t in esn):
            continue
        dh = p.of_type(TransformType.DH)
        offered = [DhGroup(t.id) for t in dh if t.id != 0]
        group: DhGroup | None = None
        none_ok = not dh or any(t.id == 0 for t in dh)
        if not require_group and ke_group is None and none_ok:
            pass  # no PFS requested (or DH NONE offered)
        elif offered or require_group:
            usable = [g for g in offered if g in groups and g in SUPPORTED_GROUPS]
            if not usable:
                continue
            if ke_group in usable:
                group = DhGroup(ke_group)
            else:
                retry_group = retry_group or next(g for g in groups if g in usable)
                continue
        elif ke_group is not None:
            continue  # a KE payload without a group in the proposal is inconsistent
        keylen = None if aead.encr == EncrId.CHACHA20_POLY1305 else aead.key_bits
        transforms = [Transform.make(TransformType.ENCR, aead.encr, keylen)]
        if protocol == ProtocolId.IKE:
            transforms.append(Transform.make(TransformType.PRF, PrfId.HMAC_SHA2_256))
        if group is not None:
            transforms.append(Transform.make(TransformType.DH, group))
        if protocol == ProtocolId.ESP:
            transforms.append(Transform.make(TransformType.ESN, 0))
        return Choice(aead, group, Proposal(p.number, protocol, spi, tuple(transforms))), None
    return None, retry_group


def accept_reply(
    reply: Sequence[Proposal],
    offered: Proposal,
    encr: Sequence[str],
    groups: Sequence[DhGroup],
    ke_group: int | None,
) -> Choice | None:
    """Check the responder's single chosen proposal against what we offered."""
    if len(reply) != 1:
        return None
    p = reply[0]
    if p.protocol != offered.protocol:
        return None
    choice, _ = choose(
        [p], offered.protocol, encr, groups, ke_group, p.spi, require_group=offered.protocol == ProtocolId.IKE
    )
    if choice is None:
        return None
    if len(p.of_type(TransformType.ENCR)) != 1 or len(p.of_type(TransformType.DH)) > 1:
        return None
    return Choice(choice.aead, choice.group, p)
