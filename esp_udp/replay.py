"""Anti-replay window (RFC 4303 §3.4.3, Appendix A2) — a tiny filter, tested on its own.

How this works: ``top`` is the highest sequence number authenticated so far; bit *i* of
``bitmap`` says whether ``top - i`` was seen. A receiver calls :meth:`ReplayWindow.check`
*before* decrypting (cheap rejection of duplicates and of numbers left of the window) and
:meth:`ReplayWindow.update` only *after* the ICV verified — so forged packets can never
move the window. Sequence number 0 is never sent (RFC 4303 §3.3.3) and is rejected.
Only 32-bit sequence numbers (no ESN): the sender rekeys before they run out.
"""

from __future__ import annotations

from esp_udp.errors import ConfigError, DropReason, ReplayError

MIN_WINDOW = 64
DEFAULT_WINDOW = 1024


class ReplayWindow:
    """Sliding window of ``size`` sequence numbers (bitmap in a Python int)."""

    __slots__ = ("bitmap", "mask", "size", "top")

    def __init__(self, size: int = DEFAULT_WINDOW) -> None:
        if size < MIN_WINDOW:
            raise ConfigError(f"replay window {size} is below the minimum of {MIN_WINDOW}")
        self.size = size
        self.top = 0
        self.bitmap = 0
        self.mask = (1 << size) - 1

    def check(self, seq: int) -> None:
        """Raise :class:`ReplayError` if ``seq`` must be dropped (before decryption)."""
        top = self.top
        if seq > top:
            return
        if seq == 0 or top - seq >= self.size:
            raise ReplayError(f"sequence number {seq} is left of the window (top {top})",
                              DropReason.TOO_OLD)
        if (self.bitmap >> (top - seq)) & 1:
            raise ReplayError(f"sequence number {seq} was already received", DropReason.REPLAY)

    def update(self, seq: int) -> None:
        """Mark ``seq`` as received (call only after the ICV verified)."""
        top = self.top
        if seq > top:
            shift = seq - top
            self.bitmap = (((self.bitmap << shift) | 1) & self.mask) if shift < self.size else 1
            self.top = seq
            return
        self.check(seq)
        self.bitmap |= 1 << (top - seq)

    def accepts(self, seq: int) -> bool:
        """True if :meth:`check` would pass (no side effects)."""
        try:
            self.check(seq)
        except ReplayError:
            return False
        return True
