"""btmm-serve: the account's own authoritative DNS server (UPDATE + TSIG, DoT, leases, DNS Push).

Keys: the account file's TSIG key is bound to the account's zone. ``--tsig-key FILE`` adds
every BIND ``key`` clause of FILE; ``--tsig-key FILE:ZONE`` binds them to ZONE. Without
``:ZONE`` a key is bound to the served zone its name names — ``btmm-<zone>`` (the account
file convention), ``<zone>`` itself or any ``<label>.<zone>`` — or, when only one zone is
served, to that zone. A key may update only the zone it is bound to.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import dns.name
import dns.tsig
from rich.console import Console
from rich.table import Table

from dnssd_wa.server.core import Config, ServerCore
from dnssd_wa.server.keys import KeyEntry, KeyFileError, parse_key_file
from dnssd_wa.server.net import Server
from dnssd_wa.server.store import Store, StoreError
from dnssd_wa.server.tlsutil import fingerprint, self_signed, server_context
from tools.account_file import ACCOUNT_ENV, Account, account_path, check_private, load_account
from tools.cli import EXIT_OK, EXIT_USAGE, Fatal, Output, make_parser, make_record, run

PROG = "btmm-serve"


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        PROG,
        "Authoritative DNS server for the account's zone: RFC 2136 UPDATE with TSIG, Update Leases "
        "(RFC 9664), UDP/TCP and DNS-over-TLS, DNS Push (RFC 8765), state in SQLite.",
        host=False,
        epilog=("examples:\n  btmm-serve --listen 127.0.0.1:5300 --tls-listen 127.0.0.1:8530 --self-signed\n"
                "  btmm-serve --zone bob.members.example --tsig-key bob.key:bob.members.example "
                "--db /var/lib/btmm/serve.db\n\n" + (__doc__ or "").split("\n\n", 1)[1].strip()),
    )
    parser.add_argument("--zone", action="append", default=[], metavar="ZONE",
                        help="a zone to serve (repeatable; default: the account's domain)")
    parser.add_argument("--db", metavar="PATH",
                        help="SQLite database (default: $XDG_STATE_HOME/btmm/serve.db)")
    parser.add_argument("--listen", action="append", default=[], metavar="ADDR:PORT",
                        help="UDP+TCP listener (repeatable; default 127.0.0.1:53)")
    parser.add_argument("--tls-listen", action="append", default=[], metavar="ADDR:PORT",
                        help="DNS-over-TLS + DNS Push listener (repeatable)")
    parser.add_argument("--cert", metavar="FILE", help="TLS certificate (PEM)")
    parser.add_argument("--key", metavar="FILE", help="TLS private key (PEM, mode 0600)")
    parser.add_argument("--self-signed", action="store_true",
                        help="create (once) and use a self-signed certificate in --cert-dir")
    parser.add_argument("--cert-dir", metavar="DIR", help="where --self-signed keeps its pair "
                        "(default: $XDG_STATE_HOME/btmm/tls)")
    parser.add_argument("--tsig-key", action="append", default=[], metavar="FILE[:ZONE]",
                        help="BIND key-clause file (repeatable), optionally bound to ZONE")
    parser.add_argument("--lease-min", type=int, default=60, metavar="S", help="smallest lease granted (60)")
    parser.add_argument("--lease-max", type=int, default=7 * 86400, metavar="S",
                        help="largest lease granted (604800)")
    parser.add_argument("--rate-limit", type=float, default=50.0, metavar="N",
                        help="updates per second per key, 0 = unlimited (50)")
    parser.add_argument("--burst", type=float, default=200.0, metavar="N", help="rate-limit burst (200)")
    parser.add_argument("--sync", choices=["full", "normal"], default="full",
                        help="SQLite synchronous mode: full = durable across power loss (default), "
                        "normal = durable across a crash of this process only")
    return parser


def _state_home() -> Path:
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "btmm"


def _zone_name(text: str, what: str) -> dns.name.Name:
    try:
        return dns.name.from_text(text.rstrip(".") + ".")
    except Exception as exc:
        raise Fatal(f"{what} {text!r} is not a valid DNS name ({exc})") from exc


def _load_account(args: argparse.Namespace) -> Account | None:
    if args.account or os.environ.get(ACCOUNT_ENV) or not args.zone:
        return load_account(args.account)
    return load_account(None) if account_path(None).exists() else None


def _bind_key(key: dns.tsig.Key, zones: list[dns.name.Name], explicit: dns.name.Name | None,
              source: str) -> KeyEntry:
    if explicit is not None:
        return KeyEntry(key, explicit)
    text = key.name.to_text().rstrip(".")
    for zone in zones:
        ztext = zone.to_text().rstrip(".")
        if text.lower() in (ztext.lower(), f"btmm-{ztext}".lower()) or key.name.is_subdomain(zone):
            return KeyEntry(key, zone)
    if len(zones) == 1:
        return KeyEntry(key, zones[0])
    raise Fatal(f"{source}: cannot tell which zone key {text} may update; "
                "write --tsig-key FILE:ZONE", EXIT_USAGE)


def _keys(args: argparse.Namespace, account: Account | None, zones: list[dns.name.Name]) -> list[KeyEntry]:
    entries: list[KeyEntry] = []
    if account is not None:
        zone = _zone_name(account.zone, "account domain")
        if zone in zones:
            key = dns.tsig.Key(dns.name.from_text(account.tsig_name), account.tsig_secret,
                               dns.tsig.HMAC_SHA256)
            entries.append(KeyEntry(key, zone))
    for spec in args.tsig_key:
        path_text, explicit = spec, None
        if not Path(spec).exists() and ":" in spec:
            path_text, _, zone_text = spec.rpartition(":")
            explicit = _zone_name(zone_text, "--tsig-key zone")
            if explicit not in zones:
                raise Fatal(f"--tsig-key {spec}: zone {explicit} is not served; add --zone {explicit}")
        path = Path(path_text)
        try:
            check_private(path, "TSIG key file")
            text = path.read_text()
        except OSError as exc:
            raise Fatal(f"cannot read TSIG key file {path}: {exc.strerror}; check the path") from exc
        try:
            keys = parse_key_file(text, str(path))
        except KeyFileError as exc:
            raise Fatal(str(exc)) from exc
        entries.extend(_bind_key(key, zones, explicit, str(path)) for key in keys)
    seen: dict[dns.name.Name, KeyEntry] = {}
    for entry in entries:
        if entry.name in seen and seen[entry.name].key.secret != entry.key.secret:
            raise Fatal(f"two different TSIG keys are named {entry.name}; key names must be unique")
        seen[entry.name] = entry
    return list(seen.values())


def _check_address(text: str, flag: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536 or not host:
        raise Fatal(f"{flag} {text!r}: expected ADDR:PORT such as 127.0.0.1:5300")
    return text


class Logger:
    def __init__(self, out: Output) -> None:
        self.out = out
        self.console = Console(stderr=True, highlight=False)

    def __call__(self, event: dict[str, Any]) -> None:
        if self.out.json_mode:
            record = make_record("log", stage=PROG, time=round(time.time(), 3), **event)
            sys.stderr.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
            sys.stderr.flush()
            return
        if event.get("event") == "update":
            color = "green" if event["rcode"] == "NOERROR" else "red"
            self.console.print(f"[dim]{PROG}:[/dim] update from {event['client']} key {event['key']} "
                               f"zone {event['zone']} [{color}]{event['rcode']}[/{color}] {event['what']}",
                               markup=True, highlight=False)
        elif event.get("event") == "expire":
            self.console.print(f"[dim]{PROG}:[/dim] lease ended: {event['records']} records "
                               f"({event['what']})", markup=True, highlight=False)
        else:
            self.console.print(f"[dim]{PROG}:[/dim] {event}", markup=False, highlight=False)


def _banner(log: Logger, ready: dict[str, Any], keys: list[KeyEntry], extra: dict[str, Any]) -> None:
    if log.out.json_mode:
        log({"event": "start", "zones": ready["zones"], "listeners": ready["listeners"],
             "keys": [{"name": k.name.to_text(), "zone": k.zone.to_text()} for k in keys], **extra})
        return
    table = Table(title=f"{PROG} ready", title_justify="left", show_header=False)
    table.add_column("what", style="bold cyan")
    table.add_column("value")
    table.add_row("zones", ", ".join(ready["zones"]))
    for listener in ready["listeners"]:
        table.add_row(listener["proto"], listener["address"])
    for k in keys:
        table.add_row("key", f"{k.name} → {k.zone}")
    for name, value in extra.items():
        table.add_row(name, str(value))
    log.console.print(table)


async def _serve(args: argparse.Namespace, out: Output) -> int:
    account = _load_account(args)
    zones = [_zone_name(z, "--zone") for z in args.zone]
    if not zones:
        if account is None:
            raise Fatal("no zone to serve: give --zone ZONE or an account file (--account)")
        zones = [_zone_name(account.zone, "account domain")]
    keys = _keys(args, account, zones)
    listen = [_check_address(a, "--listen") for a in (args.listen or ["127.0.0.1:53"])]
    tls_listen = [_check_address(a, "--tls-listen") for a in args.tls_listen]
    if args.lease_min < 1 or args.lease_max < args.lease_min:
        raise Fatal("--lease-min must be ≥ 1 and ≤ --lease-max")
    ssl_ctx, cert_file = None, None
    if args.self_signed and (args.cert or args.key):
        raise Fatal("--self-signed and --cert/--key exclude each other; give one of them")
    if tls_listen:
        if args.self_signed:
            cert_dir = Path(args.cert_dir) if args.cert_dir else _state_home() / "tls"
            names = [z.to_text() for z in zones] + [f"ns.{z.to_text()}" for z in zones]
            hosts = [a.rpartition(":")[0].strip("[]") for a in tls_listen]
            cert_file, key_file = self_signed(cert_dir, names, hosts)
        elif args.cert and args.key:
            cert_file, key_file = Path(args.cert), Path(args.key)
            check_private(key_file, "TLS key file")
        else:
            raise Fatal("--tls-listen needs --cert FILE --key FILE, or --self-signed")
        try:
            ssl_ctx = server_context(cert_file, key_file)
        except (OSError, ValueError) as exc:
            raise Fatal(f"cannot load the TLS certificate/key: {exc}") from exc
    db = Path(args.db) if args.db else _state_home() / "serve.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    try:
        store = Store(db, sync=args.sync)
    except StoreError as exc:
        raise Fatal(str(exc)) from exc
    log = Logger(out)
    tls_port = int(tls_listen[0].rpartition(":")[2]) if tls_listen else None
    wildcard = {"0.0.0.0", "::"}  # noqa: S104 - only compared against, never bound here
    ns_addresses = sorted({a.rpartition(":")[0].strip("[]") for a in listen + tls_listen
                           if a.rpartition(":")[0].strip("[]") not in wildcard}) or ["127.0.0.1"]
    config = Config(lease_min=args.lease_min, lease_max=args.lease_max, rate=args.rate_limit,
                    burst=args.burst, ns_addresses=ns_addresses, tls_port=tls_port)
    core = ServerCore(store, zones, keys, config, time.time(), log=log)
    server = Server(core)
    try:
        await server.start(listen, tls_listen, ssl_ctx)
    except OSError as exc:
        await server.close()
        raise Fatal(f"cannot listen: {exc.strerror or exc}; is another server on that port?", 3) from exc
    if tls_port == 0:  # an ephemeral TLS port: the SRV records must carry the real one
        real = next(int(li["address"].rpartition(":")[2]) for li in server.listeners if li["proto"] == "tls")
        for zone in core.zones.values():
            zone.install_server_records(ns_addresses, real)
    # Everything loaded so far (modules, zones, keys) lives as long as the server: move it out
    # of the collector's sight, so a full collection scans only what requests created since
    # (without this a gen-2 collection around the 530th registration stalled one request
    # for 17-24 ms here).
    gc.collect()
    gc.freeze()
    ready = make_record("server", state="ready", zones=[z.to_text() for z in zones],
                        listeners=server.listeners, gc_frozen=gc.get_freeze_count())
    if cert_file is not None:
        ready["cert_file"] = str(cert_file)
        ready["fingerprint"] = fingerprint(cert_file)
    out.emit(ready)
    records = sum(z.records for z in core.zones.values())
    _banner(log, ready, keys, {"db": str(db), "records": records,
                               "purged_expired": sum(core.purged.values()),
                               "leases": f"{args.lease_min}-{args.lease_max} s"})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log({"event": "stop"})
    await server.close()
    store.close()
    return EXIT_OK


def main_body(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Output.from_args(PROG, args)
    return asyncio.run(_serve(args, out))


def main() -> None:
    run(PROG, main_body)
