"""btmm-resolve-tunnel: service (or host) → tunnel endpoint (inner ULA, outer IPv4 + port).

For each ``service`` record on stdin (or ``--host NAME``) it follows the chain Apple's
BTMM client followed (RFC 6281 §5.3; btmm-facts §1.3):

    AAAA <host>                      → inner ULA (what applications talk to)
    SRV  _autotunnel._udp.<host>     → outer port + AutoTunnel-… target
    A    AutoTunnel-….<domain>       → outer IPv4 (the NAT's external address)

and emits one ``tunnel-endpoint`` record per host (the input's other fields pass
through). A host without autotunnel records, or whose ULA is this host's own, becomes an
error record that says why — no tunnel, so no plaintext fallback either.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from tools.cli import (
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

if TYPE_CHECKING:
    # imported where used, so that --help and the pipeline stage start fast (no rich in a pipe)
    import dns.name
    from rich.table import Table

    from dnssd_wa import driver
    from dnssd_wa.browse import Problem, TunnelEndpoint
    from tools.account_file import Account

PROG = "btmm-resolve-tunnel"


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        PROG,
        "Resolve where a host's tunnel ends: AAAA (inner ULA) -> SRV _autotunnel._udp (outer port) "
        "-> A (outer IPv4). Reads `service` records from btmm-browse, or takes --host.",
        host=False,
        epilog="examples:\n  btmm-browse -t _rfb._tcp | btmm-resolve-tunnel | btmm-tunnel-up\n"
        "  btmm-resolve-tunnel --host bobs-imac --verbose",
    )
    parser.add_argument("--host", dest="targets", action="append", default=[], metavar="NAME",
                        help="host to resolve: a label in the account domain or a full name (repeatable)")
    parser.add_argument("--state-dir", metavar="DIR",
                        help="this host's state dir (to recognise our own ULA; default as other tools)")
    parser.add_argument("--server", metavar="HOST[:PORT]",
                        help="DNS server to ask (default: the account file's server)")
    add_transport_arguments(parser)
    return parser


def own_ula(account: Account, state_arg: str | None) -> ipaddress.IPv6Address | None:
    """This host's ULA when it already has an identity (never creates one)."""
    from tools.account_file import load_or_create_identity, state_dir

    directory = state_dir(state_arg)
    if not (directory / "identity.key").exists():
        return None
    import ula

    return ula.host_address(account.ula_prefix, load_or_create_identity(directory).iid)


def host_name(text: str, domain: dns.name.Name) -> dns.name.Name:
    """A label becomes ``label.<domain>``; a name with dots is taken as given."""
    from dnssd_wa import errors, names

    t = text.strip().rstrip(".")
    if not t:
        raise errors.BadName("empty host name")
    if "." not in t:
        return names.host_name(t, domain)
    return names.domain_name(t)


def render(record: Record) -> Table:
    from rich.table import Table

    table = Table(title=f"tunnel endpoint of {record.get('host')}", show_header=True, title_justify="left")
    table.add_column("step")
    table.add_column("question")
    table.add_column("answer")
    host = str(record.get("host"))
    table.add_row("inner", f"{host}. AAAA", str(record.get("inner")))
    table.add_row("port", f"_autotunnel._udp.{host}. SRV",
                  f"{record.get('outer_port')} {record.get('autotunnel_name')}")
    table.add_row("outer", f"{record.get('autotunnel_name')}. A", str(record.get("outer_address")))
    table.add_row("time", "", f"{record.get('resolve_ms')} ms")
    return table


def endpoint_problem(ep: TunnelEndpoint, problems: list[Problem],
                     mine: ipaddress.IPv6Address | None) -> str | None:
    if ep.inner is None:
        detail = next((p.message for p in problems if "AAAA" in p.name and "no AAAA" not in p.message), "")
        return (f"{ep.host} has no AAAA record (no inner ULA): it is not registered in this domain"
                + (f" ({detail})" if detail else ""))
    if mine is not None and ipaddress.IPv6Address(ep.inner) == mine:
        return f"{ep.host} is this host itself (its ULA {ep.inner} is ours); no tunnel to self"
    if ep.outer_port is None or ep.outer_address is None:
        reason = "; ".join(p.message for p in problems) or "incomplete autotunnel records"
        return (f"{ep.host} publishes no outer endpoint ({reason}); it needs btmm-map-port | "
                "btmm-register, or btmm-register --outer ADDR:PORT, on that host")
    return None


