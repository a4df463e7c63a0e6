"""btmm-account: create and inspect the account file (domain, TSIG key, IKE PSK, ULA /48)."""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table

from tools.account_file import account_path, load_account, new_account, save_account
from tools.cli import EXIT_OK, Fatal, make_parser, run, subcommand_parent

PROG = "btmm-account"


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        PROG,
        "Create and inspect the btmm account file. Run `init` once per account, then copy the "
        "file (mode 0600) to every host of the account.",
        host=False,
        epilog="examples:\n  btmm-account init --domain bob.members.example\n"
        "  btmm-account show\n  btmm-account tsig-key >> named.conf.keys",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = [subcommand_parent()]
    init = sub.add_parser("init", help="create a new account file (mode 0600)", parents=common)
    init.add_argument("--domain", required=True, help="the account's DNS domain")
    init.add_argument("--server", metavar="HOST[:PORT]", help="DNS update server for the domain")
    init.add_argument("--force", action="store_true", help="replace an existing account file")
    show = sub.add_parser("show", help="print the account (secrets masked)", parents=common)
    show.add_argument("--reveal", action="store_true",
                      help="print the secrets too (only with --json, for configuring other software)")
    sub.add_parser("tsig-key", help="print the TSIG key as a BIND/Knot key clause", parents=common)
    sub.add_parser("path", help="print where the account file is looked up", parents=common)
    return parser


def _validate_server(server: str | None) -> str | None:
    if server is None:
        return None
    host, _, port = server.rpartition(":") if server.count(":") == 1 else (server, "", "")
    if port and (not port.isdigit() or not 0 < int(port) < 65536):
        raise Fatal(f"--server {server!r}: port must be 1-65535")
    if not (host or server).strip():
        raise Fatal("--server is empty")
    return server


def _print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")


def main_body(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    json_mode = args.json or (not args.pretty and not sys.stdout.isatty())
    console = Console(highlight=False)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "init":
        path = account_path(args.account)
        account = new_account(args.domain, _validate_server(args.server))
        save_account(account, path, force=args.force)
        data = account.to_json(reveal=False)
        data.update(type="account", v=1, path=str(path), state="created")
        if json_mode:
            _print_json(data)
        else:
            console.print(f"[green]created[/green] account file {path} (mode 0600) for "
                          f"[bold]{account.domain}[/bold]; ULA prefix {account.ula_prefix}")
            console.print("copy this file to every host of the account; it holds the secrets")
        return EXIT_OK
    if args.command == "path":
        _print_json({"type": "account-path", "v": 1, "path": str(account_path(args.account))}) \
            if json_mode else console.print(str(account_path(args.account)))
        return EXIT_OK
    account = load_account(args.account)
    if args.command == "tsig-key":
        sys.stdout.write(account.tsig_key_clause())
        return EXIT_OK
    # show
    if args.reveal and not args.json:
        raise Fatal("--reveal prints secrets; it needs --json too (explicit opt-in)")
    data = account.to_json(reveal=args.reveal)
    data.update(type="account", v=1, path=str(account_path(args.account)))
    if json_mode:
        _print_json(data)
        return EXIT_OK
    table = Table(title=f"btmm account {account.domain}", show_header=False, title_justify="left")
    table.add_column(style="bold cyan")
    table.add_column()
    table.add_row("file", data["path"])
    table.add_row("domain", account.domain)
    table.add_row("TSIG key", f"{account.tsig_name} ({account.tsig_algorithm}, secret ********)")
    table.add_row("IKE PSK", "******** (32 bytes)" if len(account.ike_psk) == 32 else "********")
    table.add_row("ULA prefix", str(account.ula_prefix))
    table.add_row("update server", account.server or "(from SRV _dns-update-tls._tcp)")
    console.print(table)
    return EXIT_OK


def main() -> None:
    run(PROG, main_body)
