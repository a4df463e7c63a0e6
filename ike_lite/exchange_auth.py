"""IKE_AUTH (RFC 7296 §1.2, §2.15): ID_FQDN identities, PSK AUTH, the first CHILD SA."""

from __future__ import annotations

from ike_lite import events as ev
from ike_lite.child import ChildNegotiation
from ike_lite.const import (
    AuthMethod,
    ExchangeType,
    IdType,
    NotifyType,
)
from ike_lite.core import Pending, State, Task
from ike_lite.errors import ProtocolError
from ike_lite.keys import (
    psk_auth,
)
from ike_lite.proposals import esp_proposal
from ike_lite.wire import (
    SA,
    Auth,
    Identification,
    Message,
    Notify,
    Payload,
    Proposal,
)


class AuthExchange(ChildNegotiation):
    """IKE_AUTH: ``_send_auth``/``_on_auth_response`` (initiator), ``_on_auth_request`` (responder)."""

    offered_esp: Proposal

    def _id_payload(self, initiator: bool) -> Identification:
        return Identification(initiator, IdType.FQDN, self.cfg.local_id.encode())

    def _send_auth(self, now: float) -> None:
        assert self.keys is not None
        idi = self._id_payload(True)
        auth = psk_auth(self.cfg.psk, self.msg1, self.nonce_r, self.keys.sk_pi, idi.body())
        spi_in = self.ep.new_esp_spi()
        self.offered_esp = esp_proposal(self.cfg.esp_encr, spi_in)
        tsi, tsr = self._ts_pair()
        payloads: list[Payload] = [idi]
        if self.expected_peer_id:
            payloads.append(Identification(False, IdType.FQDN, self.expected_peer_id.encode()))
        payloads += [
            Auth(AuthMethod.PSK, auth),
            Notify(NotifyType.INITIAL_CONTACT),
            SA((self.offered_esp,)),
            tsi,
            tsr,
        ]
        self.state = State.AUTH_SENT
        self._send_request(Task.AUTH, ExchangeType.IKE_AUTH, payloads, now, {"spi_in": spi_in})

    def _on_auth_response(self, pending: Pending, payloads: tuple[Payload, ...], now: float) -> None:
        assert self.keys is not None
        spi_in = pending.ctx["spi_in"]
        assert isinstance(spi_in, bytes)
        if self._notify_in(payloads, NotifyType.AUTHENTICATION_FAILED):
            return self._fail(
                ev.AUTHENTICATION_FAILED,
                f"peer {self.describe_peer()} refused our PSK — the two hosts hold different account files",
                now,
            )
        auth_p = self._get(payloads, Auth)
        idr = self._get(payloads, Identification)
        if auth_p is None or idr is None:
            error = self._first_error(payloads)
            if error is not None:
                return self._fail_on_error(error, "IKE", now)
            raise ProtocolError("IKE_AUTH response without IDr/AUTH", NotifyType.INVALID_SYNTAX)
        self.peer_id = idr.text()
        expected = psk_auth(self.cfg.psk, self.msg2, self.nonce_i, self.keys.sk_pr, idr.body())
        if auth_p.method != AuthMethod.PSK or auth_p.data != expected:
            self._queue_delete_and_fail(
                ev.AUTHENTICATION_FAILED,
                f"{self.describe_peer()} answered with an AUTH that does not match our PSK — the "
                "two hosts hold different account files",
                now,
            )
            return None
        if self.expected_peer_id and self.peer_id != self.expected_peer_id:
            self._queue_delete_and_fail(
                ev.AUTHENTICATION_FAILED,
                f"peer at {ev.fmt_addr(self.peer_addr)} identified as {self.peer_id}, expected "
                f"{self.expected_peer_id} — the tunnel-endpoint record points at another host",
                now,
            )
            return None
        self._established(now)
        error = self._first_error(payloads)
        if error is not None:
            self._queue_delete_and_fail(*self._error_text(error, "ESP"), now)
            return None
        child, reason = self._accept_child_reply(
            payloads, spi_in, self.offered_esp, self.nonce_i, self.nonce_r, b"", None, now
        )
        if child is None:
            self._queue_delete_and_fail(*reason, now)
            return None
        self._add_child(child, None, now, setup=now - self.started)
        return None

    def _on_auth_request(self, msg: Message, payloads: tuple[Payload, ...], now: float) -> None:
        assert self.keys is not None
        idi, auth_p = self._get(payloads, Identification), self._get(payloads, Auth)
        if idi is None or auth_p is None or not idi.initiator:
            raise ProtocolError("IKE_AUTH request without IDi/AUTH", NotifyType.INVALID_SYNTAX)
        self.peer_id = idi.text()
        expected = psk_auth(self.cfg.psk, self.msg1, self.nonce_r, self.keys.sk_pi, idi.body())
        allowed = self.cfg.accept_peer is None or self.cfg.accept_peer(self.peer_id)
        if auth_p.method != AuthMethod.PSK or auth_p.data != expected or not allowed:
            self._send_response(
                ExchangeType.IKE_AUTH, msg.header.message_id, [Notify(NotifyType.AUTHENTICATION_FAILED)], now
            )
            why = (
                "presented a PSK that does not match ours — the two hosts hold different account files"
                if allowed
                else "is not allowed to connect"
            )
            return self._fail(ev.AUTHENTICATION_FAILED, f"initiator {self.describe_peer()} {why}", now)
        idr = self._id_payload(False)
        auth = psk_auth(self.cfg.psk, self.msg2, self.nonce_i, self.keys.sk_pr, idr.body())
        reply: list[Payload] = [idr, Auth(AuthMethod.PSK, auth)]
        child_payloads, child, failure = self._respond_child(
            payloads, self.nonce_i, self.nonce_r, now, ignore_dh=True
        )
        reply += child_payloads
        self._send_response(ExchangeType.IKE_AUTH, msg.header.message_id, reply, now)
        self._established(now)
        if child is not None:
            self._add_child(child, None, now, setup=now - self.created)
        elif failure is not None:
            self._emit(ev.ChildSaFailed(self.handle, failure[0], failure[1]))
        if self._notify_in(payloads, NotifyType.INITIAL_CONTACT):
            # RFC 7296 §2.4: the peer forgot its older SAs; drop ours after the new one is up
            self.ep.initial_contact(self, now)
        return None
