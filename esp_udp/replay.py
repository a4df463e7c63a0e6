"""Anti-replay window (RFC 4303 §3.4.3, Appendix A2) — a tiny filter, tested on its own.

How this works: ``top`` is the highest sequence number authenticated so far. Instead of
a bitmap, the window is a ring of ``size`` slots: slot ``seq % size`` holds the last
sequence number accepted there. A number ``seq`` inside the window (``top - size < seq ≤
top``) was seen exactly when ``ring[seq % size] == seq``: any other number that maps to
the same slot and was accepted later is ``≥ seq + size > top``, impossible. So marking a
number is one list store, O(1) for any window size (a shifted bitmap in a Python int
costs a big-integer shift and mask per packet). A receiver calls :meth:`ReplayWindow.check`
*before* decrypting (cheap rejection of duplicates and of numbers left of the window) and
:meth:`ReplayWindow.update` only *after* the ICV verified — so forged packets can never
move the window. Sequence number 0 is never sent (RFC 4303 §3.3.3) and is rejected (the
ring starts with zeros, which therefore never match). Only 32-bit sequence numbers (no
ESN): the sender rekeys before they run out.
"""

from __future__ import annotations

from esp_udp.errors import ConfigError, DropReason, ReplayError

MIN_WINDOW = 64
DEFAULT_WINDOW = 1024


class ReplayWindow:
    """Sliding window of ``size`` sequence numbers (a ring of the last accepted ones)."""

    __slots__ = ("ring", "size", "top")

    def __init__(self, size: int = DEFAULT_WINDOW) -> None:
        if size < MIN_WINDOW:
            raise ConfigError(f"replay window {size} is below the minimum of {MIN_WINDOW}")
        self.size = size
        self.top = 0
        self.ring = [0] * size

    def reset(self) -> None:
        """Forget everything (in place: holders of ``ring`` keep a valid reference)."""
        self.top = 0
        self.ring[:] = [0] * self.size

    def check(self, seq: int) -> None:
        """Raise :class:`ReplayError` if ``seq`` must be dropped (before decryption)."""
        top = self.top
        if seq > top:
            return
        if seq == 0 or top - seq >= self.size:
            raise ReplayError(f"sequence number {seq} is left of the window (top {top})",
                              DropReason.TOO_OLD)
        if self.ring[seq % self.size] == seq:
            raise ReplayError(f"sequence number {seq} was already received", DropReason.REPLAY)

    def update(self, seq: int) -> None:
        """Mark ``seq`` as received (call only after the ICV verified)."""
        if seq > self.top:
            self.ring[seq % self.size] = seq
            self.top = seq
            return
        self.check(seq)
        self.ring[seq % self.size] = seq

    def accepts(self, seq: int) -> bool:
        """True if :meth:`check` would pass (no side effects)."""
        try:
            self.check(seq)
        except ReplayError:
            return False
        return True
