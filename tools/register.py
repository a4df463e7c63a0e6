"""btmm-register: publish this host's record set in the account domain, keep it, remove it on exit.

One atomic, TSIG-signed UPDATE carries the whole record set (DESIGN.md §4): the host's AAAA,
PTR/SRV/TXT per ``--service``, ``_autotunnel._udp`` SRV + ``AutoTunnel-…`` A once the outer
endpoint is known (``--outer`` or ``port-mapping`` records on stdin), ``_device-info`` and
``_kerberos`` TXT, and the domain-enumeration PTRs. The command stays running: it refreshes
at 80 % + 0–5 % of the lease the server granted, re-registers when a new port mapping
arrives, and on SIGINT/SIGTERM deletes exactly its own records and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import dns.update
from rich.markup import escape
from rich.table import Table

import ula
from dnssd_wa import driver, errors, names, records, update
from dnssd_wa.errors import DnssdError, TransportFailed, UpdateFailed
from tools.account_file import Host, load_host, state_dir
from tools.cli import (
    EXIT_OK,
    EXIT_REMOTE,
    EXIT_USAGE,
    Fatal,
    Output,
    Record,
    derive,
    error_record,
    make_parser,
    read_records,
    run,
    stdin_records_available,
)
from tools.dns_cli import add_transport_arguments, server_config, verbose_hook
from tools.status_file import clear as clear_status
from tools.status_file import publish as publish_status

PROG = "btmm-register"
ONCE_ATTEMPTS = 3
MAX_BACKOFF = 60.0


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        PROG,
        "Register this host's services and tunnel endpoint in the account's DNS domain "
        "(one atomic TSIG-signed UPDATE), keep them refreshed, remove them on exit.",
        epilog="examples:\n"
        "  btmm-register --name \"Bob's iMac\" --service _rfb._tcp:5900 --service _ssh._tcp:22\n"
        "  btmm-map-port | btmm-register --service _ssh._tcp:22:u=bob\n"
        "  btmm-register --once --server ns.example.net --tls --service _smb._tcp:445",
    )
    parser.add_argument("--service", action="append", default=[], metavar="TYPE:PORT[:k=v,...]",
                        help="a service to publish, e.g. _rfb._tcp:5900 (repeatable)")
    parser.add_argument("--name", help="instance name (UTF-8; default: this machine's pretty name)")
    parser.add_argument("--outer", metavar="ADDR:PORT",
                        help="public IPv4 endpoint of the tunnel (else from port-mapping records on stdin)")
    parser.add_argument("--model", default="btmm", help="device model for _device-info (default: btmm)")
    parser.add_argument("--server", metavar="HOST[:PORT]",
                        help="update server (default: the account file's, then SRV _dns-update-tls._tcp)")
    parser.add_argument("--resolver", metavar="HOST[:PORT]",
                        help="DNS server to ask for the _dns-update-tls._tcp SRV (default: system resolver)")
    add_transport_arguments(parser, timeout_help="per-request")
    parser.add_argument("--lease", type=int, default=update.DEFAULT_LEASE, metavar="SECONDS",
                        help="Update Lease to ask for (RFC 9664; default 7200)")
    parser.add_argument("--once", action="store_true", help="register once and exit (records stay)")
    return parser


def pretty_name() -> str:
    """The machine's pretty name (/etc/machine-info PRETTY_HOSTNAME), else the hostname."""
    try:
        for line in Path("/etc/machine-info").read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "PRETTY_HOSTNAME" and value.strip():
                return value.strip().strip('"').strip("'")
    except OSError:
        pass
    return socket.gethostname().split(".")[0]


def parse_outer(text: str, what: str) -> tuple[ipaddress.IPv4Address, int]:
    addr, sep, port = text.rpartition(":")
    try:
        address = ipaddress.IPv4Address(addr)
        number = int(port)
    except ValueError:
        raise Fatal(f"{what} {text!r} must be IPV4:PORT, e.g. 198.51.100.7:4500") from None
    if not sep or not 0 < number < 65536:
        raise Fatal(f"{what} {text!r} must be IPV4:PORT with a port 1-65535")
    return address, number


class Stopped(Exception):
    """SIGINT/SIGTERM arrived while waiting to retry."""


@dataclass(frozen=True)
class Target:
    config: driver.ServerConfig
    label: str


async def resolve_target(args: argparse.Namespace, host: Host, out: Output) -> Target:
    """Server from --server, the account file, or SRV _dns-update-tls._tcp.<domain>."""
    discovered = None
    if not (args.server or host.account.server):
        try:
            resolver = driver.parse_hostport(args.resolver, driver.DNS_PORT) if args.resolver else None
            out.explain(f"no --server: looking up _dns-update-tls._tcp.{host.account.domain} SRV")
            discovered = await driver.discover_update_server(names.domain_name(host.account.domain),
                                                             resolver, explain=verbose_hook(out))
        except errors.BadName as exc:
            raise Fatal(exc.message) from None
        except TransportFailed as exc:
            raise Fatal(exc.message, EXIT_REMOTE) from None
    cfg = server_config(args, host.account.server, discovered=discovered)
    return Target(cfg, cfg.label)


