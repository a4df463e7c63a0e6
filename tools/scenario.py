"""The Back to My Mac world in network namespaces: used by btmm-demo and the end-to-end tests.

How this works
--------------
::

    laptop (10.2.0.2) ─ cafe-rt (NAT) ─┐                 ┌─ home-rt (NAT + miniupnpd) ─ bobs-imac (10.1.0.2)
                                       ├── internet ─────┤
                      198.18.2.2/24 ───┘ 198.18.0.53 DNS └── 198.18.1.2/24
                                         (btmm-serve), STUN for miniupnpd

* ``internet``: 198.18.0.0/15, runs ``btmm-serve`` for the account's zone on
  198.18.0.53:53 and the small STUN server miniupnpd needs to believe its WAN address.
* ``home``: Bob's iMac behind a NAT router running miniupnpd; it runs
  ``btmm-map-port | btmm-register`` and ``btmm-tunnel-up --listen`` and an HTTP service.
* ``cafe``: the laptop behind a second NAT (plain masquerade, no port mapping); it runs
  ``btmm-browse | btmm-resolve-tunnel | btmm-tunnel-up`` and fetches the service.

Every process is a real console script started through the :class:`~tools.netns.Lab`, so
it is stopped by PID; everything disappears with ``close()`` (also on Ctrl-C).
Both hosts share one account file (as a user copies it); each has its own state dir
(host identity, status files).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tools.netns import Lab, LabError
from tools.peers.miniupnpd import HomeRouter, Internet

DOMAIN = "bob.members.example"
DNS_ADDR = "198.18.0.53"
HOME_LABEL = "bobs-imac"
HOME_NAME = "Bob’s iMac"
CAFE_LABEL = "laptop"
SERVICE_TYPE = "_http._tcp"
SERVICE_PORT = 8080

BIN = Path(sys.executable).parent


def bin_path(name: str) -> str:
    return str(BIN / name)


class ScenarioError(RuntimeError):
    """A stage of the scenario did not produce what it should (message says which)."""


@dataclass
class Stage:
    """A running pipeline of btmm console scripts; JSON lines of its last stage are collected."""

    name: str
    procs: list[subprocess.Popen[bytes]]
    records: list[dict[str, Any]] = field(default_factory=list)
    stderr_files: list[Path] = field(default_factory=list)
    _buf: bytes = b""

    @property
    def stdout(self) -> IO[bytes]:
        out = self.procs[-1].stdout
        if out is None:
            raise ScenarioError(f"{self.name}: no stdout pipe")
        return out

    def poll_records(self, timeout: float) -> list[dict[str, Any]]:
        """Read whatever lines arrive within ``timeout`` seconds; returns the new records."""
        new: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        fd = self.stdout.fileno()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            self._buf += chunk
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                if line.strip():
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        rec = {"type": "unparsed", "line": line.decode(errors="replace")}
                    new.append(rec)
            if new:
                break
        self.records.extend(new)
        return new

    def wait_for(self, predicate: Any, timeout: float, what: str) -> dict[str, Any]:
        """The first record (already seen or arriving) for which ``predicate(record)`` holds."""
        for rec in self.records:
            if predicate(rec):
                return rec
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for rec in self.poll_records(min(0.5, max(0.01, deadline - time.monotonic()))):
                if predicate(rec):
                    return rec
                if rec.get("type") == "error":
                    raise ScenarioError(f"{self.name}: {rec.get('error')}")
            last = self.procs[-1]
            if last.poll() is not None and not self._pending_output():
                raise ScenarioError(f"{self.name}: exited ({last.returncode}) before {what}: "
                                    f"{self.stderr_tail()}")
        raise ScenarioError(f"{self.name}: no {what} within {timeout:.0f} s; {self.stderr_tail()}")

    def _pending_output(self) -> bool:
        ready, _, _ = select.select([self.stdout.fileno()], [], [], 0)
        return bool(ready)

    def stderr_tail(self, lines: int = 3) -> str:
        tails = []
        for path in self.stderr_files:
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").strip().splitlines()
                if text:
                    tails.append(f"[{path.stem}] " + " | ".join(text[-lines:]))
        return "; ".join(tails) or "(no stderr)"


@dataclass
class World:
    """The namespaces, the account and the running stages of the demo."""

    lab: Lab
    workdir: Path
    internet: Internet | None = None
    home: HomeRouter | None = None
    cafe: HomeRouter | None = None
    account_file: Path | None = None
    stages: dict[str, Stage] = field(default_factory=dict)
    last_ping: str = ""

    @classmethod
    def create(cls, lab: Lab, workdir: Path | None = None) -> World:
        # A world's own temp dir (logs, account, keys) goes when the lab closes; a given one stays.
        wd = workdir or lab.remove_on_close(Path(tempfile.mkdtemp(prefix="btmm-world-")))
        world = cls(lab=lab, workdir=wd)
        for sub in ("internet", "home-router", "cafe-router"):
            (wd / sub).mkdir(parents=True, exist_ok=True)
        world.internet = Internet(lab, short="internet", workdir=wd / "internet")
        world.home = HomeRouter(lab, "home", world.internet.ns, wan_addr="198.18.1.2/24",
                                wan_peer_addr="198.18.1.1/24", lan_prefix="10.1.0.0/24",
                                workdir=wd / "home-router")
        world.cafe = HomeRouter(lab, "cafe", world.internet.ns, wan_addr="198.18.2.2/24",
                                wan_peer_addr="198.18.2.1/24", lan_prefix="10.2.0.0/24", run_miniupnpd=False,
                                workdir=wd / "cafe-router")
        lab.addr(world.internet.ns, "lo", f"{DNS_ADDR}/32")
        # The outer networks are IPv4-only, as BTMM's world was: IPv6 exists only inside tunnels.
        for ns in (world.internet.ns, world.home.router_ns, world.cafe.router_ns):
            lab.sysctl(ns, "net.ipv6.conf.all.disable_ipv6", "1")
        return world

    # ------------------------------------------------------------------ environment
    @property
    def inet_ns(self) -> str:
        if self.internet is None:
            raise ScenarioError("world not created")
        return self.internet.ns

    @property
    def home_ns(self) -> str:
        if self.home is None:
            raise ScenarioError("world not created")
        return self.home.lan_ns

    @property
    def cafe_ns(self) -> str:
        if self.cafe is None:
            raise ScenarioError("world not created")
        return self.cafe.lan_ns

    def env(self, who: str) -> dict[str, str]:
        if self.account_file is None:
            raise ScenarioError("no account yet")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BTMM_", "XDG_"))}
        env.update(BTMM_ACCOUNT=str(self.account_file), BTMM_STATE_DIR=str(self.workdir / f"{who}-state"),
                   XDG_CONFIG_HOME=str(self.workdir / f"{who}-config"), COLUMNS="120",
                   PYTHONUNBUFFERED="1")
        return env

    def create_account(self) -> dict[str, Any]:
        self.account_file = self.workdir / "account.json"
        proc = subprocess.run([bin_path("btmm-account"), "--account", str(self.account_file), "init",
                               "--domain", DOMAIN, "--server", f"{DNS_ADDR}:53", "--json"],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ScenarioError(f"btmm-account init failed: {proc.stderr.strip()}")
        rec: dict[str, Any] = json.loads(proc.stdout)
        return rec

    def pipeline(self, name: str, ns: str, who: str, argvs: list[list[str]],
                 stdin: int | None = subprocess.DEVNULL) -> Stage:
        """Start ``argv1 | argv2 | ...`` inside ``ns``; every process tracked by the Lab."""
        procs: list[subprocess.Popen[bytes]] = []
        errs: list[Path] = []
        prev: IO[bytes] | None = None
        env = self.env(who)
        for i, argv in enumerate(argvs):
            err_path = self.workdir / f"{name}.{i}.{Path(argv[0]).name}.stderr"
            errs.append(err_path)
            with open(err_path, "wb") as err:
                proc = self.lab.popen(ns, argv, stdin=prev if prev is not None else stdin,
                                      stdout=subprocess.PIPE, stderr=err, env=env)
            if prev is not None:
                prev.close()
            prev = proc.stdout
            procs.append(proc)
        stage = Stage(name=name, procs=procs, stderr_files=errs)
        self.stages[name] = stage
        return stage

    def stop_stage(self, name: str, timeout: float = 15.0) -> list[int | None]:
        """SIGTERM every process of the stage (by PID), wait, and collect its last records."""
        stage = self.stages.pop(name)
        for proc in stage.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in stage.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(OSError, ValueError):
            rest = stage.stdout.read()
            for line in (stage._buf + (rest or b"")).splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    stage.records.append(json.loads(line))
            stage._buf = b""
        codes = [self.lab.stop(p, timeout=5.0) for p in stage.procs]
        self.stages[f"{name}-stopped"] = stage
        return codes

    # ------------------------------------------------------------------ the parts
    def start_dns(self) -> dict[str, Any]:
        stage = self.pipeline("dns", self.inet_ns, "dns", [[
            bin_path("btmm-serve"), "--db", str(self.workdir / "dns.db"),
            "--listen", f"{DNS_ADDR}:53", "--json"]])
        return stage.wait_for(lambda r: r.get("type") == "server" and r.get("state") == "ready", 20,
                              "server ready record")

    def start_bind(self) -> Path:
        """BIND 9 (named) instead of btmm-serve, on the same address, with the account's TSIG key."""
        from tools.account_file import load_account
        from tools.peers.bind import BindServer, PeerZone, zone_text

        account = load_account(str(self.account_file))
        zone = PeerZone(name=DOMAIN, key_name=account.tsig_name, key_secret=account.tsig_secret)
        server = BindServer(zones=[zone], tls=False, address=DNS_ADDR, port=53)
        d = self.workdir / "bind"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{DOMAIN}.zone").write_text(zone_text(zone))
        conf = d / "named.conf"
        conf.write_text(server.config(d))
        err = open(d / "named.stderr", "wb")
        self.lab.popen(self.inet_ns, ["named", "-f", "-c", str(conf)], cwd=d, stdout=err,
                       stderr=subprocess.STDOUT)
        err.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            proc = self.lab.run(self.inet_ns, ["dig", "+short", "+time=1", "+tries=1", f"@{DNS_ADDR}",
                                               DOMAIN, "SOA"], check=False)
            if proc.returncode == 0 and proc.stdout.strip():
                return conf
            time.sleep(0.2)
        raise ScenarioError(f"named did not answer on {DNS_ADDR}: {(d / 'named.log').read_text()[-500:]}"
                            if (d / "named.log").exists() else f"named did not answer on {DNS_ADDR}")

    def start_home_registration(self, *, map_port: bool = True) -> Stage:
        register = [bin_path("btmm-register"), "--host", HOME_LABEL, "--name", HOME_NAME,
                    "--service", f"{SERVICE_TYPE}:{SERVICE_PORT}:path=/", "--model", "btmm-demo", "--json"]
        if map_port:
            return self.pipeline("home-register", self.home_ns, "home",
                                 [[bin_path("btmm-map-port"), "--watch", "--json"], register])
        return self.pipeline("home-register", self.home_ns, "home", [register])

    def start_home(self) -> Stage:
        """Bob's iMac in full: registered through its NAT (waits for the outer endpoint), its tunnel
        listener and its HTTP service. Returns the registration stage."""
        reg = self.start_home_registration()
        reg.wait_for(lambda r: r.get("type") == "registration" and bool(r.get("outer")), 60, "registration")
        self.start_home_tunnel()
        self.start_home_service()
        return reg

    def start_home_tunnel(self) -> Stage:
        """The iMac's ``btmm-tunnel-up --listen``; returns once it answers (its control socket is up,
        which happens after the UDP port and the TUN device)."""
        stage = self.pipeline("home-tunnel", self.home_ns, "home",
                              [[bin_path("btmm-tunnel-up"), "--listen", "--host", HOME_LABEL, "--json"]])
        self.wait_control("home", stage)
        return stage

    def start_home_service(self, ns: str | None = None,
                           who: str = "Bob\\u2019s iMac") -> subprocess.Popen[bytes]:
        """A small HTTP service on [::]:8080 in the home namespace (or ``ns``), reachable via the ULA;
        it answers ``hello from <who> via <client address>``."""
        code = (
            "import http.server, socketserver, socket\n"
            "class H(http.server.BaseHTTPRequestHandler):\n"
            "    def do_GET(self):\n"
            f"        body = ('hello from {who} via ' + self.client_address[0] + '\\n').encode()\n"
            "        self.send_response(200); self.send_header('Content-Length', str(len(body)))\n"
            "        self.end_headers(); self.wfile.write(body)\n"
            "    def log_message(self, *a): pass\n"
            "class S(http.server.ThreadingHTTPServer):\n"
            "    address_family = socket.AF_INET6\n"
            "    def server_bind(self):\n"  # not HTTPServer's: its socket.getfqdn() asks a DNS
            "        socketserver.TCPServer.server_bind(self)\n"  # server the lab does not have
            f"        self.server_name, self.server_port = 'bobs-imac', {SERVICE_PORT}\n"
            f"S(('::', {SERVICE_PORT}), H).serve_forever()\n"
        )
        return self.lab.popen(ns or self.home_ns, [sys.executable, "-c", code], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)

    def start_cafe_client(self, *tunnel_args: str, name: str = "cafe-client") -> Stage:
        """``btmm-browse | btmm-resolve-tunnel | btmm-tunnel-up`` on the laptop (``tunnel_args``,
        e.g. ``--via``, go to btmm-tunnel-up)."""
        return self.pipeline(name, self.cafe_ns, "cafe", [
            [bin_path("btmm-browse"), "-t", SERVICE_TYPE, "--json"],
            [bin_path("btmm-resolve-tunnel"), "--json"],
            [bin_path("btmm-tunnel-up"), "--host", CAFE_LABEL, "--json", *tunnel_args],
        ])

    def start_cafe_daemon(self, *flags: str, timeout: float = 20.0) -> Stage:
        """The laptop's long-running ``btmm-tunnel-up`` (``flags``: --listen and/or --on-demand, ...),
        started with no peers; returns once its control socket answers."""
        stage = self.pipeline("cafe-daemon", self.cafe_ns, "cafe", [
            [bin_path("btmm-tunnel-up"), "--host", CAFE_LABEL, "--json", *flags]])
        self.wait_control("cafe", stage, timeout)
        return stage

    def control_path(self, who: str) -> Path:
        """Where ``who``'s btmm-tunnel-up listens for control clients (its state dir)."""
        return self.workdir / f"{who}-state" / "tunnel-up.sock"

    def wait_control(self, who: str, stage: Stage, timeout: float = 20.0) -> None:
        import socket

        from tools.tunnel_up import unix_address

        path = self.control_path(who)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                with unix_address(path) as address:
                    probe.connect(address)
                return
            except OSError:
                if stage.procs[-1].poll() is not None:
                    raise ScenarioError(f"{stage.name} exited ({stage.procs[-1].returncode}) before its "
                                        f"control socket answered: {stage.stderr_tail()}") from None
                time.sleep(0.02)
            finally:
                probe.close()
        raise ScenarioError(f"{stage.name}: no control socket at {path} within {timeout:.0f} s")

    def run_pipeline(self, name: str, ns: str, who: str, argvs: list[list[str]],
                     timeout: float = 30.0) -> tuple[list[dict[str, Any]], list[int | None]]:
        """Run ``argv1 | argv2 | ...`` to completion: (records of the last stage, exit codes)."""
        stage = self.pipeline(name, ns, who, argvs)
        deadline = time.monotonic() + timeout
        while stage.procs[-1].poll() is None and time.monotonic() < deadline:
            stage.poll_records(0.1)
        codes = self.stop_stage(name, timeout=5.0)  # reads what is left of the output
        return self.stages[f"{name}-stopped"].records, codes

    def add_public_host(self, label: str = "vps", addr: str = "198.18.3.2",
                        name: str = "Bob’s VPS") -> str:
        """A second host of the account with a public address (no NAT): its ULA carries the same
        HTTP service; it registers with ``--outer ADDR:4500`` and runs ``btmm-tunnel-up --listen``.
        Returns its namespace."""
        ns = self.lab.ns(label)
        link = ipaddress.ip_interface(f"{addr}/24")
        gateway = str(next(h for h in link.network.hosts() if h != link.ip))
        self.lab.veth(ns, "eth0", self.inet_ns, f"to-{label}"[:15])
        self.lab.addr(ns, "eth0", f"{addr}/24")
        self.lab.addr(self.inet_ns, f"to-{label}"[:15], f"{gateway}/24")
        self.lab.route(ns, "default", "via", gateway)
        env = self.env(label)
        proc = self.lab.run(ns, [bin_path("btmm-register"), "--host", label, "--name", name, "--service",
                                 f"{SERVICE_TYPE}:{SERVICE_PORT}:path=/", "--outer", f"{addr}:4500",
                                 "--once", "--json"], env=env, check=False, timeout=30)
        if proc.returncode != 0:
            raise ScenarioError(f"btmm-register on {label} failed: {proc.stderr.decode(errors='replace')}")
        listen = [bin_path("btmm-tunnel-up"), "--listen", "--host", label, "--json"]
        stage = self.pipeline(f"{label}-tunnel", ns, label, [listen])
        self.wait_control(label, stage)
        self.start_home_service(ns, name.replace("’", "\\u2019"))
        return ns

    def ping(self, ula: str, count: int = 1, wait: float = 5.0) -> bool:
        """ping6 ``ula`` from the café laptop; True when a reply came back."""
        proc = self.lab.run(self.cafe_ns, ["ping", "-6", "-n", "-c", str(count), "-W", str(wait), ula],
                            check=False, timeout=wait * count + 10)
        self.last_ping = (proc.stdout + proc.stderr).decode(errors="replace")
        return proc.returncode == 0

    def fetch(self, ula: str, timeout: float = 10.0) -> tuple[str, float]:
        """GET http://[ula]:8080/ from the café host; (body, seconds from connect to first byte)."""
        code = (
            "import socket, sys, time\n"
            "t0 = time.monotonic()\n"
            f"s = socket.create_connection(('{ula}', {SERVICE_PORT}), timeout={timeout})\n"
            "s.sendall(b'GET / HTTP/1.0\\r\\nHost: bobs-imac\\r\\n\\r\\n')\n"
            "first = s.recv(65536); t1 = time.monotonic(); data = first\n"
            "while True:\n"
            "    chunk = s.recv(65536)\n"
            "    if not chunk: break\n"
            "    data += chunk\n"
            "sys.stdout.write(repr(t1 - t0) + '\\n' + data.decode())\n"
        )
        proc = self.lab.run(self.cafe_ns, [sys.executable, "-c", code], timeout=timeout + 5, check=False)
        if proc.returncode != 0:
            raise ScenarioError(f"fetching http://[{ula}]:{SERVICE_PORT}/ from the café failed: "
                                f"{proc.stderr.decode(errors='replace').strip().splitlines()[-1:]}")
        first, _, rest = proc.stdout.decode().partition("\n")
        return rest, float(first)

    def close(self) -> None:
        self.lab.close()


__all__ = ["DNS_ADDR", "DOMAIN", "HOME_LABEL", "HOME_NAME", "LabError", "ScenarioError", "Stage", "World"]
