"""esp_udp: ESP (RFC 4303 tunnel mode) in UDP (RFC 3948) over a TUN device.

Sans-I/O core: :mod:`esp_udp.sa` (plain-data SA parameters), :mod:`esp_udp.esp`
(seal/open with AES-GCM-16 RFC 4106 and ChaCha20-Poly1305 RFC 7634), :mod:`esp_udp.replay`
(anti-replay window), :mod:`esp_udp.encap` (RFC 3948 classification, keepalive, non-ESP
marker), :mod:`esp_udp.keylog` (Wireshark ``esp_sa`` lines). I/O drivers:
:mod:`esp_udp.tun` (TUN device, addresses, routes) and :mod:`esp_udp.datapath` (the pump).
"""

from esp_udp.errors import (
    AuthenticationError,
    ConfigError,
    DecodeError,
    DropReason,
    EspError,
    ReplayError,
    SequenceExhaustedError,
    UnknownSpiError,
)
from esp_udp.sa import SAParams, Suite

__all__ = [
    "AuthenticationError",
    "ConfigError",
    "DecodeError",
    "DropReason",
    "EspError",
    "ReplayError",
    "SAParams",
    "SequenceExhaustedError",
    "Suite",
    "UnknownSpiError",
]
