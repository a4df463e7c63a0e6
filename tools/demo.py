"""btmm-demo: the whole Back to My Mac flow on one machine, in network namespaces.

An "internet" with btmm-serve (the embedded default DNS server), a home network behind a
NAT router running miniupnpd where Bob's iMac runs ``btmm-map-port | btmm-register`` and
``btmm-tunnel-up --listen`` and offers a small HTTP service on its ULA, and a café network
behind a second NAT where the laptop runs ``btmm-browse | btmm-resolve-tunnel |
btmm-tunnel-up`` and then fetches the service through the tunnel. Then the laptop runs
its btmm-tunnel-up as a daemon (``--listen --on-demand``): a later pipeline hands the iMac's
endpoint to it over the control socket (armed, no IKE yet), and the next fetch's first
packet brings the tunnel up. Each stage is printed with rich; a summary ends the run;
everything is cleaned up, also on Ctrl-C. Needs root.
"""

from __future__ import annotations

import json
import signal
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from tools.cli import EXIT_OK, EXIT_REMOTE, Fatal, make_parser, run
from tools.netns import Lab, LabError
from tools.scenario import CAFE_LABEL, DNS_ADDR, HOME_LABEL, SERVICE_PORT, ScenarioError, World, bin_path

PROG = "btmm-demo"


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _show(console: Console, title: str, command: str, record: dict[str, Any], keys: list[str]) -> None:
    table = Table(show_header=False, box=None)
    table.add_column(style="bold cyan")
    table.add_column()
    for key in keys:
        if key in record:
            value = record[key]
            if isinstance(value, list):
                text = "\n".join(str(v) for v in value)
            else:
                text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            table.add_row(key, escape(text))
    console.print(Panel(table, title=f"[bold]{title}[/bold]", subtitle=f"[dim]{command}[/dim]",
                        title_align="left", subtitle_align="left"))


