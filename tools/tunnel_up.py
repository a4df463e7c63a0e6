"""btmm-tunnel-up: bring ESP-in-UDP tunnels up over the userspace datapath and keep them up.

Two ways to key the tunnels:

* ``--static-keys FILE`` (manual keying, for tests and benchmarks — the equivalent of
  ``ip xfrm state add``): the JSON file (mode 0600) holds ``{"local": {"inner", "port"},
  "peers": [SA parameters, ...]}`` in the plain-data form of :class:`esp_udp.SAParams`.
* IKE mode (``--listen``, or ``tunnel-endpoint`` records on stdin): provided by
  ``tools/tunnel_ike.py`` through the hook :func:`load_ike_mode` below.

Either way one process owns the UDP port (4500, IKE and ESP together), the TUN device
(``btmm0``) and one host route per peer; it emits one ``tunnel`` record per peer (state
``up``, later ``down``), publishes counters to the host's status file (``btmm-status``),
emits a ``counters`` record on SIGUSR1, and on SIGINT/SIGTERM removes routes and the TUN
device and exits 0.
"""

from __future__ import annotations

import argparse
import importlib
import json
import queue
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from esp_udp.datapath import DEFAULT_MTU, DEFAULT_PORT, DEFAULT_TUN, Datapath, DatapathEvent
from esp_udp.errors import ConfigError
from esp_udp.sa import SAParams, parse_inner
from tools.cli import (
    EXIT_OK,
    EXIT_USAGE,
    Fatal,
    Output,
    Record,
    make_parser,
    make_record,
    run,
    stdin_records_available,
)

PROG = "btmm-tunnel-up"
STATUS_COMPONENT = "tunnels"

# ------------------------------------------------------------------------------ IKE hook
#: The IKE mode: ``run_ike_mode(args, datapath, out, stop) -> exit code``. ``datapath`` is
#: started (port bound, TUN up with this host's ULA); set ``datapath.on_ike`` /
#: ``datapath.on_event`` and add peers as they are negotiated; return when ``stop`` (a
#: threading.Event set by SIGINT/SIGTERM) is set. tunnel_up then closes the datapath.
IkeMode = Callable[[argparse.Namespace, Datapath, Output, threading.Event], int]


_IKE_IMPORT_ERROR: list[str] = []


def load_ike_mode() -> tuple[IkeMode, Callable[[argparse.ArgumentParser], None] | None] | None:
    """HOOK: ``tools/tunnel_ike.py`` provides ``run_ike_mode`` (and optionally
    ``add_arguments(parser)`` for its own flags). None while it does not exist — or when it
    cannot be imported (the reason is kept: IKE mode reports it, static keys still work)."""
    try:
        module = importlib.import_module("tools.tunnel_ike")
    except ModuleNotFoundError as exc:
        if exc.name != "tools.tunnel_ike":
            _IKE_IMPORT_ERROR[:] = [f"{type(exc).__name__}: {exc}"]
        return None
    except ImportError as exc:
        _IKE_IMPORT_ERROR[:] = [f"{type(exc).__name__}: {exc}"]
        return None
    runner = getattr(module, "run_ike_mode", None)
    if runner is None:
        return None
    return runner, getattr(module, "add_arguments", None)


# ------------------------------------------------------------------------------ arguments
def build_parser(ike: bool = True) -> argparse.ArgumentParser:
    parser = make_parser(
        PROG,
        "Bring ESP-in-UDP tunnels up (userspace ESP over a TUN device, UDP port shared with "
        "IKE) and keep them up until SIGINT/SIGTERM. --static-keys FILE keys them by hand "
        "(no IKE); otherwise IKE: --listen as responder, or tunnel-endpoint records on stdin.",
        epilog="examples:\n"
        "  btmm-tunnel-up --static-keys keys.json --keylog esp.keys\n"
        "  btmm-tunnel-up --listen\n"
        "  btmm-browse -t _ssh._tcp | btmm-resolve-tunnel | btmm-tunnel-up\n\n"
        "static keys file (JSON, mode 0600):\n"
        '  {"local": {"inner": "fd..", "port": 4500}, "peers": [{"inner": "fd..",\n'
        '   "outer": "198.18.0.2:4500", "suite": "aes256gcm16", "spi_in": "c0ffee01",\n'
        '   "spi_out": "c0ffee02", "key_in": "<hex key||salt>", "key_out": "<hex>"}]}\n'
        "  (key_in/spi_in protect what this host receives; suite also aes128gcm16,\n"
        '   chacha20poly1305; optional per-peer "keepalive": true when behind a NAT)\n'
        "SIGUSR1 writes a counters record.",
    )
    parser.add_argument("--static-keys", metavar="FILE", help="JSON file of SA parameters (0600)")
    parser.add_argument("--keylog", metavar="FILE",
                        help="write every SA's keys in Wireshark's esp_sa table format (0600)")
    parser.add_argument("--tun", default=DEFAULT_TUN, metavar="NAME",
                        help=f"TUN device name (default {DEFAULT_TUN})")
    parser.add_argument("--mtu", type=int, default=DEFAULT_MTU,
                        help=f"tunnel MTU on the TUN device and peer routes (default {DEFAULT_MTU})")
    parser.add_argument("--port", type=int, default=None,
                        help=f"local UDP port for IKE and ESP (default: the file's, else {DEFAULT_PORT})")
    parser.add_argument("--offload", choices=["gro", "tso", "none"], default="gro",
                        help="TUN offloads: gro (default) glues received TCP segments for the "
                        "kernel; tso also takes TCP super-packets from it and segments them here; "
                        "none: plain TUN I/O")
    parser.add_argument("--listen", action="store_true", help="IKE responder (IKE mode)")
    if ike:
        hook = load_ike_mode()
        if hook is not None and hook[1] is not None:
            hook[1](parser)
    return parser


