"""btmm-map-port: ask the home router (NAT-PMP / PCP) to forward UDP 4500 to this host.

Emits ``port-mapping`` records (protocol, external_address, external_port, internal_port,
lifetime, gateway, epoch, state). With ``--watch`` (the default when stdout is a pipe,
e.g. into ``btmm-register``) it keeps the mapping alive — renewing at half the lifetime,
re-mapping when the router restarts — and emits a new record whenever the external
address or port changes or the router had lost the mapping. SIGINT/SIGTERM delete the
mapping and exit 0. ``--once`` maps and exits, leaving the mapping to expire by itself.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path
from types import FrameType

from portmap.client import (
    Change,
    DatagramIgnored,
    EpochReset,
    Failure,
    Mapping,
    MappingDeleted,
    MappingFailed,
    MappingUpdated,
    Mode,
    PortMapper,
    ProtocolFallback,
)
from portmap.driver import Driver, PortRefused, Wakeup
from portmap.errors import PortmapError
from portmap.gateway import default_gateway
from tools.account_file import state_dir as resolve_state_dir
from tools.cli import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REMOTE,
    Fatal,
    Output,
    Record,
    make_parser,
    make_record,
    run,
)
from tools.status_file import clear as clear_status
from tools.status_file import publish as publish_status

PROG = "btmm-map-port"
IKE_NATT_PORT = 4500
OUTER_HINT = "btmm-register --outer ADDR:PORT"


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        PROG,
        "Map a UDP port (4500, IKE and ESP) on the home router with PCP (RFC 6887) or NAT-PMP "
        "(RFC 6886) and print the public address and port peers must use. Keeps renewing with "
        "--watch (default in a pipe) and removes the mapping on exit.",
        account=False,
        host=False,
        epilog="examples:\n  btmm-map-port --once\n  btmm-map-port | btmm-register --name \"Bob's iMac\"\n"
        "  btmm-map-port --gateway 192.168.1.1 --protocol nat-pmp --lifetime 3600",
    )
    parser.add_argument("--gateway", metavar="ADDR",
                        help="router to ask (default: the default route's gateway)")
    parser.add_argument("--internal-port", type=int, default=IKE_NATT_PORT, metavar="PORT",
                        help="local UDP port to forward to (default 4500)")
    parser.add_argument("--external-port", type=int, metavar="PORT",
                        help="external port to suggest (default: same as internal); "
                        "the router may give another")
    parser.add_argument("--lifetime", type=int, default=7200, metavar="SECONDS",
                        help="mapping lifetime to ask for (default 7200; renewed at half of what is granted)")
    parser.add_argument("--protocol", choices=[m.value for m in Mode], default=Mode.AUTO.value,
                        help="pcp, nat-pmp, or auto: PCP first, NAT-PMP when the router does not speak PCP")
    parser.add_argument("--attempts", type=int, default=4, metavar="N",
                        help="tries before concluding the router does not answer (250 ms doubling, "
                        "RFC 6886 §3.1; default 4 ≈ 4 s per protocol, 9 = the full RFC schedule ≈ 2 min)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--watch", action="store_true", default=None,
                      help="keep renewing and report changes until stopped (default when stdout is a pipe)")
    mode.add_argument("--once", action="store_true", help="map, print the result and exit")
    parser.add_argument("--state-dir", metavar="DIR",
                        help="where to publish the status for btmm-status "
                        "(default: $BTMM_STATE_DIR, then $XDG_STATE_HOME/btmm)")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    if not 1 <= args.internal_port <= 65535:
        raise Fatal(f"--internal-port {args.internal_port}: must be 1-65535")
    if args.external_port is not None and not 1 <= args.external_port <= 65535:
        raise Fatal(f"--external-port {args.external_port}: must be 1-65535")
    if not 1 <= args.lifetime <= 0xFFFFFFFF:
        raise Fatal(f"--lifetime {args.lifetime}: must be at least 1 second")
    if not 1 <= args.attempts <= 9:
        raise Fatal(f"--attempts {args.attempts}: must be 1-9")


def _gateway(arg: str | None) -> IPv4Address:
    if arg:
        try:
            return IPv4Address(arg)
        except ValueError:
            raise Fatal(f"--gateway {arg!r} is not an IPv4 address (e.g. --gateway 192.168.1.1)") from None
    try:
        return default_gateway()
    except PortmapError as exc:
        raise Fatal(f"{exc}; connect to a network or pass --gateway ADDR", EXIT_REMOTE) from None


def failure_message(event: MappingFailed, gateway: IPv4Address, port: int, elapsed: float,
                    refused: bool) -> str:
    """One line for the user: what the router said, what it means, what to do."""
    name = event.result_name
    if event.failure is Failure.NO_RESPONSE:
        why = " (it answered ICMP port unreachable: nothing listens on UDP 5351)" if refused else ""
        return (f"no NAT-PMP or PCP answer from the gateway {gateway} after {elapsed:.1f} s{why}: "
                f"there is no NAT-PMP/PCP on this network (or it is switched off on the router). "
                f"Forward UDP {port} on the router by hand and publish it with {OUTER_HINT}")
    if event.failure in (Failure.NETWORK_FAILURE, Failure.NO_RESOURCES):
        return (f"the router {gateway} answered {event.protocol.value} {name} ({event.result}): its own "
                f"outside address is private or reserved, so this is a double NAT or carrier-grade NAT "
                f"and a port mapped here cannot be reached from the Internet. Forward UDP {port} on the "
                f"outer router (or ask the provider for a public address) and use {OUTER_HINT}")
    if event.failure is Failure.NOT_AUTHORIZED:
        return (f"the router {gateway} refused to map UDP {port} ({event.protocol.value} {name}): port "
                f"mapping is switched off or not allowed for this host or port. Allow it in the router's "
                f"settings, try another --internal-port, or forward the port by hand and use {OUTER_HINT}")
    return (f"the router {gateway} refused the mapping of UDP {port}: {event.protocol.value} {name} "
            f"({event.result}). Try --protocol nat-pmp or pcp, or forward the port by hand and use "
            f"{OUTER_HINT}")


def mapping_record(mapping: Mapping, change: Change) -> Record:
    return make_record(
        "port-mapping",
        protocol=mapping.protocol.value,
        external_address=str(mapping.external_address),
        external_port=mapping.external_port,
        internal_port=mapping.internal_port,
        lifetime=mapping.lifetime,
        gateway=str(mapping.gateway),
        epoch=mapping.epoch,
        state=change.value,
    )


class _Stopper:
    """SIGINT/SIGTERM set a flag and wake the driver through a socket pair."""

    def __init__(self) -> None:
        self.stop = False
        self.rsock, self.wsock = socket.socketpair()
        self.rsock.setblocking(False)
        self.wsock.setblocking(False)
        self._old_fd = signal.set_wakeup_fd(self.wsock.fileno(), warn_on_full_buffer=False)
        self._old = {sig: signal.signal(sig, self._handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.stop = True

    def close(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        signal.set_wakeup_fd(self._old_fd)
        self.rsock.close()
        self.wsock.close()


def main_body(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check_args(args)
    out = Output.from_args(PROG, args)
    watch = bool(args.watch) if args.watch is not None else (not args.once and not sys.stdout.isatty())
    gateway = _gateway(args.gateway)
    status_dir: Path = resolve_state_dir(args.state_dir)
    try:
        driver = Driver(gateway)
    except OSError as exc:
        raise Fatal(f"cannot reach the gateway {gateway}: {exc.strerror or exc}", EXIT_REMOTE) from None
    stopper = _Stopper()
    try:
        return _run(args, out, driver, stopper, watch, status_dir)
    finally:
        stopper.close()
        driver.close()
        clear_status(status_dir, "port-mapping")


def _run(args: argparse.Namespace, out: Output, driver: Driver, stopper: _Stopper, watch: bool,
         status_dir: Path) -> int:
    gateway = driver.gateway
    out.explain(f"gateway {gateway}, local address {driver.local_address}, protocol {args.protocol}")
    if driver.announce_error:
        out.explain(driver.announce_error + " (router restarts are then noticed at the next renewal)")
    mapper = driver.new_mapper(args.internal_port, mode=Mode(args.protocol),
                               suggested_external_port=args.external_port, lifetime=args.lifetime,
                               max_attempts=args.attempts)
    wanted_port = args.external_port or args.internal_port
    t0 = time.monotonic()
    mapper.start(t0)
    refused = False
    mapped = False
    for now, event in driver.events(mapper, wake=stopper.rsock):
        if isinstance(event, Wakeup):
            if stopper.stop:
                break
            continue
        if isinstance(event, PortRefused):
            refused = True
            out.explain(f"{gateway} answered ICMP port unreachable for UDP 5351")
        elif isinstance(event, ProtocolFallback):
            out.explain(event.reason)
        elif isinstance(event, DatagramIgnored):
            out.explain(f"ignored: {event.reason}")
        elif isinstance(event, EpochReset):
            out.log(f"the router restarted ({event.protocol.value} epoch {event.previous} → "
                    f"{event.current}): mapping again")
        elif isinstance(event, MappingFailed):
            if event.fatal:
                raise Fatal(failure_message(event, gateway, args.internal_port, now - t0, refused),
                            EXIT_REMOTE)
            out.warn(f"renewal failed ({event.protocol.value} {event.result_name}); retrying")
        elif isinstance(event, MappingUpdated):
            mapped = True
            _report(out, event, wanted_port, now - t0, status_dir)
            if not watch:
                return EXIT_OK
    if not mapped:
        return EXIT_INTERRUPTED
    return _delete(out, driver, mapper)


def _report(out: Output, event: MappingUpdated, wanted_port: int, elapsed: float, status_dir: Path) -> None:
    mapping = event.mapping
    if event.change is Change.RENEWED:
        out.explain(f"renewed: {mapping.external_address}:{mapping.external_port} for {mapping.lifetime} s")
        publish_status(status_dir, "port-mapping", mapping_record(mapping, event.change))
        return
    if event.change is Change.MAPPED:
        out.explain(f"mapped in {elapsed * 1000:.1f} ms with {mapping.protocol.value}")
        if mapping.external_port != wanted_port:
            out.log(f"the router gave external port {mapping.external_port} instead of {wanted_port} "
                    "(that is fine: peers are told the port the router gave)")
    record = mapping_record(mapping, event.change)
    out.emit(record)
    publish_status(status_dir, "port-mapping", record)


def _delete(out: Output, driver: Driver, mapper: PortMapper) -> int:
    now = time.monotonic()
    mapper.delete(now)
    for _, event in driver.events(mapper, deadline=now + 3.0):
        if isinstance(event, MappingDeleted):
            if event.confirmed:
                out.explain(f"deleted the mapping of UDP {event.internal_port}")
            else:
                out.warn(f"could not confirm the deletion of the mapping ({event.reason}); "
                         "it expires with its lifetime")
            break
    return EXIT_OK


def main() -> None:
    run(PROG, main_body)
