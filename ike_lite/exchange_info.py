"""INFORMATIONAL (RFC 7296 §1.4, §2.4): Delete of CHILD and IKE SAs, liveness (DPD)."""

from __future__ import annotations

from ike_lite import events as ev
from ike_lite.child import ChildNegotiation
from ike_lite.const import (
    ExchangeType,
    ProtocolId,
)
from ike_lite.core import Child, Pending, Queued, State, Task
from ike_lite.wire import (
    Delete,
    Message,
    Payload,
)


class InformationalExchange(ChildNegotiation):
    """INFORMATIONAL: Delete (CHILD, IKE) and DPD, both roles."""

    def _start_delete_child(self, item: Queued, now: float) -> None:
        child = item.ctx.get("child")
        if not isinstance(child, Child) or child not in self.children:
            return self._pump(now)
        self._send_request(
            Task.DELETE_CHILD,
            ExchangeType.INFORMATIONAL,
            [Delete(ProtocolId.ESP, (child.spi_in,))],
            now,
            dict(item.ctx),
        )
        return None

    def _start_delete_ike(self, item: Queued, now: float) -> None:
        if self.state == State.ESTABLISHED:
            self.state = State.DELETING
        self._send_request(
            Task.DELETE_IKE, ExchangeType.INFORMATIONAL, [Delete(ProtocolId.IKE)], now, dict(item.ctx)
        )

    def _start_dpd(self, item: Queued, now: float) -> None:
        self._send_request(Task.DPD, ExchangeType.INFORMATIONAL, [], now)

    def _on_informational_response(self, pending: Pending, payloads: tuple[Payload, ...], now: float) -> None:
        if pending.task == Task.DELETE_CHILD:
            child = pending.ctx.get("child")
            reason = pending.ctx.get("reason", ev.CLOSED)
            if isinstance(child, Child):
                self._remove_child(child, str(reason))
        elif pending.task == Task.DELETE_IKE:
            reason = str(pending.ctx.get("reason", ev.CLOSED))
            message = str(pending.ctx.get("message", "tunnel closed"))
            if self.state == State.REKEYED:
                self.state = State.DEAD
                self.ep.forget(self)
            else:
                self._fail(reason, message, now)

    def _on_informational_request(self, msg: Message, payloads: tuple[Payload, ...], now: float) -> None:
        mid = msg.header.message_id
        deletes = [p for p in payloads if isinstance(p, Delete)]
        if any(d.protocol == ProtocolId.IKE for d in deletes):
            self._send_response(ExchangeType.INFORMATIONAL, mid, [], now)
            if self.state == State.REKEYED:
                self.state = State.DEAD
                self.ep.forget(self)
                return
            return self._fail(ev.DELETED_BY_PEER, f"peer {self.describe_peer()} closed the tunnel", now)
        reply: list[Payload] = []
        gone: list[Child] = []
        for d in deletes:
            if d.protocol != ProtocolId.ESP:
                continue
            for spi in d.spis:
                child = next((c for c in self.children if c.spi_out == spi), None)
                if child is not None:
                    gone.append(child)
        # A Delete crossing ours for the same SA: we still answer with our inbound SPIs.
        if gone:
            reply.append(Delete(ProtocolId.ESP, tuple(c.spi_in for c in gone)))
        self._send_response(ExchangeType.INFORMATIONAL, mid, reply, now)
        for child in gone:
            self._remove_child(child, ev.REKEYED if child.superseded else ev.DELETED_BY_PEER)
        return None
