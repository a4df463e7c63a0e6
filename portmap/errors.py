"""The errors portmap raises. Nothing else may escape from parsing untrusted bytes.

* :class:`DecodeError` — bytes that are not a NAT-PMP/PCP message we can read (too short,
  wrong length, bad field). The client drops such a datagram and logs the reason.
* :class:`EncodeError` — a local value that cannot be put on the wire (port out of range,
  nonce of the wrong size): a bug or bad input of the caller, never of the network.
* :class:`ClientError` — a state-machine call that makes no sense in the current state
  (e.g. deleting before starting).
"""

from __future__ import annotations


class PortmapError(Exception):
    """Base class of every portmap error."""


class DecodeError(PortmapError):
    """Received bytes are not a well-formed NAT-PMP or PCP message."""


class EncodeError(PortmapError):
    """A message field cannot be encoded (out of range or wrong size)."""


class ClientError(PortmapError):
    """The client was asked to do something its current state does not allow."""