# ------------------------------------------------------------------------------ static keys
def load_static_keys(path: Path) -> tuple[str, int | None, list[tuple[SAParams, bool]]]:
    """(local inner, local port, [(params, keepalive)]) from a static-keys file."""
    from tools.account_file import check_private

    check_private(path, "static keys file")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise Fatal(f"cannot read static keys file {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise Fatal(f"static keys file {path} is not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("local"), dict) \
            or not isinstance(data.get("peers"), list):
        raise Fatal(f"static keys file {path} must be {{\"local\": {{\"inner\": ..., \"port\": ...}}, "
                    "\"peers\": [...]}} (see --help)")
    local = data["local"]
    try:
        inner = str(parse_inner(local.get("inner"), "local.inner"))
    except ConfigError as exc:
        raise Fatal(f"static keys file {path}: {exc}") from None
    port = local.get("port")
    if port is not None and (not isinstance(port, int) or not 0 <= port <= 65535):
        raise Fatal(f"static keys file {path}: local.port must be a port number")
    peers: list[tuple[SAParams, bool]] = []
    seen: set[str] = set()
    spis_in: set[int] = set()
    for number, item in enumerate(data["peers"], start=1):
        try:
            params = SAParams.from_json(item)
        except ConfigError as exc:
            raise Fatal(f"static keys file {path}: peer {number}: {exc}") from None
        if str(params.inner) in seen or str(params.inner) == inner:
            raise Fatal(f"static keys file {path}: peer {number}: inner {params.inner} is used twice")
        if params.spi_in in spis_in:
            raise Fatal(f"static keys file {path}: peer {number}: spi_in {params.spi_in:08x} is used "
                        "twice (inbound SPIs must be unique on this host)")
        seen.add(str(params.inner))
        spis_in.add(params.spi_in)
        peers.append((params, bool(item.get("keepalive", False))))
    if not peers:
        raise Fatal(f"static keys file {path} has no peers")
    return inner, port, peers


def write_keylog(path: Path, params: list[SAParams]) -> None:
    """Wireshark esp_sa lines for every SA (mode 0600, replaced)."""
    from esp_udp.keylog import esp_sa_lines
    from tools.account_file import write_private

    lines = [line for p in params for line in esp_sa_lines(p)]
    write_private(path, ("\n".join(lines) + "\n").encode(), force=True)


# ------------------------------------------------------------------------------ records
def tunnel_record(dp: Datapath, params: SAParams, state: str, **extra: Any) -> Record:
    outer = dp.peer_outer(str(params.inner)) if state != "down" else params.outer
    return make_record(
        "tunnel", state=state, peer=str(params.inner), inner_local=str(dp.local_inner),
        inner_remote=str(params.inner), outer=f"{outer[0]}:{outer[1]}",
        spi_in=f"{params.spi_in:08x}", spi_out=f"{params.spi_out:08x}", suite=params.suite.value,
        local_port=dp.local_port, tun=dp.tun_name, mtu=dp.mtu, **extra)


def status_body(dp: Datapath, state: str = "up") -> dict[str, Any]:
    counters = dp.counters()
    tunnels = []
    for peer in counters["peers"]:
        peer_counters = {k: v for k, v in peer.items()
                         if k not in ("inner", "outer", "suite", "spi_out", "spi_in")}
        tunnels.append({"peer": peer["inner"], "state": state, "inner_remote": peer["inner"],
                        "outer": peer["outer"], "suite": peer["suite"], "spi_out": peer["spi_out"],
                        "spi_in": peer["spi_in"], "counters": peer_counters})
    return {"local": counters["local"], "port": counters["port"], "tun": counters["tun"],
            "mtu": counters["mtu"], "tunnels": tunnels, "unattributed": counters["unattributed"]}


