"""btmm ↔ btmm through the real command: ``btmm-tunnel-up --listen`` and a tunnel-endpoint record.

Two hosts of one account in two namespaces; the IKE mode hook (tools/tunnel_ike.run_ike_mode)
negotiates with ike_lite and keys esp_udp's datapath; ping6 crosses the tunnel; SIGTERM on
the client deletes the IKE SA, which the responder reports as a tunnel going down.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Any

import pytest

from tests.conftest import script
from tools.account_file import load_host
from tools.netns import Lab
from tools.status_file import status_path

from .interop import ping

pytestmark = [pytest.mark.netns]


def _records(stream: IO[bytes]) -> queue.SimpleQueue[dict[str, Any]]:
    out: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()

    def pump() -> None:
        for line in stream:
            try:
                out.put(json.loads(line))
            except json.JSONDecodeError:
                continue

    threading.Thread(target=pump, daemon=True).start()
    return out


def _wait(q: queue.SimpleQueue[dict[str, Any]], timeout: float, **match: Any) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        try:
            rec = q.get(timeout=0.1)
        except queue.Empty:
            continue
        seen.append(rec)
        if all(rec.get(k) == v for k, v in match.items()):
            return rec
    raise AssertionError(f"no record {match} within {timeout}s; got {seen}")


def test_tunnel_up_listen_and_endpoint_record(
    lab: Lab, account_file: Path, tmp_path: Path, btmm_env: dict[str, str]
) -> None:
    h, c = lab.ns("h"), lab.ns("c")
    lab.veth(h, "vh", c, "vc")
    lab.addr(h, "vh", "198.18.0.1/24")
    lab.addr(c, "vc", "198.18.0.2/24")
    state_h, state_c = tmp_path / "state-h", tmp_path / "state-c"
    imac = load_host(str(account_file), "imac", str(state_h))  # creates the identity the command reuses
    laptop = load_host(str(account_file), "laptop", str(state_c))
    base = [script("btmm-tunnel-up"), "--account", str(account_file), "--json"]
    err_h = open(tmp_path / "h.err", "wb")
    listener = lab.popen(
        h,
        [*base, "--host", "imac", "--state-dir", str(state_h), "--listen"],
        stdout=subprocess.PIPE,
        stderr=err_h,
        env=btmm_env,
    )
    assert listener.stdout is not None
    time.sleep(0.5)
    record = {
        "type": "tunnel-endpoint",
        "v": 1,
        "host": imac.fqdn,
        "inner": str(imac.ula),
        "outer_address": "198.18.0.1",
        "outer_port": 4500,
        "ike_id": imac.fqdn,
        "note": "copied",
    }
    err_c = open(tmp_path / "c.err", "wb")
    client = lab.popen(
        c,
        [
            *base,
            "--host",
            "laptop",
            "--state-dir",
            str(state_c),
            "--keylog",
            str(tmp_path / "esp.keys"),
            "--verbose",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=err_c,
        env=btmm_env,
    )
    assert client.stdin is not None and client.stdout is not None
    client.stdin.write((json.dumps(record) + "\n").encode())
    client.stdin.close()
    from_c, from_h = _records(client.stdout), _records(listener.stdout)
    try:
        up_c = _wait(from_c, 20, type="tunnel", state="up")
        up_h = _wait(from_h, 20, type="tunnel", state="up")
    except AssertionError:
        raise AssertionError(
            f"{(tmp_path / 'c.err').read_text()} / {(tmp_path / 'h.err').read_text()}"
        ) from None
    assert up_c["inner_remote"] == str(imac.ula) and up_h["inner_remote"] == str(laptop.ula)
    assert up_c["suite"] == "aes256gcm16" and up_c["spi_in"] == up_h["spi_out"]
    assert up_c["note"] == "copied"  # unknown input fields flow down the pipe
    assert ping(lab, c, str(imac.ula)) == 3
    deadline = time.monotonic() + 5  # the status file (what btmm-status shows) is refreshed every 0.5 s
    while True:
        status = json.loads(status_path(state_c, "tunnels").read_text())
        if status["tunnels"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert status["ike_sessions"] == 1 and status["tunnels"][0]["peer"] == str(imac.ula), status
    esp_keys, ike_keys = tmp_path / "esp.keys", tmp_path / "esp.keys.ikev2"
    assert esp_keys.stat().st_mode & 0o777 == 0o600 and ike_keys.stat().st_mode & 0o777 == 0o600
    assert up_c["spi_in"] in esp_keys.read_text().lower() and "AES-GCM-256" in ike_keys.read_text()
    client.send_signal(signal.SIGTERM)
    assert client.wait(timeout=15) == 0
    verbose = (tmp_path / "c.err").read_text()
    assert "IKE → 198.18.0.1:4500 IKE_SA_INIT #0 request [SA KE NONCE" in verbose
    assert "IKE ← 198.18.0.1:4500 IKE_AUTH #1 response [IDR AUTH SA TSI TSR]" in verbose
    down = _wait(from_h, 15, type="tunnel", state="down")
    assert down["reason"] == "deleted_by_peer"
    listener.send_signal(signal.SIGTERM)
    assert listener.wait(timeout=15) == 0


def test_tunnel_up_wrong_account_fails_with_one_line(
    lab: Lab, account_file: Path, tmp_path: Path, btmm_env: dict[str, str]
) -> None:
    """Two hosts with different account files (different PSKs): the initiator exits 2 with one
    clear line; the listener reports the refused initiator as an error record and stays up."""
    other = tmp_path / "other-account.json"
    subprocess.run(
        [
            script("btmm-account"),
            "--account",
            str(other),
            "init",
            "--domain",
            "bob.members.example",
            "--json",
        ],
        check=True,
        env=btmm_env,
        capture_output=True,
    )
    h, c = lab.ns("h"), lab.ns("c")
    lab.veth(h, "vh", c, "vc")
    lab.addr(h, "vh", "198.18.0.1/24")
    lab.addr(c, "vc", "198.18.0.2/24")
    imac = load_host(str(account_file), "imac", str(tmp_path / "state-h"))
    listener = lab.popen(
        h,
        [
            script("btmm-tunnel-up"),
            "--account",
            str(account_file),
            "--json",
            "--host",
            "imac",
            "--state-dir",
            str(tmp_path / "state-h"),
            "--listen",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=btmm_env,
    )
    assert listener.stdout is not None
    from_h = _records(listener.stdout)
    time.sleep(0.5)
    record = {
        "type": "tunnel-endpoint",
        "v": 1,
        "host": imac.fqdn,
        "inner": str(imac.ula),
        "outer_address": "198.18.0.1",
        "outer_port": 4500,
        "ike_id": imac.fqdn,
    }
    proc = lab.run(
        c,
        [
            script("btmm-tunnel-up"),
            "--account",
            str(other),
            "--json",
            "--host",
            "laptop",
            "--state-dir",
            str(tmp_path / "state-c"),
        ],
        input=(json.dumps(record) + "\n").encode(),
        check=False,
        timeout=30,
        env=btmm_env,
    )
    stderr = proc.stderr.decode()
    assert proc.returncode == 2, stderr
    assert "refused our PSK — the two hosts hold different account files" in stderr
    assert "Traceback" not in stderr
    err = json.loads(proc.stdout.decode().splitlines()[-1])
    assert (
        err["type"] == "error"
        and err["reason"] == "AUTHENTICATION_FAILED"
        and err["input"]["host"] == imac.fqdn
    )
    refused = _wait(from_h, 10, type="error", reason="AUTHENTICATION_FAILED")
    assert "does not match ours" in refused["error"]
    assert listener.poll() is None
    listener.send_signal(signal.SIGTERM)
    assert listener.wait(timeout=15) == 0
