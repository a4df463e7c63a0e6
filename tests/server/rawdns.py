"""Raw DNS exchanges that keep whatever the server answered (even TSIG errors) for inspection."""

from __future__ import annotations

import socket
import struct

import dns.message
import dns.name
import dns.rcode
import dns.rdtypes.ANY.TSIG
import dns.tsig
import dns.wire


def tcp_exchange(wire: bytes, port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> bytes:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(struct.pack("!H", len(wire)) + wire)
        header = _recv_exact(sock, 2)
        return _recv_exact(sock, struct.unpack("!H", header)[0])


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def udp_exchange(wire: bytes, port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(wire, (host, port))
        return sock.recv(65535)


def parse_unverified(wire: bytes) -> dns.message.Message:
    return dns.message.from_wire(wire, keyring=False)


def outcome(wire: bytes) -> tuple[str, str | None]:
    """(rcode text, TSIG error text or None) of a response, without verifying it."""
    msg = parse_unverified(wire)
    tsig_error = None
    if msg.tsig and msg.tsig[0].error:
        error = msg.tsig[0].error
        tsig_error = {16: "BADSIG", 17: "BADKEY", 18: "BADTIME"}.get(error, str(error))
    return dns.rcode.to_text(msg.rcode()), tsig_error


def tsig_mac_valid(wire: bytes, key: dns.tsig.Key, request_mac: bytes) -> bool:
    """Verify the MAC of a response that carries a TSIG error (dnspython refuses to)."""
    msg = parse_unverified(wire)
    if not msg.tsig:
        return False
    rdata = msg.tsig[0]
    assert isinstance(rdata, dns.rdtypes.ANY.TSIG.TSIG)
    parser = dns.wire.Parser(wire)
    _id, _flags, qd, an, ns, ar = parser.get_struct("!HHHHHH")
    for _ in range(qd):
        parser.get_name(decompress=True)
        parser.get_struct("!HH")
    start = parser.current
    for _ in range(an + ns + ar):
        start = parser.current
        parser.get_name(decompress=True)
        _t, _c, _ttl, rdlen = parser.get_struct("!HHIH")
        parser.seek(parser.current + rdlen)
    body = wire[0:10] + struct.pack("!H", ar - 1) + wire[12:start]
    try:
        ctx = dns.tsig._digest(body, key, rdata, None, request_mac, None, False)  # type: ignore[no-untyped-call]
        ctx.verify(rdata.mac)
    except dns.tsig.BadSignature:
        return False
    return True