async def resolve_strict(client: driver.DnsClient,
                         name: dns.name.Name) -> tuple[TunnelEndpoint, list[Problem]]:
    """Like ``driver.resolve_tunnel_endpoint`` but a server that cannot be reached is fatal
    (TransportFailed propagates) instead of a per-host problem."""
    import asyncio

    from dnssd_wa import errors
    from dnssd_wa.browse import TunnelPlan

    plan = TunnelPlan(name)
    while questions := plan.questions():
        results = await asyncio.gather(*(client.query(q.name, q.rdtype) for q in questions),
                                       return_exceptions=True)
        for q, res in zip(questions, results, strict=True):
            if isinstance(res, errors.TransportFailed):
                raise res
            if isinstance(res, errors.DnssdError):
                plan.answer(q, None, res.message)
            elif isinstance(res, BaseException):
                raise res
            else:
                plan.answer(q, res)
    return plan.endpoint(), plan.problems


async def resolve_one(client: driver.DnsClient, name: dns.name.Name, source: Record | None,
                      mine: ipaddress.IPv6Address | None) -> Record:
    t0 = time.monotonic()
    ep, problems = await resolve_strict(client, name)
    ms = round((time.monotonic() - t0) * 1000, 2)
    problem = endpoint_problem(ep, problems, mine)
    if problem is not None:
        return error_record(PROG, problem, source or {"host": ep.host})
    return derive(source, "tunnel-endpoint", host=ep.host, inner=ep.inner, outer_address=ep.outer_address,
                  outer_port=ep.outer_port, autotunnel_name=ep.autotunnel_name, ike_id=ep.ike_id,
                  resolve_ms=ms)


async def main_async(args: argparse.Namespace, out: Output) -> int:
    import asyncio

    from dnssd_wa import driver, errors, names
    from tools.account_file import load_account

    account = load_account(args.account)
    try:
        domain = names.domain_name(account.domain)
    except errors.BadName as exc:
        raise Fatal(exc.message) from None
    mine = own_ula(account, args.state_dir)
    explain = verbose_hook(out)
    client = driver.DnsClient(server_config(args, account.server), explain=explain)
    seen: set[dns.name.Name] = set()

    async def handle(text: str, source: Record | None) -> None:
        try:
            name = host_name(text, domain)
        except errors.BadName as exc:
            out.emit(error_record(PROG, exc.message, source or {"host": text}))
            return
        if source is not None and source.get("event") == "removed":
            out.emit(derive(source, "tunnel-endpoint", host=names.name_text(name)))
            seen.discard(name)
            return
        if name in seen:
            if explain is not None:
                explain(f"{names.name_text(name)} already resolved; skipping the duplicate")
            return
        seen.add(name)
        out.emit(await resolve_one(client, name, source, mine))

    try:
        for target in args.targets:
            await handle(target, None)
        if not args.targets:
            if not stdin_records_available():
                raise Fatal("nothing to resolve: pipe `service` records in (btmm-browse | "
                            "btmm-resolve-tunnel) or pass --host NAME")
            loop = asyncio.get_running_loop()
            lines = read_records(_lines(), PROG)
            while True:
                record = await loop.run_in_executor(None, next, lines, None)
                if record is None:
                    break
                if record.get("type") == "error":
                    out.emit(record)
                    continue
                host = record.get("host")
                if not isinstance(host, str):
                    out.emit(error_record(PROG, "record has no \"host\" field (expected a `service` "
                                          "record from btmm-browse)", record))
                    continue
                await handle(host, record)
    except errors.TransportFailed as exc:
        raise Fatal(exc.message, EXIT_USAGE if exc.kind.user_fixable else EXIT_REMOTE) from None
    finally:
        await client.close()
    return out.exit_code()


def _lines() -> Iterator[str]:
    while True:
        line = sys.stdin.readline()
        if not line:
            return
        yield line


def main_body() -> int:
    args = build_parser().parse_args()
    out = Output.from_args(PROG, args, renderer=render)
    import asyncio

    return asyncio.run(main_async(args, out))


def main() -> None:
    run(PROG, main_body)



