"""The anti-replay window against a reference model (RFC 4303 §3.4.3)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esp_udp.errors import ConfigError, DropReason, ReplayError
from esp_udp.replay import MIN_WINDOW, ReplayWindow


class Model:
    """The obvious implementation: a set of everything accepted."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.seen: set[int] = set()
        self.top = 0

    def accepts(self, seq: int) -> bool:
        if seq == 0 or seq in self.seen:
            return False
        return seq > self.top - self.size

    def update(self, seq: int) -> None:
        self.seen.add(seq)
        self.top = max(self.top, seq)


ops = st.lists(st.tuples(st.integers(min_value=0, max_value=3000), st.booleans()), max_size=300)


@settings(max_examples=150, deadline=None)
@given(size=st.sampled_from([64, 65, 128, 1024]), operations=ops)
def test_window_matches_model(size: int, operations: list[tuple[int, bool]]) -> None:
    window, model = ReplayWindow(size), Model(size)
    for seq, authentic in operations:
        assert window.accepts(seq) == model.accepts(seq), (seq, window.top)
        if model.accepts(seq) and authentic:  # only authenticated packets move the window
            window.update(seq)
            model.update(seq)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=2**32 - 1), max_size=100))
def test_large_sequence_numbers(seqs: list[int]) -> None:
    window, model = ReplayWindow(1024), Model(1024)
    for seq in seqs:
        assert window.accepts(seq) == model.accepts(seq)
        if model.accepts(seq):
            window.update(seq)
            model.update(seq)


def test_reasons() -> None:
    window = ReplayWindow(64)
    for seq in (1, 2, 100):
        window.check(seq)
        window.update(seq)
    with pytest.raises(ReplayError) as dup:
        window.check(100)
    assert dup.value.reason is DropReason.REPLAY
    with pytest.raises(ReplayError) as old:
        window.check(36)  # 100 - 36 = 64: just left of a 64-wide window
    assert old.value.reason is DropReason.TOO_OLD
    window.check(37)
    with pytest.raises(ReplayError) as zero:
        window.check(0)
    assert zero.value.reason is DropReason.TOO_OLD


def test_minimum_size() -> None:
    with pytest.raises(ConfigError):
        ReplayWindow(MIN_WINDOW - 1)
    assert ReplayWindow().size >= 1024
