"""Time to first byte from an empty client, in the demo topology (issue 8 benchmark).

The café laptop reaches Bob's iMac's HTTP service through two NATs: browse → resolve →
IKE → TCP connect → first response byte. Each view runs N times (a fresh tunnel every run:
no peers, no SAs, no cached DNS answers at the start of a run); each prints per-stage medians
and the wall time, median / p90 / range.

* **cold pipeline**: nothing runs on the laptop; the clock starts with
  ``btmm-browse | btmm-resolve-tunnel | btmm-tunnel-up`` and stops at the first byte of a
  fetch started when the ``tunnel up`` record appears. Stages: browse (the same queries,
  timed in-process in a separate run), resolve (``resolve_ms``), IKE (``setup_ms``: first
  request → CHILD SA installed), TCP connect + first byte; "start-up" is the rest (three
  interpreter start-ups and imports, the dominant cost). ``pipeline_to_up`` is the time to
  the ``tunnel up`` record; ``fetch_process`` the start-up of the process that fetches (the
  "app" of this view, counted in the wall time like a curl would be).
* **warm daemon, control socket**: the laptop's ``btmm-tunnel-up --listen`` runs already
  (started before the clock, no peers) and so does the "app", a Python process in the café
  namespace with its imports done. Per run the app browses and resolves with dnssd_wa's
  library (a new DNS client: nothing cached), hands the tunnel-endpoint record to the daemon
  over its control socket, waits for the ``tunnel up`` answer, then TCP-connects to the ULA
  and reads the first byte. Between runs the app removes the peer (not timed).
* **warm daemon, cold pipeline**: the same daemon; the clock starts with the cold view's
  three commands, whose btmm-tunnel-up finds the daemon and hands the record over (as
  ``--via``) instead of starting a datapath and IKE itself. Between runs the app removes the
  peer.
* **on demand**: the daemon runs with ``--on-demand``; the app browses, resolves, hands the
  record over (answer: ``armed``, no IKE yet) and connects at once: the TCP SYN waits in the
  datapath while IKE runs, then leaves through the new tunnel.
* **on demand, after an idle close**: the endpoint stays armed; the daemon closed the idle
  tunnel (``--idle-timeout 1``); the app just connects: the SYN triggers a DNS re-resolve of
  the peer's endpoint, IKE, and the connection.

Start-up of each console script is measured outside the namespaces: ``--help`` wall time
(interpreter + parser) and, in a fresh interpreter, the imports a working stage loads.

Usage: .venv/bin/python bench/e2e_ttfb.py [--runs N]   (root; creates and removes namespaces)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any

from tools.netns import Lab
from tools.scenario import DNS_ADDR, DOMAIN, SERVICE_PORT, SERVICE_TYPE, Stage, World, bin_path

BROWSE_SNIPPET = f"""
import asyncio, json, sys, time
from dnssd_wa import driver, names
async def main():
    cfg = driver.ServerConfig("{DNS_ADDR}", 53)
    t0 = time.monotonic()
    async with driver.DnsClient(cfg) as client:
        services, _ = await driver.browse(client, names.domain_name("{DOMAIN}"), ["{SERVICE_TYPE}"])
    print(json.dumps({{"browse_ms": (time.monotonic() - t0) * 1000, "n": len(services)}}))
asyncio.run(main())
"""

# The "app": a long-running process in the café namespace; one JSON command per stdin line,
# one JSON result per stdout line. Its imports are done before any clock starts.
APP = r"""
import asyncio, json, socket, sys, time
from dnssd_wa import driver, names
DOMAIN, STYPE, DNS, CONTROL, PORT = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
loop = asyncio.new_event_loop()

def control(records):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(CONTROL)
    s.sendall(b"".join(json.dumps(r).encode() + b"\n" for r in records))
    s.shutdown(socket.SHUT_WR)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    return [json.loads(line) for line in data.splitlines() if line.strip()]

async def lookups():
    t0 = time.monotonic()
    async with driver.DnsClient(driver.ServerConfig(DNS, 53)) as client:
        services, _ = await driver.browse(client, names.domain_name(DOMAIN), [STYPE])
        t1 = time.monotonic()
        ep, _ = await driver.resolve_tunnel_endpoint(client, names.domain_name(services[0].host))
    return services[0], ep, t0, t1, time.monotonic()

def fetch(ula):
    t0 = time.monotonic()
    s = socket.create_connection((ula, PORT), timeout=10)
    t1 = time.monotonic()
    s.sendall(b"GET / HTTP/1.0\r\nHost: bobs-imac\r\n\r\n")
    first = s.recv(65536)
    t2 = time.monotonic()
    data = first
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    return t0, t1, t2, data.decode(errors="replace")

