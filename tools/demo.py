"""btmm-demo: the whole flow on one machine (grows as the stages land; see issue 8)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.panel import Panel

from tools.cli import EXIT_OK, Fatal, make_parser, run

PROG = "btmm-demo"


def _stage(console: Console, title: str, argv: list[str], env: dict[str, str]) -> dict[str, object]:
    console.rule(f"[bold]{title}")
    console.print(f"[dim]$ {' '.join(argv)}[/dim]")
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise Fatal(f"demo stage {title!r} failed: {proc.stderr.strip()}", 3)
    record: dict[str, object] = json.loads(proc.stdout.splitlines()[-1])
    console.print_json(data=record)
    return record


def main_body() -> int:
    make_parser(PROG, "Run the btmm demo: accounts, addresses, (later) DNS, NAT, IKE and ESP.",
                account=False, host=False).parse_args()
    console = Console(highlight=False)
    bindir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="btmm-demo-") as tmp:
        env = {"XDG_CONFIG_HOME": f"{tmp}/config", "XDG_STATE_HOME": f"{tmp}/state",
               "PATH": f"{bindir}:/usr/sbin:/usr/bin:/sbin:/bin"}
        acct = _stage(console, "1. create the account", [str(bindir / "btmm-account"), "init",
                      "--domain", "bob.members.example", "--json"], env)
        addr = _stage(console, "2. Bob's iMac: its inner ULA", [str(bindir / "btmm-ula"), "address",
                      "--host", "bobs-imac", "--json"], env)
        console.print(Panel.fit(
            f"account [bold]{acct['domain']}[/bold], prefix {acct['ula_prefix']}\n"
            f"bobs-imac → {addr['address']} (published at {addr['autotunnel']})",
            title="summary"))
    return EXIT_OK


def main() -> None:
    run(PROG, main_body)
