"""miniupnpd 2.3.1 on a real nftables NAT in network namespaces: the portmap interop peer.

How this works
--------------
:class:`Internet` is the "public" side: one namespace (198.18.0.0/15 addresses, IP
forwarding on) that also runs the small STUN server of ``tools.peers.stun`` on two /32s
of its loopback. :class:`HomeRouter` hangs a NATed network off it:

    <name> (LAN host, 10.x.y.2) --eth0/lan0-- <name>-rt (router) --wan0/<to-name>-- Internet

The router namespace gets the nftables ruleset miniupnpd 2.3.x expects but does not
create (``table inet filter`` with ``forward``/``miniupnpd``, ``prerouting``/
``prerouting_miniupnpd`` and ``postrouting``/``postrouting_miniupnpd``; masquerade from
the LAN out of the WAN) and runs ``miniupnpd -d`` with a config in a temp directory.

There is no syslog daemon here and miniupnpd would write every line to /dev/console
(which stalls it). So it runs in a private mount namespace whose /dev is a small tmpfs
(null, zero, random, urandom bound from the real /dev) with ``/dev/log`` a symlink to a
unix datagram socket served by a sink process (``python -m tools.peers.miniupnpd sink``)
that appends the lines to ``syslog.log``. Everything is started through the Lab, so it
is stopped by PID and the namespaces are deleted on ``lab.close()``.

``stun=False`` leaves out ``ext_perform_stun``: miniupnpd then sees its reserved WAN
address and answers NAT-PMP with NETWORK_FAILURE and PCP with NO_RESOURCES — what a
double NAT / carrier-grade NAT looks like.

``restart()`` simulates a router reboot: stop miniupnpd, flush its chains (it leaves its
rules behind on exit), drop its lease file and the conntrack table, start it again; the
epoch starts again from 0.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tools.netns import Lab, LabError, require_binary

STUN_PRIMARY = "198.18.0.253"
STUN_ALTERNATE = "198.18.0.254"
NATPMP_PORT = 5351

RULESET = """
table inet filter {{
    chain forward {{
        type filter hook forward priority 0; policy drop;
        ct state established,related accept
        iifname "{lan}" oifname "{wan}" accept
        jump miniupnpd
    }}
    chain miniupnpd {{
    }}
    chain prerouting {{
        type nat hook prerouting priority -100; policy accept;
        jump prerouting_miniupnpd
    }}
    chain postrouting {{
        type nat hook postrouting priority 100; policy accept;
        jump postrouting_miniupnpd
        iifname "{lan}" oifname "{wan}" masquerade
    }}
    chain prerouting_miniupnpd {{
    }}
    chain postrouting_miniupnpd {{
    }}
}}
"""

CHAINS = ("miniupnpd", "prerouting_miniupnpd", "postrouting_miniupnpd")


@dataclass
class Internet:
    """The public side: a namespace with forwarding on and (optionally) the STUN server."""

    lab: Lab
    short: str = "peer"
    stun: bool = True
    workdir: Path | None = None
    ns: str = field(init=False)
    stun_process: subprocess.Popen[bytes] | None = field(init=False, default=None)
    _owns_workdir: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.ns = self.lab.ns(self.short)
        self.lab.sysctl(self.ns, "net.ipv4.ip_forward", "1")
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="btmm-internet-"))
            self._owns_workdir = True
        if self.stun:
            from tools.peers.stun import start_stun

            self.lab.addr(self.ns, "lo", f"{STUN_PRIMARY}/32")
            self.lab.addr(self.ns, "lo", f"{STUN_ALTERNATE}/32")
            self.stun_process = start_stun(self.lab, self.ns, STUN_PRIMARY, STUN_ALTERNATE,
                                           log_path=str(self.workdir / "stun.log"))

    @property
    def stun_server(self) -> str:
        return STUN_PRIMARY

    def close(self) -> None:
        """Stop the STUN server and remove the work directory if we made it (the Lab does the rest)."""
        if self.stun_process is not None:
            self.lab.stop(self.stun_process)
            self.stun_process = None
        if self._owns_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class HomeRouter:
    """A LAN namespace behind a NAT router namespace running miniupnpd (see the module notes).

    ``wan_addr``/``wan_peer_addr`` are the router's and the Internet side's ends of the WAN
    link (CIDR); ``lan_prefix`` is the LAN: router .1, host .2. Example, a home and a café:

        inet = Internet(lab)
        home = HomeRouter(lab, "home", inet.ns, "198.18.1.2/24", "10.77.0.0/24")
        cafe = HomeRouter(lab, "cafe", inet.ns, "198.18.2.2/24", "10.78.0.0/24", run_miniupnpd=False)
        lab.run(home.lan_ns, [...])        # a process on the home LAN host (10.77.0.2)
        home.restart()                     # reboot the home router's miniupnpd
    """

    lab: Lab
    name: str
    wan_ns: str
    wan_addr: str = "198.18.1.2/24"
    lan_prefix: str = "10.77.0.0/24"
    wan_peer_addr: str | None = None  # default: the first other host of wan_addr's network
    stun: bool = True
    stun_server: str = STUN_PRIMARY
    min_lifetime: int = 120
    max_lifetime: int = 86400
    run_miniupnpd: bool = True  # False: a plain NAT router (e.g. the café) without port mapping
    workdir: Path | None = None
    router_ns: str = field(init=False)
    lan_ns: str = field(init=False)
    miniupnpd: subprocess.Popen[bytes] | None = field(init=False, default=None)
    _sink: subprocess.Popen[bytes] | None = field(init=False, default=None)
    started_at: float = field(init=False, default=0.0)  # time.monotonic() when miniupnpd answered
    _owns_workdir: bool = field(init=False, default=False)

    WAN_IF = "wan0"
    LAN_IF = "lan0"
    HOST_IF = "eth0"

    def __post_init__(self) -> None:
        require_binary("miniupnpd", "miniupnpd-nftables")
        require_binary("nft", "nftables")
        lan = ipaddress.ip_network(self.lan_prefix)
        self.router_lan = str(lan.network_address + 1)
        self.host_addr = str(lan.network_address + 2)
        wan = ipaddress.ip_interface(self.wan_addr)
        if self.wan_peer_addr is None:
            peer = next(h for h in wan.network.hosts() if h != wan.ip)
            self.wan_peer_addr = f"{peer}/{wan.network.prefixlen}"
        self.router_wan = str(wan.ip)
        self.wan_peer = self.wan_peer_addr.split("/")[0]
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"btmm-{self.name}-router-"))
            self._owns_workdir = True
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.router_ns = self.lab.ns(f"{self.name}-rt")
        self.lan_ns = self.lab.ns(self.name)
        peer_if = f"to-{self.name}"[:15]
        self.lab.veth(self.router_ns, self.WAN_IF, self.wan_ns, peer_if)
        self.lab.addr(self.router_ns, self.WAN_IF, self.wan_addr)
        self.lab.addr(self.wan_ns, peer_if, self.wan_peer_addr)
        self.lab.veth(self.lan_ns, self.HOST_IF, self.router_ns, self.LAN_IF)
        self.lab.addr(self.router_ns, self.LAN_IF, f"{self.router_lan}/{lan.prefixlen}")
        self.lab.addr(self.lan_ns, self.HOST_IF, f"{self.host_addr}/{lan.prefixlen}")
        self.lab.route(self.lan_ns, "default", "via", self.router_lan)
        self.lab.route(self.router_ns, "default", "via", self.wan_peer)
        self.lab.sysctl(self.router_ns, "net.ipv4.ip_forward", "1")
        self.lab.nft(self.router_ns, RULESET.format(lan=self.LAN_IF, wan=self.WAN_IF))
        if self.run_miniupnpd:
            self.start_miniupnpd()

    # ------------------------------------------------------------------ files
    @property
    def conf_path(self) -> Path:
        return self._dir / "miniupnpd.conf"

    @property
    def log_path(self) -> Path:
        """miniupnpd's syslog lines (via the /dev/log sink)."""
        return self._dir / "syslog.log"

    @property
    def stderr_path(self) -> Path:
        return self._dir / "miniupnpd.stderr"

    @property
    def _dir(self) -> Path:
        if self.workdir is None:  # set in __post_init__
            raise LabError("HomeRouter has no work directory")
        return self.workdir

    def config(self) -> str:
        lan = ipaddress.ip_network(self.lan_prefix)
        lines = [
            f"ext_ifname={self.WAN_IF}",
            f"listening_ip={self.LAN_IF}",
            "ipv6_disable=yes",
            "enable_natpmp=yes",
            "enable_upnp=no",
            "secure_mode=yes",
            "system_uptime=no",
            f"min_lifetime={self.min_lifetime}",
            f"max_lifetime={self.max_lifetime}",
            f"lease_file={self._dir / 'leases'}",
            "upnp_table_name=filter",
            "upnp_nat_table_name=filter",
            "upnp_forward_chain=miniupnpd",
            "upnp_nat_chain=prerouting_miniupnpd",
            "upnp_nat_postrouting_chain=postrouting_miniupnpd",
            "uuid=3e1a6c2e-7a51-4c7e-9d0c-6b6d0e5a1f00",
        ]
        if self.stun:
            lines += ["ext_perform_stun=yes", f"ext_stun_host={self.stun_server}", "ext_stun_port=3478"]
        lines += [f"allow 1024-65535 {lan} 1024-65535", "deny 0-65535 0.0.0.0/0 0-65535", ""]
        return "\n".join(lines)

    # ------------------------------------------------------------------ lifecycle
    def _start_sink(self) -> Path:
        sock = self._dir / "log.sock"
        if self._sink is None or self._sink.poll() is not None:
            with contextlib.suppress(FileNotFoundError):
                sock.unlink()
            self._sink = self.lab.popen(None, [sys.executable, "-m", "tools.peers.miniupnpd", "sink",
                                               str(sock), str(self.log_path)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while not sock.exists():
                if time.monotonic() > deadline or self._sink.poll() is not None:
                    raise LabError("the /dev/log sink for miniupnpd did not start")
                time.sleep(0.02)
        return sock

    def start_miniupnpd(self, timeout: float = 20.0) -> None:
        """Start miniupnpd and wait until it answers NAT-PMP on the LAN side."""
        binary = require_binary("miniupnpd", "miniupnpd-nftables")
        sock = self._start_sink()
        self.conf_path.write_text(self.config())
        pidfile = self._dir / "miniupnpd.pid"
        olddev = self._dir / "olddev"
        olddev.mkdir(exist_ok=True)
        d = shlex.quote(str(olddev))
        binds = " && ".join(f"touch /dev/{n} && mount --bind {d}/{n} /dev/{n}"
                            for n in ("null", "zero", "random", "urandom"))
        script = (
            f"mount --rbind /dev {d} && mount -t tmpfs -o mode=755,size=64k btmm-dev /dev && {binds} && "
            f"ln -s {shlex.quote(str(sock))} /dev/log && umount -l {d} && "
            f"exec {binary} -d -f {shlex.quote(str(self.conf_path))} -P {shlex.quote(str(pidfile))}"
        )
        err = open(self.stderr_path, "ab")
        try:
            self.miniupnpd = self.lab.popen(self.router_ns, ["unshare", "-m", "--propagation", "private",
                                                             "sh", "-c", script],
                                            stdout=err, stderr=err, stdin=subprocess.DEVNULL)
        finally:
            err.close()
        self._wait_ready(timeout)
        self.started_at = time.monotonic()

    def _wait_ready(self, timeout: float) -> None:
        """Ready = UDP 5351 is bound (miniupnpd binds it after its STUN check)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.miniupnpd
            if proc is None or proc.poll() is not None:
                code = None if proc is None else proc.returncode
                raise LabError(f"miniupnpd exited ({code}); see {self.stderr_path} and {self.log_path}")
            out = self.lab.run(self.router_ns, ["ss", "-Hlun", f"sport = :{NATPMP_PORT}"], check=False).stdout
            if out.strip():
                return
            time.sleep(0.05)
        raise LabError(f"miniupnpd did not listen on UDP {NATPMP_PORT} within {timeout}s; "
                       f"see {self.stderr_path}")

    def stop_miniupnpd(self) -> None:
        if self.miniupnpd is not None:
            self.lab.stop(self.miniupnpd)
            self.miniupnpd = None

    def restart(self, clear_state: bool = True) -> None:
        """Stop and start miniupnpd; with ``clear_state`` like a reboot (rules, leases, conntrack)."""
        self.stop_miniupnpd()
        if clear_state:
            for chain in CHAINS:
                self.lab.run(self.router_ns, ["nft", "flush", "chain", "inet", "filter", chain])
            with contextlib.suppress(FileNotFoundError):
                (self._dir / "leases").unlink()
            self.lab.run(self.router_ns, ["conntrack", "-F"], check=False)
        self.start_miniupnpd()

    def rules(self) -> str:
        """The current miniupnpd-managed nft rules (for assertions)."""
        out = []
        for chain in CHAINS:
            proc = self.lab.run(self.router_ns, ["nft", "list", "chain", "inet", "filter", chain])
            out.append(proc.stdout.decode())
        return "\n".join(out)

    def close(self) -> None:
        """Stop miniupnpd and its log sink; remove the work directory if we made it."""
        self.stop_miniupnpd()
        if self._sink is not None:
            self.lab.stop(self._sink)
            self._sink = None
        if self._owns_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


# ---------------------------------------------------------------------- the /dev/log sink


def sink(sock_path: str, log_path: str) -> None:
    """Append every datagram on the unix socket to ``log_path`` until SIGTERM."""
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(sock_path)
    s.settimeout(0.5)
    with open(log_path, "ab") as log:
        while not stop:
            try:
                data = s.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            log.write(data.rstrip(b"\x00\n") + b"\n")
            log.flush()
    s.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(sock_path)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "sink":
        sink(sys.argv[2], sys.argv[3])
    else:
        sys.stderr.write("usage: python -m tools.peers.miniupnpd sink SOCKET LOGFILE\n")
        sys.exit(2)