def run_demo(console: Console, keep: Path | None) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    t_start = time.monotonic()
    with Lab() as lab:
        # Without --keep, logs and the demo account (secrets) go when the lab closes.
        workdir = keep or lab.remove_on_close(Path(tempfile.mkdtemp(prefix="btmm-demo-")))
        console.rule("[bold]0. the world: internet, home behind a NAT (miniupnpd), café behind a NAT")
        world = World.create(lab, workdir)
        acct = world.create_account()
        _show(console, "account (copied to both hosts)", "btmm-account init --domain bob.members.example",
              acct, ["domain", "ula_prefix", "tsig", "ike_psk"])
        ready = world.start_dns()
        _show(console, "DNS server on the internet", "btmm-serve", ready, ["zones", "listeners"])

        console.rule("[bold]1. Bob's iMac at home: map a port, register, listen")
        reg = world.start_home_registration()
        mapping = reg.wait_for(lambda r: r.get("type") == "registration" and r.get("outer"), 60,
                               "registration with the outer endpoint")
        _show(console, "registered (after NAT-PMP/PCP mapped UDP 4500)",
              "btmm-map-port | btmm-register --name \"Bob’s iMac\" --service _http._tcp:8080",
              mapping, ["state", "host", "outer", "records", "lease_granted", "ms"])
        summary["records"] = len(mapping.get("records", []))
        summary["outer"] = mapping.get("outer")
        world.start_home_tunnel()
        world.start_home_service()

        console.rule("[bold]2. the laptop in the café: browse, resolve, tunnel")
        t0 = time.monotonic()
        client = world.start_cafe_client()
        up = client.wait_for(lambda r: r.get("type") == "tunnel" and r.get("state") == "up", 30,
                             "tunnel up record")
        t_up = time.monotonic() - t0
        _show(console, "tunnel up", "btmm-browse -t _http._tcp | btmm-resolve-tunnel | btmm-tunnel-up",
              up, ["instance", "host", "inner_remote", "outer", "suite", "spi_in", "spi_out", "setup_ms",
                   "resolve_ms"])
        summary.update(suite=up.get("suite"), setup_ms=up.get("setup_ms"), pipeline_s=round(t_up, 3),
                       ula=up.get("inner_remote"))

        console.rule("[bold]3. fetch the service through the tunnel")
        body, ttfb = world.fetch(str(up["inner_remote"]))
        console.print(Panel(escape(body.strip()),
                            title=escape(f"GET http://[{up['inner_remote']}]:{SERVICE_PORT}/"),
                            subtitle=f"first byte after {ttfb * 1000:.1f} ms", title_align="left"))
        summary.update(response=body.strip().splitlines()[-1] if body.strip() else "",
                       ttfb_ms=round(ttfb * 1000, 1))
        console.rule("[bold]4. the laptop's daemon: later pipelines hand over, traffic brings tunnels up")
        world.stop_stage("cafe-client")
        daemon = world.start_cafe_daemon("--listen", "--on-demand")
        records, codes = world.run_pipeline("cafe-arm", world.cafe_ns, "cafe", [
            [bin_path("btmm-resolve-tunnel"), "--host", HOME_LABEL, "--json"],
            [bin_path("btmm-tunnel-up"), "--host", CAFE_LABEL, "--json"]])
        armed = next((r for r in records if r.get("state") == "armed"), None)
        if armed is None or codes[-1] != 0:
            raise ScenarioError(f"handing the endpoint to the laptop's daemon failed ({codes}): {records}")
        _show(console, "btmm-tunnel-up --listen --on-demand runs; a pipeline hands it the endpoint: armed",
              f"btmm-resolve-tunnel --host {HOME_LABEL} | btmm-tunnel-up   (→ the daemon's control socket)",
              armed, ["host", "inner_remote", "outer", "state"])
        body2, ttfb2 = world.fetch(str(armed["inner_remote"]))
        up2 = daemon.wait_for(lambda r: r.get("type") == "tunnel" and r.get("state") == "up", 10,
                              "on-demand tunnel up record")
        _show(console, "the first packet (the fetch's TCP SYN) brought the tunnel up",
              "daemon records: armed → triggered → up", up2,
              ["inner_remote", "outer", "suite", "spi_in", "spi_out", "setup_ms"])
        console.print(Panel(escape(body2.strip()), title="GET through the on-demand tunnel",
                            subtitle=f"first byte after {ttfb2 * 1000:.1f} ms, IKE included",
                            title_align="left"))
        summary.update(on_demand_ttfb_ms=round(ttfb2 * 1000, 1), on_demand_setup_ms=up2.get("setup_ms"))

        console.rule("[bold]5. clean up: Bob's iMac deregisters, tunnels are deleted")
        world.stop_stage("cafe-daemon")
        world.stop_stage("home-tunnel")
        world.stop_stage("home-register")
        removed = world.stages["home-register-stopped"].records
        summary["deregistered"] = any(r.get("state") == "removed" for r in removed)
        summary["dns"] = f"btmm-serve on {DNS_ADDR}"
        summary["hosts"] = f"{HOME_LABEL} (home), {CAFE_LABEL} (café)"
        summary["total_s"] = round(time.monotonic() - t_start, 1)
    return summary


def main_body() -> int:
    parser = make_parser(PROG, __doc__.splitlines()[0] if __doc__ else PROG, account=False, host=False)
    parser.add_argument("--keep", metavar="DIR", help="keep logs and state in DIR (default: a temp dir)")
    args = parser.parse_args()
    console = Console(highlight=False)
    signal.signal(signal.SIGTERM, _terminate)
    keep = Path(args.keep) if args.keep else None
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
    try:
        summary = run_demo(console, keep)
    except (ScenarioError, LabError) as exc:
        raise Fatal(f"demo failed: {exc}", EXIT_REMOTE) from None
    table = Table(show_header=False, box=None)
    table.add_column(style="bold cyan")
    table.add_column()
    for key, value in summary.items():
        table.add_row(key, str(value))
    console.print(Panel(table, title="[bold green]Back to My Mac: done[/bold green]", title_align="left"))
    if getattr(args, "json", False):
        print(json.dumps({"type": "demo", "v": 1, **summary}))
    return EXIT_OK


def main() -> None:
    run(PROG, main_body)