def render(record: Record) -> Table:
    state = record.get("state", "?")
    table = Table(title=f"btmm-register: {state} at {record.get('server')} "
                  f"({record.get('ms', '?')} ms, lease {record.get('lease_granted') or 'none'})",
                  title_justify="left", show_header=False)
    table.add_column("record")
    for line in record.get("records", []):
        table.add_row(str(line))
    return table


class Registrar:
    """The register/refresh/remove lifecycle for one host (I/O via dnssd_wa.driver)."""

    def __init__(self, args: argparse.Namespace, out: Output, host: Host, spec: records.HostSpec,
                 target: Target) -> None:
        self.args, self.out, self.host, self.spec, self.target = args, out, host, spec, target
        self.key = update.TsigKey(host.account.tsig_name, host.account.tsig_secret,
                                  host.account.tsig_algorithm)
        self.zone = names.domain_name(host.account.domain)
        self.registered: tuple[records.RRSet, ...] = ()
        self.refresh = update.LeaseRefresh()
        self.warned_lease = False
        self.client = driver.DnsClient(target.config, explain=verbose_hook(out))
        self.stop: asyncio.Event | None = None

    def rrsets(self) -> tuple[records.RRSet, ...]:
        try:
            return records.host_records(self.spec)
        except DnssdError as exc:
            raise Fatal(exc.message) from None

    async def _send(self, msg_factory: Callable[[], dns.update.UpdateMessage],
                    rrsets: tuple[records.RRSet, ...], attempts: int | None) -> tuple[update.Reply, float]:
        delay = 0.5
        tries = 0
        while True:
            tries += 1
            t0 = time.monotonic()
            try:
                reply = await driver.send_update(self.client, msg_factory(), self.key,
                                                 zone=self.host.account.domain, rrsets=rrsets)
                return reply, (time.monotonic() - t0) * 1000
            except TransportFailed as exc:
                if exc.kind is errors.Failure.TLS_MISMATCH:
                    raise Fatal(exc.message, EXIT_USAGE) from None
                if attempts is not None and tries >= attempts:
                    raise Fatal(f"{exc.message} (gave up after {tries} attempts)", EXIT_REMOTE) from None
                self.out.warn(escape(f"{exc.message}; retrying in {delay:.1f} s"))
                if self.stop is not None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stop.wait(), delay)
                    if self.stop.is_set():
                        raise Stopped from None
                else:
                    await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)
                await self.client.close()
                self.client = driver.DnsClient(self.target.config,
                                               explain=verbose_hook(self.out))
            except UpdateFailed as exc:
                raise Fatal(exc.message, EXIT_USAGE if exc.kind.user_fixable else EXIT_REMOTE) from None

    async def register(self, state: str, source: Record | None, attempts: int | None) -> None:
        rrsets = self.rrsets()
        lease = update.Lease(self.args.lease) if self.args.lease > 0 else None
        reply, ms = await self._send(lambda: update.register_update(self.zone, rrsets, lease), rrsets,
                                     attempts)
        self.registered = rrsets
        granted = reply.lease.lease if reply.lease is not None else None
        if granted is None and lease is not None and not self.warned_lease:
            self.warned_lease = True
            self.out.warn(escape(f"{self.target.label} did not echo the Update Lease option (RFC 9664): "
                                 "the records do not expire there; they stay until this command removes "
                                 "them on exit"))
        self.refresh.registered(time.time(), granted, random.random())
        record = self._record(state, rrsets, granted, ms, source)
        self.out.emit(record)
        if not self.args.once:  # a long-running registration shows in btmm-status
            publish_status(state_dir(self.args.state_dir), "registration", {
                k: record[k] for k in ("state", "server", "zone", "host", "instance", "outer",
                                       "lease_requested", "lease_granted")
            } | {"records": len(rrsets), "registered_at": time.time()})

    async def remove(self) -> None:
        if not self.registered:
            return
        rrsets = self.registered
        _, ms = await self._send(lambda: update.remove_update(self.zone, rrsets), rrsets, ONCE_ATTEMPTS)
        self.out.emit(self._record("removed", tuple(r for r in rrsets if not r.shared or r.removable),
                                   None, ms, None))
        self.registered = ()
        clear_status(state_dir(self.args.state_dir), "registration")

    def _record(self, state: str, rrsets: tuple[records.RRSet, ...], granted: int | None, ms: float,
                source: Record | None) -> Record:
        return derive(
            source, "registration",
            state=state,
            server=self.target.label,
            zone=self.host.account.domain,
            host=self.host.fqdn,
            instance=self.spec.instance,
            records=records.record_lines(rrsets),
            lease_requested=self.args.lease,
            lease_granted=granted,
            outer=f"{self.spec.outer[0]}:{self.spec.outer[1]}" if self.spec.outer else None,
            ms=round(ms, 2),
        )


