"""The datapath's keep-warm tick: a dummy seal+open that can run forever without side effects."""

from __future__ import annotations

from esp_udp.datapath import Datapath, _Warmer


def test_warmer_round_trips_repeatedly() -> None:
    # It resets its own sequence number and replay window: without that the second run
    # would be dropped as a replay.
    warmer = _Warmer()
    assert [warmer.run() for _ in range(5)] == [100] * 5


def test_keep_warm_defaults_and_off_switch() -> None:
    dp = Datapath("fd00:1::1")
    assert 0 < dp.keep_warm <= 0.001 and dp.warm_for > 0
    off = Datapath("fd00:1::1", keep_warm=0.0)
    assert off.keep_warm == 0.0
