"""strongSwan 5.9 (charon + kernel-libipsec) in a network namespace — the IKEv2/ESP peer.

How this works (facts from INTEROP.md): the kernel has no ESP, so charon runs the
kernel-libipsec plugin (userspace ESP-in-UDP over a TUN ``ipsec0``, routes in table 220);
kernel-libipsec must be loaded before kernel-netlink. ``/run/charon.pid`` is compiled in,
so each charon gets a private mount namespace with ``DIR/run`` bound over ``/run``
(``unshare -m`` then ``exec charon``: no fork, the PID we hold is charon's). vici listens
on ``DIR/charon.vici``; we drive it with ``swanctl --uri``. Everything lives in a temp
dir; nothing touches /etc. The log (``DIR/charon.log``, ``ike = 4, chd = 4``, times with
milliseconds) is what tests read to confirm suites and keys.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tools.netns import Lab, LabError, require_binary, wait_for

CHARON = "/usr/lib/ipsec/charon"
PLUGINS = ("random nonce openssl aes sha1 sha2 hmac gcm curve25519 pem pkcs1 x509 pubkey kdf "
           "kernel-libipsec kernel-netlink socket-default vici")


@dataclass
class Conn:
    """One swanctl connection with one child (tunnel mode, ULA /128 ↔ /128, PSK)."""

    name: str
    local_id: str
    remote_id: str
    local_ts: str
    remote_ts: str
    remote_addrs: str = "%any"
    local_port: int = 500
    remote_port: int = 500
    proposals: str = "aes256gcm16-prfsha256-x25519"
    esp_proposals: str = "aes256gcm16"
    encap: bool = True
    mobike: bool = False
    dpd_delay: int = 0
    rekey_time: str = "4h"
    child_rekey_time: str = "1h"
    start_action: str = "none"
    child: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def render(self) -> str:
        child = self.child or f"{self.name}-child"
        extra = "".join(f"    {k} = {v}\n" for k, v in self.extra.items())
        return f"""  {self.name} {{
    version = 2
    remote_addrs = {self.remote_addrs}
    local_port = {self.local_port}
    remote_port = {self.remote_port}
    proposals = {self.proposals}
    encap = {"yes" if self.encap else "no"}
    mobike = {"yes" if self.mobike else "no"}
    dpd_delay = {self.dpd_delay}s
    rekey_time = {self.rekey_time}
{extra}    local {{
      auth = psk
      id = {self.local_id}
    }}
    remote {{
      auth = psk
      id = {self.remote_id}
    }}
    children {{
      {child} {{
        mode = tunnel
        local_ts = {self.local_ts}/128
        remote_ts = {self.remote_ts}/128
        esp_proposals = {self.esp_proposals}
        rekey_time = {self.child_rekey_time}
        start_action = {self.start_action}
      }}
    }}
  }}
