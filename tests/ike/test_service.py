"""tools/tunnel_ike.IkeService without sockets: two services wired back to back, fake datapaths.

Checks the glue's contract with esp_udp: add_peer on the first CHILD SA, make-before-break
rekey (rekey() before remove_sa() of the old inbound SPI), a datapath ``rekey_needed`` event
triggering a CHILD SA rekey, and remove_peer when the tunnel goes down.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from ike_lite import events as ev
from tools.tunnel_ike import IkeService

from .pair import A_INNER, B_INNER, config

Addr = tuple[str, int]
A = ("198.18.0.1", 4500)
B = ("198.18.0.2", 4500)


class FakeDatapath:
    """Records what IkeService asks of the datapath; delivers IKE to the other side."""

    def __init__(self, me: Addr) -> None:
        self.me = me
        self.calls: list[tuple[str, Any]] = []
        self.peer: IkeService | None = None
        self.lock = threading.Lock()

    def send_ike(self, data: bytes, addr: Addr) -> None:
        assert self.peer is not None
        self.peer.on_ike(data, self.me)

    def _record(self, name: str, arg: Any) -> None:
        with self.lock:
            self.calls.append((name, arg))

    def add_peer(self, params: Any, keepalive: bool = False) -> None:
        self._record("add_peer", params)

    def rekey(self, params: Any, linger: float | None = None) -> None:
        self._record("rekey", params)

    def install_inbound(self, inner: str, spi: int, suite: Any, keymat: bytes) -> None:
        self._record("install_inbound", spi)

    def replace_outbound(self, inner: str, spi: int, suite: Any, keymat: bytes) -> None:
        self._record("replace_outbound", spi)

    def remove_sa(self, spi: int, after: float = 0.0) -> None:
        self._record("remove_sa", spi)

    def remove_peer(self, inner: str) -> None:
        self._record("remove_peer", inner)

    def update_outer(self, inner: str, outer: Addr) -> None:
        self._record("update_outer", (inner, outer))

    def names(self) -> list[str]:
        with self.lock:
            return [n for n, _ in self.calls]


@dataclass
class Side:
    service: IkeService
    dp: FakeDatapath
    events: list[ev.Event]
    thread: threading.Thread


@pytest.fixture
def sides() -> Iterator[tuple[Side, Side]]:
    out = []
    for ident, inner, addr in (("a.example", A_INNER, A), ("b.example", B_INNER, B)):
        dp = FakeDatapath(addr)
        events: list[ev.Event] = []
        svc = IkeService(config(ident, inner), dp, datapath=dp, on_event=events.append)
        thread = threading.Thread(target=svc.run, daemon=True)
        out.append(Side(svc, dp, events, thread))
    out[0].dp.peer, out[1].dp.peer = out[1].service, out[0].service
    for side in out:
        side.thread.start()
    yield out[0], out[1]
    for side in out:
        side.service.stop()
        side.thread.join(timeout=5)


def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError("condition not reached")


def test_service_keys_the_datapath(sides: tuple[Side, Side]) -> None:
    a, b = sides
    a.service.initiate(B, "b.example", B_INNER)
    wait_for(lambda: "add_peer" in a.dp.names() and "add_peer" in b.dp.names())
    params = a.dp.calls[0][1]
    assert str(params.inner) == B_INNER and params.outer == B
    first_in = params.spi_in
    # the datapath says the SA is near its sequence limit: IKE rekeys, make-before-break
    a.service.on_datapath_event(type("E", (), {"kind": "rekey_needed", "inner": B_INNER})())
    wait_for(lambda: "remove_sa" in a.dp.names() and "remove_sa" in b.dp.names())
    names = a.dp.names()
    assert names.index("rekey") < names.index("remove_sa")
    assert a.dp.calls[names.index("remove_sa")][1] == first_in
    new = a.dp.calls[names.index("rekey")][1]
    assert new.spi_in != first_in
    # b answered the rekey: inbound first, outbound once a's Delete of the old SA arrived
    b_names = b.dp.names()
    assert b_names.index("install_inbound") < b_names.index("replace_outbound") < b_names.index("remove_sa")
    assert b.dp.calls[b_names.index("replace_outbound")][1] == new.spi_in
    # b closes: a removes the peer
    b.service.command("close")
    wait_for(lambda: "remove_peer" in a.dp.names())
    assert any(isinstance(e, ev.IkeSaDown) and e.reason == ev.DELETED_BY_PEER for e in a.events)


def test_reconnect_keeps_the_new_tunnel(sides: tuple[Side, Side]) -> None:
    """a reconnects (INITIAL_CONTACT); b's datapath must drop only the stale SA, not the peer."""
    a, b = sides
    a.service.initiate(B, "b.example", B_INNER)
    wait_for(lambda: b.dp.names().count("add_peer") == 1)
    a.service.initiate(B, "b.example", B_INNER)  # a second session, as after a restart of a
    wait_for(lambda: b.dp.names().count("add_peer") == 2 and "remove_sa" in b.dp.names())
    assert "remove_peer" not in b.dp.names()
    stale = b.dp.calls[0][1].spi_in
    assert b.dp.calls[b.dp.names().index("remove_sa")][1] == stale
