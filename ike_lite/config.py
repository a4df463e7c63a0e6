"""Configuration of an IKE endpoint (one local identity, one PSK, one inner address)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ike_lite.const import DhGroup

DEFAULT_ENCR = ("aes256gcm16", "chacha20poly1305")
DEFAULT_GROUPS = (DhGroup.CURVE25519, DhGroup.ECP_256, DhGroup.MODP_2048)


@dataclass(frozen=True)
class Config:
    """Everything an :class:`~ike_lite.endpoint.IkeEndpoint` needs besides the clock and RNG.

    Times are seconds. ``None`` disables a timer. ``local_addr``: our outer IPv4 if known;
    without it (or with ``force_encap``) we send a NAT_DETECTION_SOURCE_IP that cannot
    match, as strongSwan's ``encap = yes`` and racoon's ``nat_traversal force`` do, so the
    peer always UDP-encapsulates ESP.
    """

    psk: bytes = field(repr=False)
    local_id: str
    local_inner: str
    ike_encr: tuple[str, ...] = DEFAULT_ENCR
    esp_encr: tuple[str, ...] = DEFAULT_ENCR
    groups: tuple[DhGroup, ...] = DEFAULT_GROUPS
    pfs_group: DhGroup | None = None  # PFS for CHILD rekeys we start; None = no PFS
    retransmit_timeout: float = 1.0
    retransmit_base: float = 2.0
    retransmit_tries: int = 5
    dpd_interval: float | None = 30.0
    ike_rekey_time: float | None = 4 * 3600.0
    child_rekey_time: float | None = 3600.0
    half_open_timeout: float = 30.0
    cookie_threshold: int = 100  # half-open responder SAs before we demand cookies
    keepalive_interval: float | None = 20.0
    force_encap: bool = True
    local_addr: str | None = None
    nonce_len: int = 32
    log_messages: bool = False
    accept_peer: Callable[[str], bool] | None = None  # responder: allow this IDi?
    peer_inner_for: Callable[[str], str | None] | None = None  # responder: the ULA of IDi
    peer_prefix: str | None = None  # responder: peer inner addresses must lie in it (the account /48)