"""


class Charon:
    """A charon daemon in ``ns`` with its own config dir; stopped by PID with the Lab."""

    def __init__(self, lab: Lab, ns: str, workdir: Path, *, port: int = 500, port_nat_t: int = 4500) -> None:
        require_binary("swanctl", "strongswan-swanctl")
        if not Path(CHARON).exists():
            raise LabError("charon is not installed: apt-get install strongswan-charon "
                           "libcharon-extra-plugins libstrongswan-standard-plugins")
        self.lab, self.ns, self.dir = lab, ns, workdir
        self.port, self.port_nat_t = port, port_nat_t
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "run").mkdir(exist_ok=True)
        self.vici = self.dir / "charon.vici"
        self.log = self.dir / "charon.log"
        self.conf = self.dir / "strongswan.conf"
        self.swanctl_conf = self.dir / "swanctl.conf"
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self) -> None:
        self.conf.write_text(f"""charon {{
  load_modular = no
  load = {PLUGINS}
  port = {self.port}
  port_nat_t = {self.port_nat_t}
  install_virtual_ip = no
  retransmit_timeout = 1.0
  retransmit_base = 1.4
  retransmit_tries = 3
  filelog {{
    main {{
      path = {self.log}
      time_format = %H:%M:%S
      time_add_ms = yes
      default = 1
      ike = 4
      chd = 4
      cfg = 2
      knl = 1
      net = 1
      enc = 1
      flush_line = yes
    }}
  }}
  syslog {{
    identifier = charon-btmm
    daemon {{
      default = -1
    }}
  }}
  plugins {{
    vici {{
      socket = unix://{self.vici}
    }}
  }}
}}
swanctl {{
  load = pem pkcs1 x509 pubkey
}}
""")

    def start(self, timeout: float = 15.0) -> None:
        self.write_config()
        self.vici.unlink(missing_ok=True)  # a stale socket from an earlier charon in this dir
        script = (f"mount --bind {self.dir / 'run'} /run && exec env STRONGSWAN_CONF={self.conf} {CHARON}")
        self.proc = self.lab.popen(self.ns, ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise LabError(f"charon exited with {self.proc.returncode}; see {self.log}")
            return self.vici.exists()

        wait_for(ready, timeout, what="charon's vici socket")

    def load(self, conns: list[Conn], psk: bytes) -> None:
        ids = sorted({c.local_id for c in conns} | {c.remote_id for c in conns})
        id_lines = "".join(f"      id-{i} = {ident}\n" for i, ident in enumerate(ids))
        body = "connections {\n" + "".join(c.render() for c in conns) + "}\n"
        body += f"secrets {{\n  ike-btmm {{\n{id_lines}      secret = 0x{psk.hex()}\n  }}\n}}\n"
        self.swanctl_conf.write_text(body)
        self.swanctl_conf.chmod(0o600)
        self.swanctl("--load-all", "--clear", "--noprompt", "--file", str(self.swanctl_conf))

    def swanctl(self, command: str, *args: str, check: bool = True, timeout: float = 30.0) -> str:
        argv = ["env", f"STRONGSWAN_CONF={self.conf}", "swanctl", command, *args, "--uri", f"unix://{self.vici}"]
        proc = self.lab.run(self.ns, argv, check=False, timeout=timeout)
        out = (proc.stdout + proc.stderr).decode(errors="replace")
        if check and proc.returncode != 0:
            raise LabError(f"swanctl {command} {' '.join(args)} failed ({proc.returncode}): {out[-800:]}")
        return out

    def initiate(self, child: str, timeout: int = 20, check: bool = True) -> str:
        return self.swanctl("--initiate", "--child", child, "--timeout", str(timeout), check=check,
                            timeout=timeout + 10)

    def list_sas(self) -> str:
        return self.swanctl("--list-sas", "--raw")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_log(self, pattern: str, timeout: float = 15.0, after: int = 0) -> re.Match[str]:
        """Wait until the log (from offset ``after``) matches ``pattern``; return the match."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while time.monotonic() < deadline:
            m = rx.search(self.log_text(), after)
            if m:
                return m
            time.sleep(0.05)
        tail = "\n".join(line for line in self.log_text()[after:].splitlines() if "  " not in line[16:30])
        raise LabError(f"timed out after {timeout}s waiting for /{pattern}/ in {self.log}; "
                       f"log:\n{tail[-2500:]}")

    def log_size(self) -> int:
        return len(self.log_text())

    def stop(self) -> None:
        if self.proc is not None:
            self.lab.stop(self.proc)
            self.proc = None


def child_sas(raw: str) -> list[dict[str, str]]:
    """CHILD SAs from ``swanctl --list-sas --raw`` (spi-in/out, encr-alg, keysize, state)."""
    out = []
    for m in re.finditer(r"child-sas \{(.*?\})\s*\}", raw, re.S):
        for c in re.finditer(r"\S+ \{([^{}]*)\}", m.group(1)):
            fields = dict(re.findall(r"([\w-]+)=(\S+)", c.group(1)))
            if "spi-in" in fields:
                out.append(fields)
    return out


def ike_sas(raw: str) -> list[dict[str, str]]:
    """IKE SAs from ``swanctl --list-sas --raw``: name, uniqueid, state, spis, algorithms."""
    out = []
    for m in re.finditer(r"list-sa event \{(\S+) \{(.*?)child-sas \{", raw, re.S):
        fields = dict(re.findall(r"([\w-]+)=(\S+)", m.group(2)))
        fields["name"] = m.group(1)
        out.append(fields)
    return out


def logged_secrets(log: str, label: str) -> list[bytes]:
    """Every hex dump charon logged (``ike = 4``/``chd = 4``) under ``label``, e.g. ``Sk_ei secret``
    or ``encryption initiator key``, in log order."""
    out = []
    lines = log.splitlines()
    for i, line in enumerate(lines):
        m = re.search(re.escape(label) + r" => (\d+) bytes", line)
        if not m:
            continue
        size, data = int(m.group(1)), b""
        for dump in lines[i + 1:]:
            d = re.match(r"\S+ \d+\[\w+\]\s+\d+: ((?:[0-9A-F]{2} ?)+)", dump)
            if not d or len(data) >= size:
                break
            data += bytes.fromhex(d.group(1).replace(" ", "")[:32])
        out.append(data[:size])
    return out
