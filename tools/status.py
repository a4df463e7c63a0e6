"""btmm-status: what this host has — registration, port mapping, tunnels with counters."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table

from tools.account_file import state_dir
from tools.cli import EXIT_OK, EXIT_REMOTE, Output, Record, make_parser, make_record, run
from tools.status_file import COMPONENTS, read_all

PROG = "btmm-status"


def build_parser() -> argparse.ArgumentParser:
    return make_parser(
        PROG,
        "Show what this host's btmm stages hold right now: the port mapping (btmm-map-port), "
        "the DNS registration (btmm-register) and the tunnels with their counters "
        "(btmm-tunnel-up). Reads the status files those stages keep in the host state dir.",
        account=False,
        epilog="exit code 3 when no stage is running on this host.",
    )


def _age(updated: object) -> str:
    if not isinstance(updated, int | float):
        return "?"
    return f"{max(0.0, time.time() - updated):.0f} s ago"


def _kv_table(data: dict[str, Any], skip: set[str]) -> Table:
    table = Table(show_header=False, box=None)
    table.add_column(style="bold cyan")
    table.add_column()
    for key, value in data.items():
        if key in skip:
            continue
        table.add_row(key, value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
    return table


def _tunnels_table(tunnels: list[dict[str, Any]]) -> Table:
    table = Table(title="tunnels", title_justify="left")
    for col in ("peer", "state", "inner_remote", "outer", "suite", "pkts in/out", "bytes in/out",
                "auth fail", "replay", "drops"):
        table.add_column(col)
    for t in tunnels:
        c = t.get("counters", {}) if isinstance(t.get("counters"), dict) else {}
        table.add_row(
            str(t.get("peer", "")), str(t.get("state", "")), str(t.get("inner_remote", "")),
            str(t.get("outer", "")), str(t.get("suite", "")),
            f"{c.get('packets_in', 0)}/{c.get('packets_out', 0)}",
            f"{c.get('bytes_in', 0)}/{c.get('bytes_out', 0)}",
            str(c.get("auth_failures", 0)), str(c.get("replays", 0)), str(c.get("drops", 0)),
        )
    return table


def render(record: Record) -> RenderableType:
    component = str(record.get("component"))
    style = "red" if record.get("stale") else "green"
    state = "stale (process gone)" if record.get("stale") else f"pid {record.get('pid')}"
    title = f"[bold]{component}[/bold] — [{style}]{state}[/{style}], updated {_age(record.get('updated'))}"
    skip = {"type", "v", "component", "pid", "updated", "stale", "tunnels", "armed"}
    body: list[RenderableType] = [_kv_table(record, skip)]
    tunnels = record.get("tunnels")
    if isinstance(tunnels, list):
        rows = [t for t in tunnels if isinstance(t, dict)]
        armed = record.get("armed")  # btmm-tunnel-up --on-demand: ULAs waiting for traffic
        if isinstance(armed, list):
            rows += [{"peer": a, "state": "armed", "inner_remote": a} for a in armed if isinstance(a, str)]
        body.append(_tunnels_table(rows))
    return Panel(Group(*body), title=title, title_align="left")


def main_body() -> int:
    args = build_parser().parse_args()
    out = Output.from_args(PROG, args, renderer=render)
    directory = state_dir(args.state_dir)
    found = read_all(directory)
    if not found:
        out.log(f"no btmm stage has published status in {directory}/status "
                "(start btmm-map-port, btmm-register or btmm-tunnel-up)")
        return EXIT_REMOTE
    order = [c for c in COMPONENTS if c in found] + [c for c in found if c not in COMPONENTS]
    for component in order:
        data = dict(found[component])
        data.pop("type", None)
        out.emit(make_record("status", **data))
    return EXIT_OK


def main() -> None:
    run(PROG, main_body)
