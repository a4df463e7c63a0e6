"""The on-demand pending queue's bounds, rate limit and expiry (no TUN: the worker-side
methods driven directly with a fake clock)."""

from __future__ import annotations

import ipaddress
import os

from esp_udp.datapath import (
    DEMAND_INTERVAL,
    PENDING_MAX_BYTES,
    PENDING_MAX_DESTS,
    PENDING_MAX_PACKETS,
    Datapath,
)
from esp_udp.sa import SAParams, Suite


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make() -> tuple[Datapath, Clock, list[str]]:
    clock = Clock()
    calls: list[str] = []
    dp = Datapath("fd00:8::1", on_demand=calls.append, pending_timeout=3.0, clock=clock)
    return dp, clock, calls


def key(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def drops(dp: Datapath) -> dict[str, int]:
    return dict(dp.counters_global.drop_reasons)


def test_rate_limit_and_packet_bound() -> None:
    dp, clock, calls = make()
    dest = key("fd00:8::2")
    for _ in range(PENDING_MAX_PACKETS + 5):
        dp._hold(dest, None, memoryview(b"x" * 100))
        clock.now += 0.01
    assert calls == ["fd00:8::2"]  # at most once per DEMAND_INTERVAL
    assert dp.counters()["pending"] == {"fd00:8::2": PENDING_MAX_PACKETS}
    assert drops(dp) == {"pending_full": 5}
    clock.now += DEMAND_INTERVAL
    dp._hold(dest, None, memoryview(b"x"))
    assert calls == ["fd00:8::2", "fd00:8::2"]
    assert dp.on_demand_calls == 2


def test_byte_bound_and_destination_bound() -> None:
    dp, _, calls = make()
    big = memoryview(bytes(PENDING_MAX_BYTES // 2))
    dest = key("fd00:8::3")
    for _ in range(3):
        dp._hold(dest, None, big)
    assert dp.counters()["pending"]["fd00:8::3"] == 2 and drops(dp) == {"pending_full": 1}
    for index in range(PENDING_MAX_DESTS + 3):
        dp._hold(key(f"fd00:9::{index + 1:x}"), None, memoryview(b"y"))
    assert len(dp.counters()["pending"]) == PENDING_MAX_DESTS
    assert drops(dp) == {"pending_full": 1 + 4}
    assert len(calls) == 1 + PENDING_MAX_DESTS + 3  # announced even when it cannot be held


def test_expiry_and_not_announced() -> None:
    dp, clock, calls = make()
    dp._hold(key("fd00:8::4"), None, memoryview(b"a"))
    clock.now += 2.0
    dp._hold(key("fd00:8::4"), None, memoryview(b"b"))
    clock.now += 1.5  # the first is 3.5 s old, the second 1.5 s
    dp._tick_pending(clock.now)
    assert dp.counters()["pending"] == {"fd00:8::4": 1} and drops(dp) == {"pending_expired": 1}
    clock.now += 2.0
    dp._tick_pending(clock.now)
    assert dp.counters()["pending"] == {} and drops(dp) == {"pending_expired": 2}
    # multicast, link-local, unspecified and IPv4 multicast/loopback: dropped, never announced
    for text in ("ff02::1", "fe80::1", "::", "224.0.0.1", "127.0.0.1"):
        dp._hold(key(text), None, memoryview(b"m"))
    assert calls == ["fd00:8::4", "fd00:8::4"]
    assert drops(dp)["no_route"] == 5
    dp._hold(key("10.1.2.3"), None, memoryview(b"v4"))
    assert calls[-1] == "10.1.2.3" and dp.counters()["pending"] == {"10.1.2.3": 1}


def test_remove_peer_restarts_the_rate_limit() -> None:
    dp, clock, calls = make()
    suite = Suite.AES128GCM16
    params = SAParams(ipaddress.IPv6Address("fd00:8::5"), ("198.18.0.5", 4500), suite, 0x500, 0x501,
                      os.urandom(suite.keymat_len), os.urandom(suite.keymat_len),
                      inner4=ipaddress.IPv4Address("10.8.0.5"))
    dp._hold(key("fd00:8::5"), None, memoryview(b"a"))
    dp._hold(key("10.8.0.5"), None, memoryview(b"a"))
    dp.add_peer(params)  # (not started: no TUN, no worker; the tables alone)
    dp.remove_peer("fd00:8::5")  # the tunnel went down: the next packet is news again
    clock.now += 0.1
    dp._hold(key("fd00:8::5"), None, memoryview(b"b"))
    dp._hold(key("10.8.0.5"), None, memoryview(b"b"))
    assert calls == ["fd00:8::5", "10.8.0.5", "fd00:8::5", "10.8.0.5"]


def test_routing_an_address_again_restarts_the_rate_limit() -> None:
    """A peer re-armed (its ULA routed again) within the second is announced by its next packet;
    a prefix route or the same second otherwise stays quiet."""
    dp, clock, calls = make()
    dp._hold(key("fd00:8::7"), None, memoryview(b"a"))
    clock.now += 0.1
    dp._hold(key("fd00:8::7"), None, memoryview(b"b"))
    dp.route_prefix("fd00:8::/48")
    dp._hold(key("fd00:8::7"), None, memoryview(b"c"))
    assert calls == ["fd00:8::7"]
    dp.route_prefix("fd00:8::7")
    dp._hold(key("fd00:8::7"), None, memoryview(b"d"))
    assert calls == ["fd00:8::7", "fd00:8::7"]
