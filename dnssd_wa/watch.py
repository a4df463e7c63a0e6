"""``--watch``: re-browse and report added/removed services.

How this works
--------------
:class:`WatchState` is pure: feed it each complete browse result and it returns the
events (``added``/``removed``; a changed service is ``removed`` then ``added``), keyed
case-insensitively by (instance, service type). :func:`next_interval` picks the polling
interval from the answers' TTLs (half the smallest TTL, clamped).

:func:`watch_poll` is the polling loop. It takes the browse coroutine, the sleep function
and the stop test as parameters (no clock or sockets here), so a DNS Push based watcher
(RFC 8765) can be slotted in next to it with the same ``emit`` contract.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from dnssd_wa.browse import Problem, Service

Event = tuple[str, Service]
BrowseOnce = Callable[[], Awaitable[tuple[list[Service], list[Problem]]]]


@dataclass
class WatchState:
    known: dict[tuple[str, str], Service] = field(default_factory=dict)

    def update(self, services: list[Service]) -> list[Event]:
        current = {s.key(): s for s in services}
        events: list[Event] = []
        for key, old in self.known.items():
            new = current.get(key)
            if new is None or _changed(old, new):
                events.append(("removed", old))
        for key, new in current.items():
            old_svc = self.known.get(key)
            if old_svc is None or _changed(old_svc, new):
                events.append(("added", new))
        self.known = current
        return events


def _changed(a: Service, b: Service) -> bool:
    return (a.host.lower(), a.port, a.txt, a.addresses) != (b.host.lower(), b.port, b.txt, b.addresses)


def next_interval(services: list[Service], min_interval: float, max_interval: float) -> float:
    """Half the smallest TTL seen, clamped to [min_interval, max_interval]."""
    if not services:
        return max_interval
    return max(min_interval, min(max_interval, min(s.ttl for s in services) / 2))


async def watch_poll(
    browse_once: BrowseOnce,
    emit: Callable[[str, Service], None],
    sleep: Callable[[float], Awaitable[None]],
    *,
    stop: Callable[[], bool],
    min_interval: float = 1.0,
    max_interval: float = 60.0,
    report: Callable[[list[Problem]], None] | None = None,
    max_rounds: int | None = None,
) -> int:
    """Poll until ``stop()``; emit each change. Returns the number of rounds done."""
    state = WatchState()
    rounds = 0
    reported: set[tuple[str, str]] = set()
    while not stop() and (max_rounds is None or rounds < max_rounds):
        services, problems = await browse_once()
        rounds += 1
        fresh = [p for p in problems if (p.name, p.message) not in reported]
        reported.update((p.name, p.message) for p in problems)
        if report is not None and fresh:
            report(fresh)
        for event, svc in state.update(services):
            emit(event, svc)
        if stop():
            break
        await sleep(next_interval(services, min_interval, max_interval))
    return rounds
