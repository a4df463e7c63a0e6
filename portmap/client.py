"""The port-mapping client: a sans-I/O state machine for one UDP (or TCP) port.

How this works
--------------
:class:`PortMapper` holds one mapping on one gateway and has the aioquic surface:
``start(now)``, ``datagrams_to_send(now)``, ``receive_datagram(data, addr, now)``,
``get_timer()``, ``handle_timer(now)``, ``delete(now)`` and ``next_event()``. It never
touches a socket or a clock: the driver (``portmap/driver.py``) or a test feeds it bytes
and times. The PCP mapping nonce is a constructor argument (random in the driver, fixed
in tests) and is kept for every renewal and the delete, as RFC 6887 §11.2 requires.

A *round* is what the client does to (re)create the mapping:

* PCP (RFC 6887 §11): one MAP request; the reply holds the external address and port.
* NAT-PMP (RFC 6886): the external address (opcode 0, §3.2), then the map (opcode 1/2,
  §3.3). Both are asked in every round, so an address change is noticed at the latest
  at the next renewal even if the announcement was lost.

Each request is one :class:`_Transaction`: sent at once, then again after 250 ms,
500 ms, 1 s… doubling (RFC 6886 §3.1) until ``max_attempts`` sends (9 by default); if
the last wait (64 s for 9) passes without a reply the gateway is declared silent.
The same schedule is used for PCP, so that a gateway without PCP is noticed as fast as
one without NAT-PMP (RFC 6887 §8.1.1 would start at 3 s).

``Mode.AUTO`` tries PCP first and falls back to NAT-PMP when the gateway answers with
a version-0 (NAT-PMP) message, with UNSUPP_VERSION for a version we do not speak, or not
at all (RFC 6887 Appendix A). A success arms the renewal at half the granted lifetime
(RFC 6886 §3.3 / RFC 6887 §11.2.1); a renewal suggests the external port (and, for PCP,
address) it holds.

Every reply and announcement (RFC 6886 §3.2.1 / RFC 6887 §14.1: sent by the gateway to
224.0.0.1:5350) is checked against the last epoch (``portmap.epoch``): an epoch that goes
back means the gateway restarted and lost the mapping, so the client maps again at once
and reports the new mapping as ``remapped``. An announced address change updates the
mapping (``changed``).

Datagrams from anyone but the gateway's port 5351, undecodable bytes and replies that
do not belong to the outstanding request are dropped with a :class:`DatagramIgnored`
event naming the reason; nothing here raises on network input.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace
from enum import StrEnum
from ipaddress import IPv4Address

from portmap.epoch import EpochSample, natpmp_epoch_ok, pcp_epoch_ok
from portmap.errors import ClientError, DecodeError, EncodeError
from portmap.wire import (
    IPPROTO_TCP,
    IPPROTO_UDP,
    NONCE_LEN,
    SERVER_PORT,
    MapData,
    NatPmpExternalAddressRequest,
    NatPmpExternalAddressResponse,
    NatPmpHeaderResponse,
    NatPmpMapRequest,
    NatPmpMapResponse,
    NatPmpOpcode,
    NatPmpResult,
    PcpOpcode,
    PcpRequest,
    PcpResponse,
    PcpResult,
    PcpVersionZeroReply,
    Response,
    decode_response,
    natpmp_result_name,
    pcp_result_name,
    unmap,
    v4_mapped,
)

INITIAL_INTERVAL = 0.25  # RFC 6886 §3.1
MAX_ATTEMPTS = 9  # RFC 6886 §3.1: 250 ms doubling, 9 tries (last wait 64 s)
DEFAULT_LIFETIME = 7200  # RFC 6886 §3.3 recommends two hours
RETRY_AFTER_ERROR = 30.0  # a transient error during renewal: try again after this long


class Protocol(StrEnum):
    PCP = "pcp"
    NATPMP = "nat-pmp"


class Mode(StrEnum):
    AUTO = "auto"
    PCP = "pcp"
    NATPMP = "nat-pmp"


class State(StrEnum):
    IDLE = "idle"
    MAPPING = "mapping"  # first round in flight
    MAPPED = "mapped"  # holding a mapping (a renewal may be in flight)
    DELETING = "deleting"
    DELETED = "deleted"
    FAILED = "failed"


class Failure(StrEnum):
    NO_RESPONSE = "no-response"
    NOT_AUTHORIZED = "not-authorized"
    NETWORK_FAILURE = "network-failure"  # NAT-PMP 3, PCP 7
    NO_RESOURCES = "no-resources"  # NAT-PMP 4, PCP 8
    UNSUPPORTED = "unsupported"  # version, opcode, option or protocol not supported
    REFUSED = "refused"  # any other result code


class Change(StrEnum):
    MAPPED = "mapped"  # first mapping
    RENEWED = "renewed"  # same address and port
    CHANGED = "changed"  # external address or port differs from before
    REMAPPED = "remapped"  # the gateway had lost it (epoch reset) and we created it again


@dataclass(frozen=True)
class Mapping:
    protocol: Protocol
    gateway: IPv4Address
    external_address: IPv4Address
    external_port: int
    internal_port: int
    lifetime: int
    epoch: int
    granted_at: float


@dataclass(frozen=True)
class MappingUpdated:
    mapping: Mapping
    change: Change


@dataclass(frozen=True)
class MappingDeleted:
    internal_port: int
    confirmed: bool  # False: the gateway did not confirm (no reply or an error)
    reason: str = ""


@dataclass(frozen=True)
class MappingFailed:
    failure: Failure
    protocol: Protocol
    result: int | None  # the protocol's result code, None for no reply
    result_name: str
    fatal: bool  # the client gave up (state FAILED); else it will retry by itself
    renewing: bool  # it happened while renewing an existing mapping


@dataclass(frozen=True)
class ProtocolFallback:
    reason: str


@dataclass(frozen=True)
class EpochReset:
    protocol: Protocol
    previous: int
    current: int


@dataclass(frozen=True)
class DatagramIgnored:
    reason: str


Event = MappingUpdated | MappingDeleted | MappingFailed | ProtocolFallback | EpochReset | DatagramIgnored


@dataclass
class _Transaction:
    kind: str  # "address", "map" or "delete"
    protocol: Protocol
    payload: bytes
    max_attempts: int
    send_at: float
    interval: float = INITIAL_INTERVAL
    attempts: int = 0
    give_up_at: float | None = None


_NATPMP_FAILURES: dict[int, Failure] = {
    NatPmpResult.UNSUPPORTED_VERSION: Failure.UNSUPPORTED,
    NatPmpResult.NOT_AUTHORIZED: Failure.NOT_AUTHORIZED,
    NatPmpResult.NETWORK_FAILURE: Failure.NETWORK_FAILURE,
    NatPmpResult.OUT_OF_RESOURCES: Failure.NO_RESOURCES,
    NatPmpResult.UNSUPPORTED_OPCODE: Failure.UNSUPPORTED,
}
_PCP_FAILURES: dict[int, Failure] = {
    PcpResult.UNSUPP_VERSION: Failure.UNSUPPORTED,
    PcpResult.NOT_AUTHORIZED: Failure.NOT_AUTHORIZED,
    PcpResult.UNSUPP_OPCODE: Failure.UNSUPPORTED,
    PcpResult.UNSUPP_OPTION: Failure.UNSUPPORTED,
    PcpResult.UNSUPP_PROTOCOL: Failure.UNSUPPORTED,
    PcpResult.NETWORK_FAILURE: Failure.NETWORK_FAILURE,
    PcpResult.NO_RESOURCES: Failure.NO_RESOURCES,
    PcpResult.USER_EX_QUOTA: Failure.NO_RESOURCES,
}
_TRANSIENT = {Failure.NETWORK_FAILURE, Failure.NO_RESOURCES, Failure.NO_RESPONSE}


class PortMapper:
    """One port mapping on one gateway, kept alive until deleted (see the module notes)."""

    def __init__(
        self,
        *,
        gateway: IPv4Address,
        client_address: IPv4Address,
        internal_port: int,
        nonce: bytes,
        mode: Mode = Mode.AUTO,
        suggested_external_port: int | None = None,
        lifetime: int = DEFAULT_LIFETIME,
        transport: int = IPPROTO_UDP,
        max_attempts: int = MAX_ATTEMPTS,
        renew_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        if len(nonce) != NONCE_LEN:
            raise EncodeError(f"PCP mapping nonce must be {NONCE_LEN} bytes, got {len(nonce)}")
        if not 1 <= internal_port <= 0xFFFF:
            raise EncodeError(f"internal port must be 1-65535, got {internal_port}")
        if suggested_external_port is not None and not 0 <= suggested_external_port <= 0xFFFF:
            raise EncodeError(f"external port must be 0-65535, got {suggested_external_port}")
        if not 1 <= lifetime <= 0xFFFFFFFF:
            raise EncodeError(f"lifetime must be 1..2^32-1 seconds, got {lifetime}")
        if transport not in (IPPROTO_UDP, IPPROTO_TCP):
            raise EncodeError(f"transport must be UDP (17) or TCP (6), got {transport}")
        if not (1 <= max_attempts <= 16 and 1 <= renew_attempts <= 16):
            raise EncodeError(f"attempts must be 1-16, got {max_attempts}/{renew_attempts}")
        self.gateway = gateway
        self.client_address = client_address
        self.internal_port = internal_port
        self.nonce = bytes(nonce)
        self.mode = mode
        self.lifetime = lifetime
        self.transport = transport
        self.max_attempts = max_attempts  # first contact
        self.renew_attempts = renew_attempts  # once a mapping is held
        self.protocol = Protocol.NATPMP if mode is Mode.NATPMP else Protocol.PCP
        self.state = State.IDLE
        self._suggested_port = internal_port if suggested_external_port is None else suggested_external_port
        self._mapping: Mapping | None = None
        self._tx: _Transaction | None = None
        self._renew_at: float | None = None
        self._pending_address: IPv4Address | None = None
        self._epoch: EpochSample | None = None
        self._remap = False
        self._sent_any = False
        self._events: deque[Event] = deque()

    # ------------------------------------------------------------------ public surface
    @property
    def mapping(self) -> Mapping | None:
        return self._mapping

    def start(self, now: float) -> None:
        """Begin the first round (the first datagram is due at ``now``)."""
        if self.state is not State.IDLE:
            raise ClientError(f"start() in state {self.state.value}")
        self.state = State.MAPPING
        self._begin_round(now)

    def delete(self, now: float, max_attempts: int = 3) -> None:
        """Ask the gateway to drop the mapping (lifetime 0, RFC 6886 §3.4 / RFC 6887 §15)."""
        if self.state in (State.DELETING, State.DELETED):
            return
        self._renew_at = None
        if not self._sent_any or self.state in (State.IDLE, State.FAILED):
            self.state = State.DELETED
            self._tx = None
            return
        self.state = State.DELETING
        self._tx = _Transaction("delete", self.protocol, self._map_payload(0), max_attempts, now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, tuple[str, int]]]:
        tx = self._tx
        if tx is None or tx.attempts >= tx.max_attempts or now < tx.send_at:
            return []
        tx.attempts += 1
        self._sent_any = True
        if tx.attempts >= tx.max_attempts:
            tx.give_up_at = now + tx.interval
            tx.send_at = float("inf")
        else:
            tx.send_at = now + tx.interval
        tx.interval *= 2
        return [(tx.payload, (str(self.gateway), SERVER_PORT))]

    def get_timer(self) -> float | None:
        times = [t for t in (self._renew_at,) if t is not None]
        if self._tx is not None:
            times.append(self._tx.give_up_at if self._tx.give_up_at is not None else self._tx.send_at)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        tx = self._tx
        if tx is not None and tx.give_up_at is not None and now >= tx.give_up_at:
            self._tx = None
            self._no_response(tx, now)
        if self._tx is None and self._renew_at is not None and now >= self._renew_at:
            self._renew_at = None
            self._begin_round(now)

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def receive_datagram(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        if addr[0] != str(self.gateway) or addr[1] != SERVER_PORT:
            self._ignore(f"datagram from {addr[0]}:{addr[1]}, not from the gateway {self.gateway}:5351")
            return
        try:
            message = decode_response(data)
        except DecodeError as exc:
            self._ignore(f"undecodable datagram from the gateway: {exc}")
            return
        self._dispatch(message, now)

    # ------------------------------------------------------------------ rounds and requests
    def _attempts(self) -> int:
        return self.max_attempts if self._mapping is None else self.renew_attempts

    def _begin_round(self, now: float) -> None:
        self._pending_address = None
        if self.protocol is Protocol.PCP:
            self._tx = _Transaction("map", Protocol.PCP, self._map_payload(self.lifetime),
                                    self._attempts(), now)
        else:
            self._tx = _Transaction("address", Protocol.NATPMP, NatPmpExternalAddressRequest().encode(),
                                    self._attempts(), now)

    def _map_payload(self, lifetime: int) -> bytes:
        held = self._mapping
        if self.protocol is Protocol.PCP:
            if lifetime == 0:
                port, address = 0, v4_mapped(IPv4Address(0))
            elif held is not None:
                port, address = held.external_port, v4_mapped(held.external_address)
            else:
                port, address = self._suggested_port, v4_mapped(IPv4Address(0))
            body = MapData(self.nonce, self.transport, self.internal_port, port, address)
            return PcpRequest(PcpOpcode.MAP, lifetime, v4_mapped(self.client_address), body).encode()
        opcode = NatPmpOpcode.MAP_UDP if self.transport == IPPROTO_UDP else NatPmpOpcode.MAP_TCP
        if lifetime == 0:
            port = 0
        else:
            port = held.external_port if held is not None else self._suggested_port
        return NatPmpMapRequest(opcode, self.internal_port, port, lifetime).encode()

    # ------------------------------------------------------------------ replies
    def _dispatch(self, message: Response, now: float) -> None:
        tx = self._tx
        if isinstance(message, PcpResponse):
            self._on_pcp(message, tx, now)
        elif isinstance(message, NatPmpExternalAddressResponse):
            self._on_natpmp_address(message, tx, now)
        elif isinstance(message, NatPmpMapResponse):
            self._on_natpmp_map(message, tx, now)
        elif tx is not None and tx.protocol is Protocol.PCP:
            # A version-0 reply to PCP: a NAT-PMP-only gateway, or miniupnpd's in-place
            # answer to a PCP request it could not parse.
            if isinstance(message, PcpVersionZeroReply):
                why = f"the gateway answered PCP with a version-0 {message.result_name} reply"
            else:
                why = f"the gateway answered PCP with NAT-PMP {message.result_name}"
            self._pcp_not_spoken(why, message.result, tx, now)
        elif isinstance(message, NatPmpHeaderResponse) and tx is not None and tx.kind != "delete" \
                and message.opcode == self._tx_natpmp_opcode(tx):
            self._epoch_seen(Protocol.NATPMP, message.epoch, now)
            self._fail(self._natpmp_failure(message.result), Protocol.NATPMP, message.result,
                       message.result_name, now)
        else:
            self._ignore(f"unexpected {type(message).__name__} from the gateway")

    def _tx_natpmp_opcode(self, tx: _Transaction) -> int:
        if tx.kind == "address":
            return NatPmpOpcode.EXTERNAL_ADDRESS
        return NatPmpOpcode.MAP_UDP if self.transport == IPPROTO_UDP else NatPmpOpcode.MAP_TCP

    def _on_pcp(self, message: PcpResponse, tx: _Transaction | None, now: float) -> None:
        if message.opcode == PcpOpcode.ANNOUNCE:
            if message.result == PcpResult.SUCCESS:
                self._announcement(Protocol.PCP, message.epoch, None, now)
            else:
                self._ignore(f"PCP ANNOUNCE with result {message.result_name}")
            return
        if tx is None or tx.protocol is not Protocol.PCP:
            self._ignore(f"PCP {message.opcode} reply with no PCP request outstanding")
            return
        if message.result == PcpResult.UNSUPP_VERSION and message.version != 2:
            self._pcp_not_spoken(f"the gateway speaks PCP version {message.version} only",
                                 message.result, tx, now)
            return
        if message.opcode != PcpOpcode.MAP:
            self._ignore(f"PCP opcode {message.opcode} reply to a MAP request")
            return
        data = message.data
        if isinstance(data, MapData):
            if data.nonce != self.nonce or data.internal_port != self.internal_port \
                    or data.protocol != self.transport:
                self._ignore("PCP MAP reply for another mapping (nonce, protocol or port differ)")
                return
        elif message.result == PcpResult.SUCCESS:
            self._ignore("PCP MAP success reply without the MAP body")
            return
        if self._epoch_seen(Protocol.PCP, message.epoch, now) and self._mapping is not None:
            self._remap = True
        if tx.kind == "delete":
            # miniupnpd answers NO_RESOURCES when the mapping is already gone.
            gone = message.result in (PcpResult.SUCCESS, PcpResult.NO_RESOURCES)
            self._deleted(gone, "" if gone else f"PCP {message.result_name}")
            return
        if message.result != PcpResult.SUCCESS:
            if message.result == PcpResult.UNSUPP_VERSION:
                self._pcp_not_spoken("the gateway answered UNSUPP_VERSION", message.result, tx, now)
                return
            self._fail(_PCP_FAILURES.get(message.result, Failure.REFUSED), Protocol.PCP, message.result,
                       message.result_name, now, retry_after=float(message.lifetime or RETRY_AFTER_ERROR))
            return
        if not isinstance(data, MapData):  # unreachable: a success without a body was dropped above
            return
        external = unmap(data.external_address)
        if not isinstance(external, IPv4Address):
            self._fail(Failure.REFUSED, Protocol.PCP, message.result,
                       f"IPv6 external address {external} for an IPv4 mapping", now)
            return
        self._granted(Protocol.PCP, external, data.external_port, message.lifetime, message.epoch, now)

    def _on_natpmp_address(self, message: NatPmpExternalAddressResponse, tx: _Transaction | None,
                           now: float) -> None:
        if tx is None or tx.kind != "address":
            # Unsolicited: an announcement (RFC 6886 §3.2.1).
            if message.result == NatPmpResult.SUCCESS:
                self._announcement(Protocol.NATPMP, message.epoch, message.external_address, now)
            else:
                self._ignore(f"NAT-PMP address announcement with result {message.result_name}")
            return
        reset = self._epoch_seen(Protocol.NATPMP, message.epoch, now)
        if message.result != NatPmpResult.SUCCESS:
            self._fail(self._natpmp_failure(message.result), Protocol.NATPMP, message.result,
                       message.result_name, now)
            return
        if reset and self._mapping is not None:
            self._remap = True
        self._pending_address = message.external_address
        self._tx = _Transaction("map", Protocol.NATPMP, self._map_payload(self.lifetime),
                                self._attempts(), now)

    def _on_natpmp_map(self, message: NatPmpMapResponse, tx: _Transaction | None, now: float) -> None:
        if tx is None or tx.protocol is not Protocol.NATPMP or tx.kind == "address" \
                or message.opcode != self._tx_natpmp_opcode(tx) \
                or message.internal_port != self.internal_port:
            self._ignore("NAT-PMP map reply that does not match the outstanding request")
            return
        if self._epoch_seen(Protocol.NATPMP, message.epoch, now) and self._mapping is not None:
            self._remap = True
        if tx.kind == "delete":
            ok = message.result == NatPmpResult.SUCCESS
            self._deleted(ok, "" if ok else f"NAT-PMP {message.result_name}")
            return
        if message.result != NatPmpResult.SUCCESS:
            self._fail(self._natpmp_failure(message.result), Protocol.NATPMP, message.result,
                       message.result_name, now)
            return
        address = self._pending_address
        if address is None:  # cannot happen: a map transaction follows an address reply
            self._ignore("NAT-PMP map reply before the external address is known")
            return
        self._granted(Protocol.NATPMP, address, message.external_port, message.lifetime, message.epoch, now)

    # ------------------------------------------------------------------ outcomes
    def _granted(self, protocol: Protocol, address: IPv4Address, port: int, lifetime: int, epoch: int,
                 now: float) -> None:
        self._tx = None
        if lifetime == 0:
            name = "a zero lifetime"
            self._fail(Failure.REFUSED, protocol, 0, f"SUCCESS with {name}", now)
            return
        previous = self._mapping
        mapping = Mapping(protocol, self.gateway, address, port, self.internal_port, lifetime, epoch, now)
        if previous is None:
            change = Change.MAPPED
        elif self._remap:
            change = Change.REMAPPED
        elif (previous.external_address, previous.external_port) != (address, port):
            change = Change.CHANGED
        else:
            change = Change.RENEWED
        self._remap = False
        self._mapping = mapping
        self.state = State.MAPPED
        self._renew_at = now + lifetime / 2
        self._events.append(MappingUpdated(mapping, change))

    def _deleted(self, confirmed: bool, reason: str) -> None:
        self._tx = None
        self._renew_at = None
        self.state = State.DELETED
        self._mapping = None
        self._events.append(MappingDeleted(self.internal_port, confirmed, reason))

    def _fail(self, failure: Failure, protocol: Protocol, result: int | None, result_name: str,
              now: float, retry_after: float = RETRY_AFTER_ERROR) -> None:
        self._tx = None
        renewing = self._mapping is not None
        fatal = not (renewing and failure in _TRANSIENT)
        self._events.append(MappingFailed(failure, protocol, result, result_name, fatal, renewing))
        if fatal:
            self.state = State.FAILED
            self._renew_at = None
            self._mapping = None
        else:
            self._renew_at = now + max(1.0, retry_after)

    def _no_response(self, tx: _Transaction, now: float) -> None:
        if tx.kind == "delete":
            self._deleted(False, "no reply from the gateway")
            return
        if tx.protocol is Protocol.PCP and self.mode is Mode.AUTO and self._mapping is None:
            self._fall_back("no reply to PCP", now)
            return
        self._fail(Failure.NO_RESPONSE, tx.protocol, None, "no reply", now, retry_after=1.0)
        if self.state is State.MAPPED:
            self._renew_at = now  # keep trying right away with a fresh schedule

    def _pcp_not_spoken(self, why: str, result: int, tx: _Transaction, now: float) -> None:
        if self.mode is Mode.AUTO and tx.kind != "delete":
            self._fall_back(why, now)
        elif tx.kind == "delete":
            self._deleted(False, why)
        else:
            self._fail(Failure.UNSUPPORTED, Protocol.PCP, result, why, now)

    def _fall_back(self, why: str, now: float) -> None:
        self._events.append(ProtocolFallback(f"{why}: falling back to NAT-PMP"))
        self.protocol = Protocol.NATPMP
        self._epoch = None
        self._begin_round(now)

    @staticmethod
    def _natpmp_failure(result: int) -> Failure:
        return _NATPMP_FAILURES.get(result, Failure.REFUSED)

    # ------------------------------------------------------------------ epochs and announcements
    def _epoch_seen(self, protocol: Protocol, epoch: int, now: float) -> bool:
        """Record the epoch; True (and an EpochReset event) when the gateway lost its state."""
        previous = self._epoch
        self._epoch = EpochSample(epoch, now)
        if previous is None:
            return False
        check = pcp_epoch_ok if protocol is Protocol.PCP else natpmp_epoch_ok
        if check(previous, epoch, now):
            return False
        self._events.append(EpochReset(protocol, previous.epoch, epoch))
        return True

    def _announcement(self, protocol: Protocol, epoch: int, address: IPv4Address | None,
                      now: float) -> None:
        reset = self._epoch_seen(protocol, epoch, now)
        held = self._mapping
        if held is None or self.state is not State.MAPPED:
            return
        if reset:
            if self._tx is None:
                self._remap = True
                self._renew_at = None
                self._begin_round(now)
            else:
                self._remap = True
            return
        if address is not None and address != held.external_address:
            updated = replace(held, external_address=address, epoch=epoch)
            self._mapping = updated
            self._events.append(MappingUpdated(updated, Change.CHANGED))

    def _ignore(self, reason: str) -> None:
        self._events.append(DatagramIgnored(reason))


def result_name(protocol: Protocol, result: int) -> str:
    return pcp_result_name(result) if protocol is Protocol.PCP else natpmp_result_name(result)
