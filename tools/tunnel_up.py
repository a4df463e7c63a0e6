"""btmm-tunnel-up: bring ESP-in-UDP tunnels up over the userspace datapath and keep them up.

Two ways to key the tunnels:

* ``--static-keys FILE`` (manual keying, for tests and benchmarks — the equivalent of
  ``ip xfrm state add``): the JSON file (mode 0600) holds ``{"local": {"inner", "port",
  "inner4" (optional)},
  "peers": [SA parameters, ...]}`` in the plain-data form of :class:`esp_udp.SAParams`.
* IKE mode (``--listen``, ``--on-demand``, or ``tunnel-endpoint`` records on stdin):
  ``tools/tunnel_ike.py`` through the hook :func:`load_ike_mode` below.

Either way one process owns the UDP port (4500, IKE and ESP together), the TUN device
(``btmm0``) and one host route per peer; it emits one ``tunnel`` record per peer (state
``up``, later ``down``), publishes counters to the host's status file (``btmm-status``),
emits a ``counters`` record on SIGUSR1, and on SIGINT/SIGTERM removes routes and the TUN
device and exits 0.

Because that process is the only one that can own the port, in IKE mode it also listens on
a **control socket** (``--control``, default ``<state dir>/tunnel-up.sock``, mode 0600):
a later pipeline on the same host hands its ``tunnel-endpoint`` records to the running
process instead of starting its own. The client side of that (``--via``, or automatically
when records arrive on stdin and a daemon answers) lives in this module and is kept light:
it imports neither esp_udp nor ike_lite, cryptography, dnspython, pyroute2 or rich (in a
pipe), so it starts in a few tens of milliseconds.

Control protocol (JSON lines both ways, one connection per client): the client writes the
records it would have piped into the daemon's stdin, then half-closes; the daemon answers
with the records that settle each requested peer (``tunnel`` state up / armed, or an
error record), passes other records back, and closes when everything asked for is settled.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import queue
import select
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NamedTuple

from tools.account_file import state_dir
from tools.cli import (
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_REMOTE,
    EXIT_USAGE,
    Fatal,
    Output,
    Record,
    make_parser,
    make_record,
    run,
    stdin_records_available,
)

if TYPE_CHECKING:
    # esp_udp (pyroute2, cryptography: ~170 ms) is imported where a datapath is started, so
    # that --help and the --via client start fast
    from esp_udp.datapath import Datapath, DatapathEvent
    from esp_udp.sa import SAParams

PROG = "btmm-tunnel-up"
STATUS_COMPONENT = "tunnels"
# The same values as esp_udp.datapath's defaults (tests/e2e/test_control.py checks), repeated
# here so that building the parser does not import the datapath.
DEFAULT_PORT = 4500
DEFAULT_TUN = "btmm0"
DEFAULT_MTU = 1280
CONTROL_NAME = "tunnel-up.sock"

# ------------------------------------------------------------------------------ IKE hook
#: The IKE mode: ``run_ike_mode(args, datapath, out, stop) -> exit code``. ``datapath`` is
#: started (port bound, TUN up with this host's ULA); set ``datapath.on_ike`` /
#: ``datapath.on_event`` and add peers as they are negotiated; return when ``stop`` (a
#: threading.Event set by SIGINT/SIGTERM) is set. tunnel_up then closes the datapath.
IkeMode = Callable[[argparse.Namespace, "Datapath", Output, threading.Event], int]


_IKE_IMPORT_ERROR: list[str] = []


def load_ike_mode() -> tuple[IkeMode, Callable[[argparse.ArgumentParser], None] | None] | None:
    """HOOK: ``tools/tunnel_ike.py`` provides ``run_ike_mode``. None while it does not exist —
    or when it cannot be imported (the reason is kept: IKE mode reports it, static keys still
    work). The second element is kept for compatibility; the IKE flags are in
    :func:`build_parser` now (so that parsing never imports the IKE module)."""
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
    return runner, None


# ------------------------------------------------------------------------------ arguments
def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        PROG,
        "Bring ESP-in-UDP tunnels up (userspace ESP over a TUN device, UDP port shared with "
        "IKE) and keep them up until SIGINT/SIGTERM. One process per host owns the port: "
        "--listen (and/or --on-demand) runs it as the host's daemon; tunnel-endpoint records "
        "on stdin start initiators (in this process, or in the running daemon through its "
        "control socket); --static-keys FILE keys tunnels by hand (no IKE).",
        epilog="modes:\n"
        "  btmm-tunnel-up --listen [--on-demand]\n"
        "      the host's daemon: answers IKE, owns UDP 4500 and the TUN device, and takes\n"
        "      tunnel-endpoint records from stdin and from its control socket (--control)\n"
        "  btmm-browse -t _ssh._tcp | btmm-resolve-tunnel | btmm-tunnel-up\n"
        "      brings the tunnels up in this process and keeps them (exits when none is left);\n"
        "      if a daemon already runs on this host, hands the records to it instead (as --via)\n"
        "  btmm-resolve-tunnel --host nas | btmm-tunnel-up --via [SOCKET]\n"
        "      client only: hand records to the running daemon, print what it answers (tunnel\n"
        "      up/armed or error records), exit when they are settled; the daemon keeps the\n"
        "      tunnels. Exit 3 with a hint when no daemon listens.\n"
        "  btmm-tunnel-up --static-keys keys.json --keylog esp.keys\n\n"
        "on demand (--on-demand, or \"on_demand\": true in a record): a peer's ULA is routed into\n"
        "the TUN device and armed (tunnel record state \"armed\"); the first packet to it starts\n"
        "IKE (state \"triggered\", then \"up\"; the packets wait, bounded, and then leave); after\n"
        "an idle close it stays armed, and the next packet re-resolves the peer and brings the\n"
        "tunnel back. --on-demand-all arms every ULA of the account (the host is looked up from\n"
        "the ULA: the domain's services and their AAAA records).\n\n"
        "static keys file (JSON, mode 0600):\n"
        '  {"local": {"inner": "fd..", "port": 4500}, "peers": [{"inner": "fd..",\n'
        '   "outer": "198.18.0.2:4500", "suite": "aes256gcm16", "spi_in": "c0ffee01",\n'
        '   "spi_out": "c0ffee02", "key_in": "<hex key||salt>", "key_out": "<hex>"}]}\n'
        "  (key_in/spi_in protect what this host receives; suite also aes128gcm16,\n"
        '   chacha20poly1305; optional per-peer "keepalive": true when behind a NAT;\n'
        '   optional "inner4": "10.x.y.z" in local and in a peer: IPv4 through the tunnel too)\n'
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
    parser.add_argument("--offload", choices=["gro", "tso", "none"], default="tso",
                        help="TUN offloads: tso (default) takes TCP super-packets (IPv6 and IPv4) "
                        "from the kernel and segments them here, and glues received TCP segments "
                        "for it; "
                        "gro: only the gluing (the kernel segments and checksums what is sent); "
                        "none: plain TUN I/O")
    parser.add_argument("--keep-warm", type=float, default=None, metavar="SEC",
                        help="while a tunnel carries traffic (and 1 s after), wake the datapath every "
                        "SEC s to keep code and caches warm (default 0.0005: idle-ping RTT ~40 %% lower "
                        "here, for ~4 %% of a core per tunnel end while active, nothing when idle); "
                        "0 disables")
    parser.add_argument("--listen", action="store_true", help="IKE responder: run as this host's daemon")
    group = parser.add_argument_group("IKE mode")
    group.add_argument("--on-demand", action="store_true",
                       help="arm tunnel-endpoint records instead of negotiating at once: traffic to "
                       "the peer's ULA brings its tunnel up (and back after an idle close)")
    group.add_argument("--on-demand-all", action="store_true",
                       help="also route the account's whole ULA /48 into the TUN device: traffic to a ULA "
                       "no record named yet looks its host up in DNS (the host that advertises a service "
                       "on that ULA) and brings a tunnel up to it (implies --on-demand)")
    group.add_argument("--control", metavar="SOCKET", default=None,
                       help=f"control socket of the running process (default: <state dir>/{CONTROL_NAME},"
                       " mode 0600, removed on exit; 'none': no control socket)")
    group.add_argument("--via", metavar="SOCKET", nargs="?", const="", default=None,
                       help="client only: send stdin's records to the running btmm-tunnel-up through "
                       "its control socket (default as --control) and print its answers")
    group.add_argument("--ike-port", type=int, default=None, metavar="PORT",
                       help="also answer IKE on this plain UDP port (500: initiators that start there)")
    group.add_argument("--dpd", type=float, default=30.0, metavar="SEC",
                       help="liveness check after SEC s without a message from the peer (default 30)")
    group.add_argument("--pfs", action="store_true", help="use a fresh DH exchange for CHILD SA rekeys")
    group.add_argument("--idle-timeout", type=float, default=600.0, metavar="SEC",
                       help="close a tunnel we initiated after SEC s without traffic (default 600, as "
                       "BTMM; 0: never); an on-demand peer stays armed")
    return parser


# ------------------------------------------------------------------------------ control client
def control_path(args: argparse.Namespace, explicit: str | None = None) -> Path | None:
    """The control socket path (None: disabled with ``--control none``)."""
    text = explicit if explicit else getattr(args, "control", None)
    if text is not None and text.lower() == "none":
        return None
    if text:
        return Path(text)
    return state_dir(getattr(args, "state_dir", None)) / CONTROL_NAME


UNIX_PATH_MAX = 107  # sun_path holds 108 bytes with the terminating NUL


@contextlib.contextmanager
def unix_address(path: Path) -> Iterator[str]:
    """An address for bind/connect of Unix socket ``path``, however long the path is.

    ``sun_path`` holds 107 bytes; a longer path (a deep ``$XDG_STATE_HOME``) is reached
    through the directory opened as a file descriptor: ``/proc/self/fd/N/NAME``.
    """
    if len(os.fsencode(path)) <= UNIX_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)  # FileNotFoundError: no dir
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def connect_control(path: Path) -> socket.socket | None:
    """A connection to the daemon listening on ``path``; None when nothing listens there."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with unix_address(path) as address:
            sock.connect(address)
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
        sock.close()
        return None
    except PermissionError:
        sock.close()
        raise Fatal(f"control socket {path} is not yours (mode 0600): run as the user of the "
                    "btmm-tunnel-up daemon (or as root)", EXIT_USAGE) from None
    except OSError as exc:
        sock.close()
        raise Fatal(f"cannot connect to control socket {path}: {exc.strerror or exc}", EXIT_REMOTE) from None
    return sock


