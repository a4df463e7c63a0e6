"""Flags, server choice and the --verbose hook shared by the DNS commands (browse, register, resolve)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tools.cli import EXIT_USAGE, Fatal, Output

if TYPE_CHECKING:  # the DNS stack is imported when a server is chosen, not for --help
    from dnssd_wa import driver


def add_transport_arguments(parser: argparse.ArgumentParser, *, timeout_help: str = "per-query") -> None:
    """``--tls``/``--tcp``, ``--ca-file``, ``--tls-name``, ``--timeout``."""
    transport = parser.add_mutually_exclusive_group()
    transport.add_argument("--tls", action="store_true", help="DNS over TLS (port 853 by default)")
    transport.add_argument("--tcp", action="store_true", help="DNS over TCP instead of UDP")
    parser.add_argument("--ca-file", metavar="FILE",
                        help="CA certificate(s) for --tls (default: system store)")
    parser.add_argument("--tls-name", metavar="NAME",
                        help="--tls: the name the server certificate must hold (default: the --server host)")
    parser.add_argument("--timeout", type=float, default=3.0, metavar="SECONDS",
                        help=f"{timeout_help} timeout (default 3)")


def server_config(args: argparse.Namespace, account_server: str | None, *,
                  discovered: tuple[str, int] | None = None) -> driver.ServerConfig:
    """The DNS server to ask and how: ``--server``, else the account's, else ``discovered``,
    else the system resolver.

    ``discovered`` is the (host, port) an SRV ``_dns-update-tls._tcp`` lookup found: spoken
    over TLS unless ``--tcp`` (the service is DNS over TLS). Otherwise the transport is
    ``--tls``/``--tcp``/UDP and a server without a port gets 853 with ``--tls``, else 53.
    A ``--ca-file`` that does not exist is a usage error.
    """
    from dnssd_wa import driver, errors

    tls = bool(args.tls)
    transport = driver.Transport.TLS if tls else (driver.Transport.TCP if args.tcp else driver.Transport.UDP)
    default_port = driver.DOT_PORT if tls else driver.DNS_PORT
    server = args.server or account_server
    if not server and discovered is not None:
        host, port = discovered
        if not args.tcp:
            transport = driver.Transport.TLS
    else:
        if not server:
            server = _system_resolver()
        try:
            host, port = driver.parse_hostport(server, default_port)
        except errors.BadName as exc:
            raise Fatal(exc.message) from None
    if args.ca_file and not Path(args.ca_file).is_file():
        raise Fatal(f"--ca-file {args.ca_file} does not exist")
    return driver.ServerConfig(host, port, transport, ca_file=args.ca_file, tls_hostname=args.tls_name,
                               timeout=args.timeout)


def _system_resolver() -> str:
    import dns.resolver

    try:
        ns = dns.resolver.Resolver().nameservers
    except Exception as exc:
        raise Fatal(f"no --server and no usable system resolver ({exc}); pass --server HOST[:PORT]",
                    EXIT_USAGE) from None
    if not ns:
        raise Fatal("no --server and no nameserver in /etc/resolv.conf; pass --server HOST[:PORT]")
    return str(ns[0])


def verbose_hook(out: Output) -> Callable[[str], None] | None:
    """``--verbose``: each DNS question and answer as a timed line (names escaped for rich)."""
    if not out.verbose:
        return None
    from rich.markup import escape

    return lambda message: out.explain(escape(message))
