"""The errors ike_lite raises — its whole contract with callers.

Anything parsed from the network can raise only :class:`DecodeError` (malformed bytes),
:class:`ProtocolError` (well-formed but not acceptable, carrying the RFC 7296 notify to
answer with) or :class:`IntegrityError` (an SK payload that does not verify). Misuse of the
API by the caller raises :class:`UsageError`. Any other exception escaping is a bug.
"""

from __future__ import annotations


class IkeError(Exception):
    """Base class of every ike_lite error."""


class DecodeError(IkeError):
    """Bytes that are not a well-formed IKEv2 message (truncated, bad lengths)."""


class IntegrityError(IkeError):
    """An encrypted (SK) payload failed AEAD verification."""


class ProtocolError(IkeError):
    """A well-formed message that breaks the protocol; ``notify`` is the error to answer with."""

    def __init__(self, message: str, notify: int = 7, data: bytes = b"") -> None:
        super().__init__(message)
        self.notify = notify  # RFC 7296 §3.10.1 error type; 7 = INVALID_SYNTAX
        self.data = data


class UsageError(IkeError):
    """The caller used the API wrongly (unknown handle, bad configuration)."""
