"""btmm-ula: print the account's ULA prefix and this host's ULA address."""

from __future__ import annotations

import argparse
import sys

from rich.table import Table

import ula
from tools.account_file import (
    check_host_label,
    default_host_label,
    load_account,
    load_or_create_identity,
    state_dir,
)
from tools.cli import (
    EXIT_OK,
    Fatal,
    Output,
    Record,
    derive,
    error_record,
    make_parser,
    make_record,
    read_records,
    run,
    stdin_records_available,
)

PROG = "btmm-ula"


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        PROG,
        "Print ULA facts: `prefix` the account's /48, `address` this host's ULA, interface ID, "
        "AutoTunnel label and LKDC realm; `eui64 MAC` a modified EUI-64 (RFC 4291 App. A).",
        epilog="examples:\n  btmm-ula prefix\n  btmm-ula address --host bobs-imac\n"
        "  btmm-ula eui64 00:1b:63:84:45:e6",
    )
    parser.add_argument("what", nargs="?", default="address", choices=["prefix", "address", "eui64"])
    parser.add_argument(
        "mac", nargs="?", help="MAC address (for eui64; else JSON lines with \"mac\" on stdin)",
    )
    return parser


def render(record: Record) -> Table:
    table = Table(show_header=False, title=f"btmm ULA: {record.get('type')}", title_justify="left")
    table.add_column(style="bold cyan")
    table.add_column()
    for key, value in record.items():
        if key not in ("type", "v"):
            table.add_row(key, str(value))
    return table


def eui64_record(source: Record | None, mac: str) -> Record:
    eui = ula.modified_eui64(mac)
    return derive(source, "eui64", mac=mac, eui64=eui.hex(),
                  interface_id=":".join(eui[i:i + 2].hex() for i in range(0, 8, 2)),
                  autotunnel_label=ula.autotunnel_label(eui))


def main_body(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Output.from_args(PROG, args, renderer=render)
    if args.what == "eui64":
        if args.mac:
            try:
                out.emit(eui64_record(None, args.mac))
            except ula.UlaError as exc:
                raise Fatal(str(exc)) from None
            return EXIT_OK
        if not stdin_records_available():
            raise Fatal("eui64 needs a MAC address, e.g. btmm-ula eui64 00:1b:63:84:45:e6, "
                        "or JSON lines with a \"mac\" field on stdin")
        for record in read_records(sys.stdin, PROG):
            if record.get("type") == "error":
                out.emit(record)
                continue
            mac = record.get("mac")
            if not isinstance(mac, str):
                out.emit(error_record(PROG, "record has no \"mac\" string field", record))
                continue
            try:
                out.emit(eui64_record(record, mac))
            except ula.UlaError as exc:
                out.emit(error_record(PROG, str(exc), record))
        return out.exit_code()
    account = load_account(args.account)
    if args.what == "prefix":
        out.emit(make_record("ula-prefix", domain=account.domain, prefix=str(account.ula_prefix),
                             global_id=account.ula_prefix.network_address.packed[1:6].hex()))
        return EXIT_OK
    label = check_host_label(args.host) if args.host else default_host_label()
    identity = load_or_create_identity(state_dir(args.state_dir))
    address = ula.host_address(account.ula_prefix, identity.iid)
    out.emit(make_record(
        "ula-address", host=f"{label}.{account.domain}", address=str(address),
        prefix=str(account.ula_prefix), interface_id=identity.iid.hex(),
        autotunnel=f"{ula.autotunnel_label(identity.iid)}.{account.domain}",
        kerberos=identity.kerberos,
    ))
    return EXIT_OK


def main() -> None:
    run(PROG, main_body)