endpoint = None
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "run":  # browse, resolve, hand over, connect
        svc, ep, t0, t1, t2 = loop.run_until_complete(lookups())
        endpoint = {"type": "tunnel-endpoint", "v": 1, "host": ep.host, "inner": ep.inner,
                    "outer_address": ep.outer_address, "outer_port": ep.outer_port, "ike_id": ep.ike_id,
                    "autotunnel_name": ep.autotunnel_name, "instance": svc.instance}
        replies = control([endpoint])
        t3 = time.monotonic()
        c0, c1, c2, body = fetch(ep.inner)
        state = [r.get("state") for r in replies if r.get("type") == "tunnel"]
        up = next((r for r in replies if r.get("state") == "up"), {})
        result = {"browse_ms": (t1 - t0) * 1e3, "resolve_ms": (t2 - t1) * 1e3, "control_ms": (t3 - t2) * 1e3,
                  "connect_ms": (c1 - c0) * 1e3, "first_byte_ms": (c2 - c1) * 1e3,
                  "wall_ms": (c2 - t0) * 1e3, "setup_ms": up.get("setup_ms"), "states": state,
                  "ok": "hello" in body, "inner": ep.inner}
    elif cmd["op"] == "connect":  # the endpoint is armed already: just connect
        c0, c1, c2, body = fetch(endpoint["inner"])
        result = {"connect_ms": (c1 - c0) * 1e3, "first_byte_ms": (c2 - c1) * 1e3,
                  "wall_ms": (c2 - c0) * 1e3, "ok": "hello" in body}
    elif cmd["op"] == "remove":  # close the tunnel / disarm (not timed)
        replies = control([dict(endpoint, event="removed")])
        result = {"states": [r.get("state") for r in replies]}
    else:
        result = {"error": "unknown op"}
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
"""

SCRIPTS = {  # console script → the modules a working run of it imports
    "btmm-browse": "tools.browse, dnssd_wa.driver, dnssd_wa.browse",
    "btmm-resolve-tunnel": "tools.resolve_tunnel, dnssd_wa.driver, dnssd_wa.browse, tools.account_file",
    "btmm-tunnel-up": "tools.tunnel_up, tools.tunnel_ike, esp_udp.datapath, ike_lite, tools.account_file",
}


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p90 = statistics.quantiles(ordered, n=10, method="inclusive")[-1] if len(ordered) > 1 else ordered[0]
    return {"median": round(statistics.median(ordered), 2), "p90": round(p90, 2),
            "min": round(ordered[0], 2), "max": round(ordered[-1], 2)}


def show(title: str, rows: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    print(f"\n{title}")
    out = {}
    for key, values in rows.items():
        if not values:
            continue
        s = summary(values)
        out[key] = s
        print(f"  {key:<22} median {s['median']:>8.2f} ms   p90 {s['p90']:>8.2f}   "
              f"(min {s['min']:.2f}, max {s['max']:.2f})")
    return out


class App:
    """The app process in the café namespace (see APP)."""

    def __init__(self, world: World) -> None:
        self.proc = world.lab.popen(world.cafe_ns, [sys.executable, "-c", APP, DOMAIN, SERVICE_TYPE, DNS_ADDR,
                                                    str(world.control_path("cafe")), str(SERVICE_PORT)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=open(world.workdir / "app.stderr", "wb"), env=world.env("cafe"))
        self.errfile = world.workdir / "app.stderr"

    def call(self, op: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps({"op": op}) + "\n").encode())
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the app died: {self.errfile.read_text()[-800:]}")
        result: dict[str, Any] = json.loads(line)
        return result


def wait_state(stage: Stage, state: str, seen: int, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for rec in stage.records[seen:]:
            if rec.get("type") == "tunnel" and rec.get("state") == state:
                return rec
        stage.poll_records(0.2)
    raise SystemExit(f"no tunnel {state} record from {stage.name}: {stage.records[-3:]} "
                     f"{stage.stderr_tail()}")


def cold_view(world: World, runs: int) -> dict[str, list[float]]:
    keys = ("browse_ms", "resolve_ms", "ike_ms", "tcp_first_byte_ms", "protocol_total_ms",
            "pipeline_to_up_ms", "fetch_process_ms", "startup_ms", "wall_ms")
    rows: dict[str, list[float]] = {k: [] for k in keys}
    for i in range(runs):
        b = json.loads(world.lab.run(world.cafe_ns, [sys.executable, "-c", BROWSE_SNIPPET]).stdout)
        t0 = time.monotonic()
        client = world.start_cafe_client()
        up = client.wait_for(lambda r: r.get("type") == "tunnel" and r.get("state") == "up", 30, "tunnel")
        t_up = time.monotonic()
        body, ttfb = world.fetch(str(up["inner_remote"]))
        t_end = time.monotonic()
        wall = (t_end - t0) * 1000
        if "hello" not in body:
            raise SystemExit(f"cold run {i}: unexpected response {body!r}")
        rows["pipeline_to_up_ms"].append((t_up - t0) * 1000)
        rows["fetch_process_ms"].append((t_end - t_up) * 1000 - ttfb * 1000)
        world.stop_stage("cafe-client")
        protocol = b["browse_ms"] + float(up["resolve_ms"]) + float(up["setup_ms"]) + ttfb * 1000
        rows["browse_ms"].append(b["browse_ms"])
        rows["resolve_ms"].append(float(up["resolve_ms"]))
        rows["ike_ms"].append(float(up["setup_ms"]))
        rows["tcp_first_byte_ms"].append(ttfb * 1000)
        rows["protocol_total_ms"].append(protocol)
        rows["startup_ms"].append(wall - protocol)
        rows["wall_ms"].append(wall)
        time.sleep(0.3)
    return rows


def remove_tunnel(app: App, daemon: Stage) -> None:
    """Back to an empty client: the app has the daemon remove the peer; wait for its down record."""
    seen = len(daemon.records)
    app.call("remove")
    wait_state(daemon, "down", seen)
    time.sleep(0.2)


def warm_view(world: World, app: App, runs: int, daemon: Stage, on_demand: bool) -> dict[str, list[float]]:
    keys = ("browse_ms", "resolve_ms", "control_ms", "ike_ms", "connect_ms", "first_byte_ms", "wall_ms")
    rows: dict[str, list[float]] = {k: [] for k in keys}
    for i in range(runs):
        seen = len(daemon.records)
        r = app.call("run")
        if not r["ok"]:
            raise SystemExit(f"run {i}: no response through the tunnel: {r}")
        expected = ["armed"] if on_demand else ["up"]
        if r["states"] != expected:
            raise SystemExit(f"run {i}: the daemon answered {r['states']}, expected {expected}")
        up = wait_state(daemon, "up", seen)
        for key in keys:
            rows[key].append(float(up["setup_ms"]) if key == "ike_ms" else float(r[key]))
        remove_tunnel(app, daemon)
    return rows


def pipeline_via_daemon_view(world: World, app: App, runs: int, daemon: Stage) -> dict[str, list[float]]:
    """The cold pipeline's commands while the laptop's daemon runs: btmm-tunnel-up hands the
    record to it (control socket) instead of starting a datapath and IKE of its own."""
    rows: dict[str, list[float]] = {k: [] for k in ("resolve_ms", "ike_ms", "pipeline_to_up_ms",
                                                     "fetch_process_ms", "tcp_first_byte_ms", "wall_ms")}
    for i in range(runs):
        seen = len(daemon.records)
        t0 = time.monotonic()
        client = world.start_cafe_client(name="cafe-via")
        up = client.wait_for(lambda r: r.get("type") == "tunnel" and r.get("state") == "up", 30, "tunnel")
        t_up = time.monotonic()
        body, ttfb = world.fetch(str(up["inner_remote"]))
        t_end = time.monotonic()
        wall = (t_end - t0) * 1000
        if "hello" not in body or up.get("already"):
            raise SystemExit(f"pipeline-via run {i}: {body!r} {up}")
        world.stop_stage("cafe-via")
        rows["resolve_ms"].append(float(up["resolve_ms"]))
        rows["ike_ms"].append(float(up["setup_ms"]))
        rows["pipeline_to_up_ms"].append((t_up - t0) * 1000)
        rows["fetch_process_ms"].append((t_end - t_up) * 1000 - ttfb * 1000)
        rows["tcp_first_byte_ms"].append(ttfb * 1000)
        rows["wall_ms"].append(wall)
        wait_state(daemon, "up", seen)
        remove_tunnel(app, daemon)
    return rows


def retrigger_view(world: World, app: App, runs: int, daemon: Stage) -> dict[str, list[float]]:
    rows: dict[str, list[float]] = {k: [] for k in ("resolve_and_ike_ms", "connect_ms", "first_byte_ms",
                                                     "wall_ms")}
    seen = len(daemon.records)
    first = app.call("run")  # arm, and a first connection
    if not first["ok"]:
        raise SystemExit(f"on-demand arm + connect failed: {first}")
    for i in range(runs):
        wait_state(daemon, "down", seen, timeout=15)  # the idle close
        seen = len(daemon.records)
        r = app.call("connect")
        if not r["ok"]:
            raise SystemExit(f"re-trigger run {i}: no response: {r}")
        triggered = wait_state(daemon, "triggered", seen)
        up = wait_state(daemon, "up", seen)
        seen = daemon.records.index(up) + 1
        rows["resolve_and_ike_ms"].append(float(up["setup_ms"]))  # IKE part; the re-resolve is in connect
        rows["connect_ms"].append(r["connect_ms"])
        rows["first_byte_ms"].append(r["first_byte_ms"])
        rows["wall_ms"].append(r["wall_ms"])
        del triggered
    app.call("remove")
    return rows


def startup_view(runs: int) -> dict[str, list[float]]:
    rows: dict[str, list[float]] = {}
    for script, modules in SCRIPTS.items():
        helps, imports = [], []
        for _ in range(runs):
            t0 = time.monotonic()
            subprocess.run([bin_path(script), "--help"], stdout=subprocess.DEVNULL, check=True)
            helps.append((time.monotonic() - t0) * 1000)
            code = (f"import time; t = time.perf_counter(); import {modules}; "
                    "print((time.perf_counter() - t) * 1e3)")
            imports.append(float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                                check=True).stdout))
        rows[f"{script} --help wall"] = helps
        rows[f"{script} work imports"] = imports
    via = []
    for _ in range(runs):
        t0 = time.monotonic()
        quiet: dict[str, Any] = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL,
                                 "stderr": subprocess.DEVNULL}
        subprocess.run([bin_path("btmm-tunnel-up"), "--via", "/nonexistent/btmm.sock"], check=False, **quiet)
        via.append((time.monotonic() - t0) * 1000)
    rows["btmm-tunnel-up --via wall (client)"] = via
    bare = []
    for _ in range(runs):
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        bare.append((time.monotonic() - t0) * 1000)
    rows["python -c pass wall"] = bare
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--views", default="cold,warm,on-demand,idle", help="comma-separated subset")
    args = parser.parse_args()
    views = set(args.views.split(","))
    results: dict[str, Any] = {}
    with Lab() as lab:
        world = World.create(lab)
        world.create_account()
        world.start_dns()
        world.start_home()
        time.sleep(0.5)
        print(f"time to first byte, demo topology (two NATs), {args.runs} runs per view "
              "(shared 2-core VM: noisy)")
        if "cold" in views:
            rows = cold_view(world, args.runs)
            results["cold"] = show("cold pipeline: btmm-browse | btmm-resolve-tunnel | btmm-tunnel-up, "
                                   "then fetch", rows)
        app = App(world)
        if "warm" in views:
            daemon = world.start_cafe_daemon("--listen")
            rows = warm_view(world, app, args.runs, daemon, on_demand=False)
            results["warm"] = show("warm daemon + app: browse, resolve (library), control socket → "
                                   "tunnel up, connect, first byte", rows)
            rows = pipeline_via_daemon_view(world, app, args.runs, daemon)
            results["pipeline_via_daemon"] = show(
                "warm daemon, cold pipeline: btmm-browse | btmm-resolve-tunnel | btmm-tunnel-up (→ control "
                "socket), then fetch", rows)
            world.stop_stage("cafe-daemon")
        if "on-demand" in views or "idle" in views:
            daemon = world.start_cafe_daemon("--on-demand", "--idle-timeout", "1")
            if "on-demand" in views:
                rows = warm_view(world, app, args.runs, daemon, on_demand=True)
                results["on_demand"] = show("on demand: browse, resolve, control socket → armed, connect "
                                            "(the SYN starts IKE), first byte", rows)
            if "idle" in views:
                rows = retrigger_view(world, app, args.runs, daemon)
                results["on_demand_after_idle"] = show(
                    "on demand after an idle close: connect (the SYN re-resolves + IKE), first byte", rows)
            world.stop_stage("cafe-daemon")
    results["startup"] = show("start-up (outside namespaces)", startup_view(max(3, args.runs // 2)))
    for view in ("cold", "warm", "pipeline_via_daemon", "on_demand", "on_demand_after_idle"):
        if view in results:
            wall = results[view]["wall_ms"]
            print(f"{view:<22} wall median {wall['median']:7.1f} ms, p90 {wall['p90']:7.1f} ms "
                  f"vs target 50 ms: {'met' if wall['median'] < 50 else 'NOT met'}")
    print(json.dumps({"type": "bench", "name": "e2e_ttfb", "runs": args.runs, **results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

