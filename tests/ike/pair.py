"""An in-memory initiator/responder pair wired back to back (no sockets, a fake clock)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace

from ike_lite import Config, Datagram, IkeEndpoint
from ike_lite import events as ev

PSK = b"correct horse battery staple 0123456789"
A_ADDR = ("198.18.0.1", 4500)
B_ADDR = ("198.18.0.2", 4500)
A_INNER = "fd00:1:2:3::a"
B_INNER = "fd00:1:2:3::b"


def seeded_rng(seed: int) -> Callable[[int], bytes]:
    gen = random.Random(seed)
    return lambda n: gen.randbytes(n)


def config(ident: str, inner: str, **kw: object) -> Config:
    base = Config(
        psk=PSK,
        local_id=ident,
        local_inner=inner,
        dpd_interval=None,
        ike_rekey_time=None,
        child_rekey_time=None,
        keepalive_interval=None,
        log_messages=True,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


class Pair:
    """Endpoint ``a`` (initiator by default) at A_ADDR and ``b`` at B_ADDR."""

    def __init__(
        self, a_kw: dict[str, object] | None = None, b_kw: dict[str, object] | None = None, seed: int = 1
    ) -> None:
        self.now = 1000.0
        self.a = IkeEndpoint(
            config("a.bob.members.example", A_INNER, **(a_kw or {})), seeded_rng(seed), self.now
        )
        self.b = IkeEndpoint(
            config("b.bob.members.example", B_INNER, **(b_kw or {})), seeded_rng(seed + 1000), self.now
        )
        self.events: dict[str, list[ev.Event]] = {"a": [], "b": []}
        self.drop: Callable[[str, Datagram], bool] = lambda side, d: False
        self.duplicate = False  # deliver every datagram twice (retransmission races)
        self.wire: list[tuple[str, Datagram]] = []

    def initiate(self, natt: bool = True) -> int:
        addr = B_ADDR if natt else (B_ADDR[0], 500)
        return self.a.initiate(addr, "b.bob.members.example", B_INNER, self.now, natt=natt)

    def _collect(self) -> None:
        for name, ep in (("a", self.a), ("b", self.b)):
            while (e := ep.next_event()) is not None:
                self.events[name].append(e)

    def pump(self, rounds: int = 50) -> None:
        """Deliver datagrams until both sides are quiet."""
        for _ in range(rounds):
            moved = False
            for name, src, dst, src_addr in (("a", self.a, self.b, A_ADDR), ("b", self.b, self.a, B_ADDR)):
                for d in src.datagrams_to_send(self.now):
                    moved = True
                    self.wire.append((name, d))
                    if self.drop(name, d):
                        continue
                    from_addr = src_addr if d.natt else (src_addr[0], 500)
                    for _ in range(2 if self.duplicate else 1):
                        dst.receive_datagram(d.data, from_addr, self.now, natt=d.natt)
            self._collect()
            if not moved:
                return

    def advance(self, seconds: float, step: float | None = None) -> None:
        """Move the clock, firing timers on both sides and delivering packets."""
        end = self.now + seconds
        while True:
            timers = [t for t in (self.a.get_timer(), self.b.get_timer()) if t is not None]
            nxt = min(timers) if timers else None
            if nxt is None or nxt > end:
                break
            self.now = max(self.now, nxt)
            self.a.handle_timer(self.now)
            self.b.handle_timer(self.now)
            self.pump()
        self.now = end
        self.pump()

    def of(self, side: str, kind: type[ev.Event]) -> list[ev.Event]:
        return [e for e in self.events[side] if isinstance(e, kind)]
