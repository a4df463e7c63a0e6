"""A small STUN server (RFC 5389 Binding, RFC 5780 CHANGE-REQUEST) for the lab's "internet".

Why: miniupnpd refuses to forward ports when its WAN address is private or reserved, and
the lab's public range 198.18.0.0/15 is reserved (see INTEROP.md). With
``ext_perform_stun=yes`` miniupnpd sends four Binding requests (no change, change port,
change IP, change both) from four sockets; when all four answers arrive from where they
should and the mapped address equals its WAN address, it concludes it is not behind a
NAT and enables forwarding. This server answers exactly that.

It listens on ``primary:port`` and answers from ``primary|alternate : port|alt_port`` as
the CHANGE-REQUEST attribute asks, with MAPPED-ADDRESS, XOR-MAPPED-ADDRESS,
RESPONSE-ORIGIN and OTHER-ADDRESS. Run it inside the peer namespace:

    python -m tools.peers.stun --primary 198.18.0.253 --alternate 198.18.0.254

or from Python with :func:`start_stun` (a process tracked and stopped by the Lab).
"""

from __future__ import annotations

import argparse
import selectors
import signal
import socket
import struct
import subprocess
import sys
from dataclasses import dataclass
from ipaddress import IPv4Address
from types import FrameType

from tools.netns import Lab

MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
ATTR_MAPPED_ADDRESS = 0x0001
ATTR_CHANGE_REQUEST = 0x0003
ATTR_XOR_MAPPED_ADDRESS = 0x0020
ATTR_RESPONSE_ORIGIN = 0x802B
ATTR_OTHER_ADDRESS = 0x802C
CHANGE_IP = 0x04
CHANGE_PORT = 0x02
DEFAULT_PORT = 3478


class StunError(ValueError):
    """A datagram that is not a STUN Binding request we can answer."""


@dataclass(frozen=True)
class BindingRequest:
    transaction_id: bytes
    change_ip: bool
    change_port: bool


def parse_request(data: bytes) -> BindingRequest:
    if len(data) < 20:
        raise StunError("shorter than a STUN header")
    mtype, length, cookie = struct.unpack("!HHI", data[:8])
    if mtype != BINDING_REQUEST:
        raise StunError(f"message type {mtype:#06x} is not a Binding request")
    if 20 + length > len(data) or length % 4:
        raise StunError("bad STUN length")
    tid = data[8:20]
    change = 0
    pos = 20
    while pos + 4 <= 20 + length:
        atype, alen = struct.unpack("!HH", data[pos:pos + 4])
        value = data[pos + 4:pos + 4 + alen]
        if len(value) != alen:
            raise StunError("truncated attribute")
        if atype == ATTR_CHANGE_REQUEST and alen == 4:
            change = struct.unpack("!I", value)[0]
        pos += 4 + alen + (-alen % 4)
    del cookie  # RFC 3489 clients send no magic cookie; both are answered
    return BindingRequest(tid, bool(change & CHANGE_IP), bool(change & CHANGE_PORT))


def _address_attr(atype: int, address: IPv4Address, port: int, xor_with: bytes | None = None) -> bytes:
    packed = address.packed
    if xor_with is not None:
        port ^= MAGIC_COOKIE >> 16
        packed = bytes(a ^ b for a, b in zip(packed, xor_with[:4], strict=True))
    return struct.pack("!HHBBH", atype, 8, 0, 1, port) + packed


def build_response(request_data: bytes, request: BindingRequest, mapped: tuple[str, int],
                   origin: tuple[str, int], other: tuple[str, int]) -> bytes:
    cookie = request_data[4:8]
    attrs = b"".join((
        _address_attr(ATTR_MAPPED_ADDRESS, IPv4Address(mapped[0]), mapped[1]),
        _address_attr(ATTR_XOR_MAPPED_ADDRESS, IPv4Address(mapped[0]), mapped[1], cookie),
        _address_attr(ATTR_RESPONSE_ORIGIN, IPv4Address(origin[0]), origin[1]),
        _address_attr(ATTR_OTHER_ADDRESS, IPv4Address(other[0]), other[1]),
    ))
    return struct.pack("!HH", BINDING_SUCCESS, len(attrs)) + cookie + request.transaction_id + attrs


def serve(primary: str, alternate: str, port: int, alt_port: int, max_requests: int = 100_000) -> int:
    """Answer Binding requests until SIGTERM/SIGINT (or ``max_requests``); returns the count."""
    socks: dict[tuple[bool, bool], socket.socket] = {}
    for change_ip in (False, True):
        for change_port in (False, True):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((alternate if change_ip else primary, alt_port if change_port else port))
            socks[(change_ip, change_port)] = s
    stop = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sel = selectors.DefaultSelector()
    for s in socks.values():
        sel.register(s, selectors.EVENT_READ)
    answered = 0
    print(f"stun: listening on {primary}:{port} (alternate {alternate}:{alt_port})", flush=True)
    while not stop and answered < max_requests:
        for key, _ in sel.select(timeout=0.5):
            sock = key.fileobj
            if not isinstance(sock, socket.socket):
                continue
            data, peer = sock.recvfrom(2048)
            try:
                request = parse_request(data)
            except StunError as exc:
                print(f"stun: ignored datagram from {peer[0]}:{peer[1]}: {exc}", flush=True)
                continue
            reply_sock = socks[(request.change_ip, request.change_port)]
            origin = reply_sock.getsockname()
            other = socks[(True, True)].getsockname()
            reply_sock.sendto(build_response(data, request, peer, origin, other), peer)
            answered += 1
            print(f"stun: answered {peer[0]}:{peer[1]} change_ip={request.change_ip} "
                  f"change_port={request.change_port} from {origin[0]}:{origin[1]}", flush=True)
    for s in socks.values():
        s.close()
    return answered


def start_stun(lab: Lab, ns: str, primary: str, alternate: str, *, port: int = DEFAULT_PORT,
               alt_port: int = DEFAULT_PORT + 1, log_path: str | None = None) -> subprocess.Popen[bytes]:
    """Run the server inside ``ns`` as a Lab-tracked process (both addresses must exist there)."""
    import time

    argv = [sys.executable, "-m", "tools.peers.stun", "--primary", primary, "--alternate", alternate,
            "--port", str(port), "--alt-port", str(alt_port)]
    if log_path:
        with open(log_path, "ab") as log:
            proc = lab.popen(ns, argv, stdout=log, stderr=log)
    else:
        proc = lab.popen(ns, argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Ready when the primary port is bound (checked from inside the namespace).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the STUN server exited with {proc.returncode} (see {log_path})")
        out = lab.run(ns, ["ss", "-Hlun", f"sport = :{port}"], check=False).stdout
        if primary.encode() in out:
            return proc
        time.sleep(0.05)
    raise RuntimeError("the STUN server did not start listening within 10 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--primary", required=True)
    parser.add_argument("--alternate", required=True)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--alt-port", type=int, default=DEFAULT_PORT + 1)
    args = parser.parse_args()
    serve(args.primary, args.alternate, args.port, args.alt_port)


if __name__ == "__main__":
    main()