class Signals:
    """SIGINT/SIGTERM set ``stop``; SIGUSR1 sets ``dump``."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.dump = threading.Event()

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGUSR1, self._dump)

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop.set()

    def _dump(self, signum: int, frame: FrameType | None) -> None:
        self.dump.set()


def start_datapath(args: argparse.Namespace, inner: str, port: int,
                   on_event: Callable[[DatapathEvent], None] | None) -> Datapath:
    if not 576 <= args.mtu <= 65000:
        raise Fatal(f"--mtu {args.mtu} is out of range 576-65000 (IPv6 needs at least 1280)")
    dp = Datapath(inner, port=port, tun_name=args.tun, mtu=args.mtu, on_event=on_event,
                  offload=getattr(args, "offload", "gro") != "none",
                  tso=getattr(args, "offload", "gro") == "tso")
    try:
        dp.start()
    except OSError as exc:
        dp.close()
        raise Fatal(f"cannot start the datapath: {exc.strerror or exc}") from None
    return dp


def run_static(args: argparse.Namespace, out: Output, signals: Signals) -> int:
    from tools.account_file import state_dir
    from tools.status_file import clear, publish

    inner, file_port, peers = load_static_keys(Path(args.static_keys))
    port = args.port if args.port is not None else (file_port if file_port is not None else DEFAULT_PORT)
    if args.keylog:
        write_keylog(Path(args.keylog), [p for p, _ in peers])
        out.explain(f"keylog written to {args.keylog}")
    events: queue.SimpleQueue[DatapathEvent] = queue.SimpleQueue()
    signals.install()
    dp = start_datapath(args, inner, port, events.put)
    status_dir = state_dir(getattr(args, "state_dir", None))
    by_inner = {str(p.inner): p for p, _ in peers}
    try:
        for number, (params, keepalive) in enumerate(peers, start=1):
            try:
                dp.add_peer(params, keepalive=keepalive)
            except ConfigError as exc:
                raise Fatal(f"static keys file {args.static_keys}: peer {number}: {exc}") from None
            out.explain(f"peer {params.inner} at {params.outer[0]}:{params.outer[1]} "
                        f"({params.suite.value}, SPI in {params.spi_in:08x} out {params.spi_out:08x})")
        for params, _ in peers:
            out.emit(tunnel_record(dp, params, "up"))
        ticks = 0
        while not signals.stop.is_set():
            if ticks % 5 == 0:  # the status file, once a second
                publish(status_dir, STATUS_COMPONENT, status_body(dp))
            ticks += 1
            signals.stop.wait(0.2)
            if signals.dump.is_set():
                signals.dump.clear()
                out.emit(make_record("counters", **dp.counters()))
            while True:
                try:
                    event = events.get_nowait()
                except queue.Empty:
                    break
                handle_static_event(dp, out, by_inner, event)
        final = dp.counters()
        for params, _ in peers:
            counters: dict[str, Any] = next(
                (c for c in final["peers"] if c["inner"] == str(params.inner)), {})
            out.emit(tunnel_record(dp, params, "down", counters={
                k: v for k, v in counters.items() if k not in ("inner", "outer", "suite")}))
    finally:
        dp.close()
        clear(status_dir, STATUS_COMPONENT)
    return EXIT_OK


def handle_static_event(dp: Datapath, out: Output, by_inner: dict[str, SAParams],
                        event: DatapathEvent) -> None:
    params = by_inner.get(event.inner)
    if event.kind == "nat_rebind" and params is not None and event.new_outer is not None:
        out.explain(f"peer {event.inner} moved to {event.new_outer[0]}:{event.new_outer[1]}")
        out.emit(tunnel_record(dp, params, "up", event="nat_rebind"))
    elif event.kind in ("rekey_needed", "seq_exhausted"):
        out.warn(f"SA {event.spi:08x} to {event.inner}: {event.kind.replace('_', ' ')}; "
                 "static keys cannot be rekeyed — restart with new keys")


def run_ike(args: argparse.Namespace, out: Output, signals: Signals) -> int:
    hook = load_ike_mode()
    if hook is None:
        if _IKE_IMPORT_ERROR:
            raise Fatal(f"IKE mode cannot start: tools.tunnel_ike failed to import "
                        f"({_IKE_IMPORT_ERROR[0]}); reinstall btmm (scripts/setup)", EXIT_USAGE)
        raise Fatal("IKE mode (--listen, or tunnel-endpoint records on stdin) is not available in "
                    "this build yet; use --static-keys FILE", EXIT_USAGE)
    from tools.account_file import load_host

    host = load_host(getattr(args, "account", None), getattr(args, "host", None),
                     getattr(args, "state_dir", None))
    port = args.port if args.port is not None else DEFAULT_PORT
    signals.install()
    dp = start_datapath(args, str(host.ula), port, None)
    try:
        return hook[0](args, dp, out, signals.stop)
    finally:
        dp.close()


def main_body() -> int:
    args = build_parser().parse_args()
    out = Output.from_args(PROG, args)
    if args.static_keys and args.listen:
        raise Fatal("--static-keys and --listen exclude each other: static keys need no IKE")
    signals = Signals()
    if args.static_keys:
        return run_static(args, out, signals)
    if args.listen or stdin_records_available():
        return run_ike(args, out, signals)
    raise Fatal("nothing to do: give --static-keys FILE, --listen, or tunnel-endpoint records "
                "on stdin (btmm-resolve-tunnel | btmm-tunnel-up)", EXIT_USAGE)


def main() -> None:
    run(PROG, main_body)


__all__ = ["load_ike_mode", "main", "tunnel_record", "write_keylog"]

if __name__ == "__main__":  # pragma: no cover
    main()
