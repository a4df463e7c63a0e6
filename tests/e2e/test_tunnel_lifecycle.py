"""btmm-tunnel-up's lifecycle duties in IKE mode: idle teardown (BTMM: 10 minutes; here 2 s)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import script
from tools.account_file import load_host
from tools.netns import Lab

pytestmark = [pytest.mark.netns]


def test_idle_tunnel_is_closed_and_initiator_exits(lab: Lab, account_file: Path, tmp_path: Path,
                                                     btmm_env: dict[str, str]) -> None:
    h, c = lab.ns("h"), lab.ns("c")
    lab.veth(h, "vh", c, "vc")
    lab.addr(h, "vh", "198.18.0.1/24")
    lab.addr(c, "vc", "198.18.0.2/24")
    imac = load_host(str(account_file), "imac", str(tmp_path / "state-h"))
    base = [script("btmm-tunnel-up"), "--account", str(account_file), "--json"]
    listener = lab.popen(h, [*base, "--host", "imac", "--state-dir", str(tmp_path / "state-h"), "--listen"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env=btmm_env)
    time.sleep(0.5)
    record = {"type": "tunnel-endpoint", "v": 1, "host": imac.fqdn, "inner": str(imac.ula),
              "outer_address": "198.18.0.1", "outer_port": 4500, "ike_id": imac.fqdn, "ctx": "kept"}
    t0 = time.monotonic()
    proc = lab.run(c, [*base, "--host", "laptop", "--state-dir", str(tmp_path / "state-c"),
                       "--idle-timeout", "2"], input=(json.dumps(record) + "\n").encode(), timeout=30,
                   env=btmm_env, check=False)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr.decode()
    recs = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    states = [r.get("state") for r in recs if r.get("type") == "tunnel"]
    assert states == ["up", "down"], recs
    down = recs[-1]
    assert down["reason"] == "idle" and down["ctx"] == "kept" and down["inner_remote"] == str(imac.ula)
    assert 2.0 <= elapsed < 20, elapsed
    assert listener.poll() is None  # the host side stays up for the next client
    links = lab.run(c, ["ip", "-o", "link"]).stdout.decode()
    assert "btmm0" not in links
