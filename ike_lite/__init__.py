"""ike_lite: a sans-I/O IKEv2 initiator and responder (RFC 7296) for btmm.

PSK authentication, AEAD suites only (AES-GCM-16-256, ChaCha20-Poly1305), PRF-HMAC-SHA256,
groups 31/19/14; one CHILD SA (ESP tunnel mode, inner ULA /128 ↔ /128) per IKE SA, always
UDP-encapsulated. Start at :class:`ike_lite.endpoint.IkeEndpoint`::

    ep = IkeEndpoint(Config(psk=psk, local_id="laptop.bob.example", local_inner="fd..::1"),
                     rng=secrets.token_bytes, now=clock())
    handle = ep.initiate(("198.18.0.2", 4500), "imac.bob.example", "fd..::2", clock())
    loop:  for d in ep.datagrams_to_send(now): sock.sendto(d.data, d.addr)   # d.natt: 4500 socket
           ep.receive_datagram(data, addr, now, natt=True)                    # marker included
           if (t := ep.get_timer()) is not None and t <= now: ep.handle_timer(now)
           while (e := ep.next_event()) is not None: ...  # ike_lite.events: ChildSaUp(child=...)

A CHILD SA leaves as plain data (``ChildSaUp.child.as_dict()``) that esp_udp installs;
ike_lite never imports esp_udp. ``tools/tunnel_ike.py`` is the I/O glue.
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