def _stdin_reader(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Record | None]) -> None:
    for record in read_records(sys.stdin, PROG):
        loop.call_soon_threadsafe(queue.put_nowait, record)
    loop.call_soon_threadsafe(queue.put_nowait, None)


def outer_from_mapping(record: Record) -> tuple[ipaddress.IPv4Address, int] | None:
    addr, port = record.get("external_address"), record.get("external_port")
    if addr is None or port is None:
        return None
    return parse_outer(f"{addr}:{port}", "port-mapping record")


async def main_async(args: argparse.Namespace, out: Output) -> int:
    host = load_host(args.account, args.host, args.state_dir)
    try:
        services = tuple(names.parse_service_spec(s) for s in args.service)
        instance = args.name if args.name is not None else pretty_name()
        names.instance_label(instance)
    except DnssdError as exc:
        raise Fatal(exc.message) from None
    outer = parse_outer(args.outer, "--outer") if args.outer else None
    spec = records.HostSpec(
        domain=host.account.domain, host_label=host.label, ula=host.ula, instance=instance,
        services=services, outer=outer, autotunnel_label=ula.autotunnel_label(host.iid),
        model=args.model, kerberos=host.kerberos)
    target = await resolve_target(args, host, out)
    reg = Registrar(args, out, host, spec, target)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Record | None] = asyncio.Queue()
    reading = stdin_records_available() and not args.outer
    if reading:
        threading.Thread(target=_stdin_reader, args=(loop, queue), daemon=True).start()
    try:
        if args.once:
            source = await _first_mapping(queue, reg, out) if reading else None
            await reg.register("registered", source, ONCE_ATTEMPTS)
            return out.exit_code()
        stop = asyncio.Event()
        reg.stop = stop
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await reg.register("registered", None, None)
            await _run_until_stopped(reg, out, queue if reading else None, stop)
        except Stopped:
            if not reg.registered:
                out.log("stopped before anything was registered")
                return out.exit_code()
        except Fatal:
            if reg.registered:  # a refresh or re-registration failed: take our records away
                reg.stop = None
                with contextlib.suppress(Fatal):
                    await reg.remove()
            raise
        reg.stop = None
        await reg.remove()
        return out.exit_code()
    finally:
        await reg.client.close()


async def _first_mapping(queue: asyncio.Queue[Record | None], reg: Registrar, out: Output) -> Record | None:
    """With --once in a pipe: the first port-mapping record (or EOF) decides the outer endpoint."""
    while True:
        record = await queue.get()
        if record is None:
            return None
        if _apply_record(record, reg, out):
            return record


def _apply_record(record: Record, reg: Registrar, out: Output) -> bool:
    """Take a stdin record; True when it changed the outer endpoint."""
    if record.get("type") == "error":
        out.emit(record)
        return False
    if record.get("type") != "port-mapping":
        return False
    try:
        outer = outer_from_mapping(record)
    except Fatal as exc:
        out.emit(error_record(PROG, exc.message, record))
        return False
    if outer is None or outer == reg.spec.outer:
        return False
    reg.spec = replace(reg.spec, outer=outer)
    return True


async def _run_until_stopped(reg: Registrar, out: Output, queue: asyncio.Queue[Record | None] | None,
                             stop: asyncio.Event) -> None:
    stop_task = asyncio.create_task(stop.wait())
    read_task: asyncio.Task[Record | None] | None = asyncio.create_task(queue.get()) if queue else None
    try:
        while not stop.is_set():
            timer = reg.refresh.get_timer()
            timeout = None if timer is None else max(0.0, timer - time.time())
            waiting: set[asyncio.Task[Any]] = {stop_task}
            if read_task is not None:
                waiting.add(read_task)
            done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if stop_task in done:
                break
            if read_task is not None and read_task in done:
                record = read_task.result()
                read_task = None if record is None else asyncio.create_task(queue.get()) if queue else None
                if record is not None and _apply_record(record, reg, out):
                    await reg.register("registered", record, None)
                continue
            if reg.refresh.due(time.time()):
                await reg.register("refreshed", None, None)
    finally:
        for task in (stop_task, read_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task


def main_body(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Output.from_args(PROG, args, renderer=render)
    if args.lease < 0:
        raise Fatal("--lease must be >= 0 seconds (0: do not ask for a lease)")
    code = asyncio.run(main_async(args, out))
    return code if code is not None else EXIT_OK


def main() -> None:
    run(PROG, main_body)