AUTH_FAILED_REASON = "AUTHENTICATION_FAILED"  # ike_lite.events values (not imported: cryptography)
TIMEOUT_REASON = "timeout"


def _peer_of(record: Record) -> str | None:
    if record.get("type") == "error":
        source = record.get("input")
        inner = source.get("inner") if isinstance(source, dict) else None
    else:
        inner = record.get("peer") or record.get("inner_remote") or record.get("inner")
    return inner if isinstance(inner, str) else None


def run_via(sock: socket.socket, path: Path, args: argparse.Namespace, out: Output) -> int:
    """Forward stdin's records to the daemon, emit what it answers; exit code as the daemon's."""
    on_demand = bool(getattr(args, "on_demand", False))
    stdin_fd = sys.stdin.fileno()
    stdin_open = stdin_records_available()
    if not stdin_open:
        sock.shutdown(socket.SHUT_WR)
    pending_in = b""
    pending_out = b""
    asked: set[str] = set()
    settled: set[str] = set()
    reasons: list[str] = []
    errors = 0

    def forward(line: bytes) -> None:
        if not line.strip():
            return
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            sock.sendall(line + b"\n")  # the daemon answers with the error record
            return
        if isinstance(record, dict) and record.get("type") == "tunnel-endpoint":
            if isinstance(record.get("inner"), str) and record.get("event") != "removed":
                asked.add(record["inner"])
            if on_demand:
                record["on_demand"] = True
                line = json.dumps(record, ensure_ascii=False).encode()
        sock.sendall(line + b"\n")

    while True:
        fds: list[Any] = [sock] + ([stdin_fd] if stdin_open else [])
        readable, _, _ = select.select(fds, [], [])
        if stdin_open and stdin_fd in readable:
            chunk = os.read(stdin_fd, 65536)
            if chunk:
                pending_in += chunk
                *lines, pending_in = pending_in.split(b"\n")
                for line in lines:
                    forward(line)
            else:
                stdin_open = False
                forward(pending_in)
                sock.shutdown(socket.SHUT_WR)
        if sock in readable:
            chunk = sock.recv(65536)
            if not chunk:
                break
            pending_out += chunk
            *lines, pending_out = pending_out.split(b"\n")
            for line in lines:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    continue
                if not isinstance(record, dict):
                    continue
                peer = _peer_of(record)
                if peer is not None:
                    settled.add(peer)
                if record.get("type") == "error":
                    errors += 1
                    if isinstance(record.get("reason"), str):
                        reasons.append(record["reason"])
                out.emit(record)
    sock.close()
    missing = asked - settled
    if missing:
        out.warn(f"the btmm-tunnel-up daemon on {path} closed the connection before answering for "
                 f"{', '.join(sorted(missing))} (did it stop?)")
        return EXIT_REMOTE
    if AUTH_FAILED_REASON in reasons:
        return EXIT_USAGE
    if reasons and all(r == TIMEOUT_REASON for r in reasons):
        return EXIT_REMOTE
    return EXIT_PARTIAL if errors else EXIT_OK


