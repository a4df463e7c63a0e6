"""btmm-browse: find services in the account domain (wide-area DNS-SD, RFC 6763).

PTR ``<_svc>.<dom>`` → SRV + TXT of each instance → AAAA of each target, asked in parallel
(UDP with TCP fallback on truncation, TCP, or DNS over TLS). Emits one ``service`` record
per instance; names come back exactly as the server stored them. ``--domains`` lists the
browse domains (``b``/``db``/``lb._dns-sd._udp``), ``--types`` the service types
(``_services._dns-sd._udp``); ``--watch`` re-browses (interval from the answers' TTLs) and
emits records with ``"event": "added"`` / ``"removed"`` until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from tools.cli import EXIT_REMOTE, EXIT_USAGE, Fatal, Output, Record, make_parser, make_record, run
from tools.dns_cli import add_transport_arguments, server_config, verbose_hook

if TYPE_CHECKING:
    # Imported where used: ``--help`` needs none of them, a JSON browse never loads rich,
    # push_client/watch or the account file (measured: 0.23 s → see bench/dnssd_bench.py).
    import dns.name
    from rich.table import Table

    from dnssd_wa import driver
    from dnssd_wa.browse import Problem, Service

PROG = "btmm-browse"


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        PROG,
        "Browse the account's DNS domain for services: PTR -> SRV+TXT -> AAAA, in parallel.",
        host=False,
        epilog="examples:\n  btmm-browse -t _rfb._tcp\n  btmm-browse --types\n"
        "  btmm-browse -d bob.members.example --server ns.example.net --tls -t _ssh._tcp\n"
        "  btmm-browse -t _rfb._tcp --watch",
    )
    parser.add_argument("-t", "--type", dest="types_", action="append", default=[], metavar="TYPE",
                        help="service type, e.g. _rfb._tcp (repeatable; default: every type listed "
                        "under _services._dns-sd._udp)")
    parser.add_argument("-d", "--domain", help="domain to browse (default: the account's)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--domains", action="store_true", help="list browse domains (b/db/lb._dns-sd._udp)")
    mode.add_argument("--types", action="store_true", help="list service types (_services._dns-sd._udp)")
    mode.add_argument("--watch", action="store_true",
                      help="keep browsing; emit added/removed events (DNS Push when offered, else polling)")
    parser.add_argument("--server", metavar="HOST[:PORT]",
                        help="DNS server to ask (default: the account file's server, "
                        "else the system resolver)")
    add_transport_arguments(parser)
    parser.add_argument("--min-interval", type=float, default=1.0, metavar="SECONDS",
                        help="--watch: shortest polling interval (default 1)")
    parser.add_argument("--max-interval", type=float, default=60.0, metavar="SECONDS",
                        help="--watch: longest polling interval (default 60; else half the smallest TTL)")
    return parser


def service_record(svc: Service, **extra: Any) -> Record:
    return make_record("service", instance=svc.instance, service_type=svc.service_type, domain=svc.domain,
                       host=svc.host, port=svc.port, txt=svc.txt, addresses=list(svc.addresses),
                       ttl=svc.ttl, **extra)


def services_table(services: list[Service], title: str) -> Table:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in ("instance", "type", "host", "port", "addresses", "txt"):
        table.add_column(col)
    for s in services:
        table.add_row(s.instance, s.service_type, s.host, str(s.port), "\n".join(s.addresses),
                      " ".join(f"{k}={v}" for k, v in s.txt.items()))
    return table


def _report(out: Output, problems: list[Problem]) -> None:
    if not problems:
        return
    from rich.markup import escape

    for p in problems:
        out.warn(escape(f"skipped {p.name}: {p.message}"))


async def main_async(args: argparse.Namespace, out: Output) -> int:
    from dnssd_wa import driver, errors, names

    account_server = None
    if args.domain:
        domain_text = args.domain
        if not args.server:
            from tools.account_file import load_account  # (cryptography: only when needed)

            try:
                account_server = load_account(args.account).server
            except Fatal:
                account_server = None
    else:
        from tools.account_file import load_account

        account = load_account(args.account)
        domain_text, account_server = account.domain, account.server
    try:
        domain = names.domain_name(domain_text)
        for t in args.types_:
            names.check_service_type(t)
    except errors.BadName as exc:
        raise Fatal(exc.message) from None
    config = server_config(args, account_server)
    client = driver.DnsClient(config, explain=verbose_hook(out))
    try:
        if args.domains:
            return await _list_domains(client, domain, out)
        types = list(args.types_)
        if args.types or not types:
            found = await _list_types(client, domain, out, emit=args.types)
            if args.types:
                return out.exit_code()
            types = found
            if not types:
                from rich.markup import escape

                out.warn(escape(f"no service types listed under _services._dns-sd._udp."
                                f"{names.name_text(domain)}; pass -t TYPE"))
                return out.exit_code()
        if args.watch:
            return await _watch(client, domain, types, args, out)
        services, problems = await driver.browse(client, domain, types)
        _report(out, problems)
        if out.json_mode:
            for svc in services:
                out.emit(service_record(svc))
        else:
            import sys

            from rich.console import Console

            Console(file=sys.stdout, highlight=False).print(
                services_table(services, f"{len(services)} services in {names.name_text(domain)}"))
        return out.exit_code()
    except errors.TransportFailed as exc:
        raise Fatal(exc.message, EXIT_USAGE if exc.kind.user_fixable else EXIT_REMOTE) from None
    finally:
        await client.close()


async def _list_domains(client: driver.DnsClient, domain: dns.name.Name, out: Output) -> int:
    from dnssd_wa import browse as plans
    from dnssd_wa import driver, names

    owners = plans.enumeration_names(domain)
    targets, problems = await driver.ptr_lists(client, owners)
    _report(out, problems)
    for owner in owners:
        for target in targets.get(owner, []):
            out.emit(make_record("browse-domain", kind=owner.labels[0].decode(),
                                 domain=names.name_text(target), parent=names.name_text(domain)))
    return out.exit_code()


async def _list_types(client: driver.DnsClient, domain: dns.name.Name, out: Output, *,
                      emit: bool) -> list[str]:
    from rich.markup import escape

    from dnssd_wa import browse as plans
    from dnssd_wa import driver, errors, names

    owner = plans.services_name(domain)
    targets, problems = await driver.ptr_lists(client, [owner])
    _report(out, problems)
    found: list[str] = []
    for target in targets.get(owner, []):
        rel = target.relativize(domain) if target.is_subdomain(domain) else target
        text = names.name_text(rel)
        try:
            names.check_service_type(text)
        except errors.BadName:
            out.warn(escape(f"skipped {names.name_text(target)}: not a service type under "
                            f"{names.name_text(domain)}"))
            continue
        if text.lower() not in (f.lower() for f in found):
            found.append(text)
            if emit:
                out.emit(make_record("service-type", service_type=text, domain=names.name_text(domain)))
    return found


async def _watch(client: driver.DnsClient, domain: dns.name.Name, types: list[str],
                 args: argparse.Namespace, out: Output) -> int:
    import asyncio
    import signal

    from rich.markup import escape

    from dnssd_wa import driver, push_client, watch

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def browse_once() -> tuple[list[Service], list[Problem]]:
        return await driver.browse(client, domain, types)

    async def sleep(seconds: float) -> None:
        try:
            await asyncio.wait_for(stop.wait(), seconds)
        except TimeoutError:
            pass

    def emit(event: str, svc: Service) -> None:
        out.emit(service_record(svc, event=event))

    # DNS Push (RFC 8765) when the server advertises _dns-push-tls._tcp; polling otherwise
    if await push_client.watch_with_push(client, domain, types, browse_once, emit, stop=stop,
                                         report=lambda p: _report(out, p),
                                         explain=lambda m: out.explain(escape(m))):
        return out.exit_code()
    await watch.watch_poll(browse_once, emit, sleep, stop=stop.is_set, min_interval=args.min_interval,
                           max_interval=args.max_interval, report=lambda p: _report(out, p))
    return out.exit_code()


def main_body(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Output.from_args(PROG, args)
    if args.min_interval <= 0 or args.max_interval < args.min_interval:
        raise Fatal("--min-interval must be > 0 and <= --max-interval")
    import asyncio

    return asyncio.run(main_async(args, out))


def main() -> None:
    run(PROG, main_body)
