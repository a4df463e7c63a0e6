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


def test_warmer_in_borrowed_buffers_touches_only_their_start() -> None:
    pbuf, obuf, dbuf = (memoryview(bytearray(b"\xaa" * 4096)) for _ in range(3))
    warmer = _Warmer(pbuf, obuf, dbuf)
    assert warmer.run() == 100 and warmer.run() == 100
    for buf in (pbuf, obuf, dbuf):
        assert bytes(buf[200:]) == b"\xaa" * (4096 - 200)