def no_daemon(path: Path) -> Fatal:
    return Fatal(f"no btmm-tunnel-up daemon listens on {path}: start one on this host "
                 "(btmm-tunnel-up --listen, or --on-demand), or drop --via to bring the tunnels up "
                 "in this process", EXIT_REMOTE)


# ------------------------------------------------------------------------------ static keys
class StaticKeys(NamedTuple):
    """A static-keys file: the local section and the peers."""

    inner: str
    port: int | None
    peers: list[tuple[SAParams, bool]]  # (params, keepalive)
    inner4: str | None = None  # local.inner4: this host's inner IPv4 (optional)


def load_static_keys(path: Path) -> StaticKeys:
    """The local inner address(es), port and peers of a static-keys file."""
    from esp_udp.errors import ConfigError
    from esp_udp.sa import SAParams, parse_inner, parse_inner4
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
        inner4 = (str(parse_inner4(local["inner4"], "local.inner4"))
                  if local.get("inner4") is not None else None)
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
        if params.inner4 is not None and (str(params.inner4) in seen or str(params.inner4) == inner4):
            raise Fatal(f"static keys file {path}: peer {number}: inner4 {params.inner4} is used twice")
        if params.inner4 is not None:
            seen.add(str(params.inner4))
        if params.spi_in in spis_in:
            raise Fatal(f"static keys file {path}: peer {number}: spi_in {params.spi_in:08x} is used "
                        "twice (inbound SPIs must be unique on this host)")
        seen.add(str(params.inner))
        spis_in.add(params.spi_in)
        peers.append((params, bool(item.get("keepalive", False))))
    if not peers:
        raise Fatal(f"static keys file {path} has no peers")
    return StaticKeys(inner, port, peers, inner4)


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
            "mtu": counters["mtu"], "keep_warm": getattr(dp, "keep_warm", None), "tunnels": tunnels,
            "unattributed": counters["unattributed"],
            **{k: counters[k] for k in ("on_demand_calls", "pending") if k in counters}}


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
                   on_event: Callable[[DatapathEvent], None] | None, *,
                   inner4: str | None = None) -> Datapath:
    from esp_udp.datapath import Datapath

    if not 576 <= args.mtu <= 65000:
        raise Fatal(f"--mtu {args.mtu} is out of range 576-65000 (IPv6 needs at least 1280)")
    extra: dict[str, Any] = {}
    if getattr(args, "keep_warm", None) is not None:
        extra["keep_warm"] = float(args.keep_warm)
    dp = Datapath(inner, port=port, tun_name=args.tun, mtu=args.mtu, on_event=on_event,
                  local_inner4=inner4,
                  offload=getattr(args, "offload", "tso") != "none",
                  tso=getattr(args, "offload", "tso") == "tso", **extra)
    try:
        dp.start()
    except OSError as exc:
        dp.close()
        raise Fatal(f"cannot start the datapath: {exc.strerror or exc}") from None
    return dp


