"""ike_lite: a sans-I/O IKEv2 initiator and responder (RFC 7296) for btmm.

PSK authentication, AEAD suites only (AES-GCM-16-256, ChaCha20-Poly1305), PRF-HMAC-SHA256,
groups 31/19/14; one CHILD SA (ESP tunnel mode, inner ULA /128 ↔ /128) per IKE SA, always
UDP-encapsulated. Start at :class:`ike_lite.endpoint.IkeEndpoint`.
"""

from ike_lite.config import Config
from ike_lite.endpoint import Datagram, IkeEndpoint
from ike_lite.errors import DecodeError, IkeError, IntegrityError, ProtocolError, UsageError

__all__ = [
    "Config",
    "Datagram",
    "DecodeError",
    "IkeEndpoint",
    "IkeError",
    "IntegrityError",
    "ProtocolError",
    "UsageError",
]