def run_static(args: argparse.Namespace, out: Output, signals: Signals) -> int:
    from esp_udp.errors import ConfigError
    from tools.status_file import clear, publish

    inner, file_port, peers, inner4 = load_static_keys(Path(args.static_keys))
    port = args.port if args.port is not None else (file_port if file_port is not None else DEFAULT_PORT)
    if args.keylog:
        write_keylog(Path(args.keylog), [p for p, _ in peers])
        out.explain(f"keylog written to {args.keylog}")
    events: queue.SimpleQueue[DatapathEvent] = queue.SimpleQueue()
    signals.install()
    dp = start_datapath(args, inner, port, events.put, inner4=inner4)
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
    if args.via is not None:
        if args.static_keys or args.listen:
            raise Fatal("--via only hands records to the running daemon; it excludes --listen and "
                        "--static-keys")
        path = control_path(args, args.via)
        if path is None:
            raise Fatal("--via needs a control socket path (not 'none')")
        if not stdin_records_available():
            raise Fatal("--via forwards records from stdin: pipe tunnel-endpoint records in "
                        "(btmm-resolve-tunnel --host NAME | btmm-tunnel-up --via)")
        sock = connect_control(path)
        if sock is None:
            raise no_daemon(path)
        return run_via(sock, path, args, out)
    if args.static_keys and args.listen:
        raise Fatal("--static-keys and --listen exclude each other: static keys need no IKE")
    if args.keep_warm is not None and not 0 <= args.keep_warm <= 1:
        raise Fatal(f"--keep-warm {args.keep_warm} is out of range 0-1 s (0 disables it)")
    signals = Signals()
    if args.static_keys:
        return run_static(args, out, signals)
    daemon = args.listen or args.on_demand or args.on_demand_all
    if daemon or stdin_records_available():
        path = control_path(args)
        sock = connect_control(path) if path is not None else None
        if sock is not None and path is not None:
            if not daemon:  # the host's daemon owns the port: let it do the work
                out.explain(f"a btmm-tunnel-up daemon runs on this host ({path}); handing the records to it")
                return run_via(sock, path, args, out)
            sock.close()
            raise Fatal(f"a btmm-tunnel-up daemon already runs on this host (control socket {path}); "
                        "hand it records with `btmm-tunnel-up --via` (add --on-demand to arm them), or "
                        "stop it first")
        return run_ike(args, out, signals)
    raise Fatal("nothing to do: give --static-keys FILE, --listen, or tunnel-endpoint records "
                "on stdin (btmm-resolve-tunnel | btmm-tunnel-up)", EXIT_USAGE)


def main() -> None:
    run(PROG, main_body)


__all__ = ["load_ike_mode", "main", "run_via", "tunnel_record", "write_keylog"]

if __name__ == "__main__":  # pragma: no cover
    main()
