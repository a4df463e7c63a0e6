"""btmm-status reads the status files the long-running stages publish."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

from tests.conftest import script
from tools import status_file


def test_status_reports_components_and_staleness(tmp_path: Path, btmm_env: dict[str, str]) -> None:
    state = tmp_path / "hoststate"
    empty = subprocess.run([script("btmm-status"), "--state-dir", str(state), "--json"], env=btmm_env,
                           capture_output=True, text=True, check=False)
    assert empty.returncode == 3 and "no btmm stage" in empty.stderr
    status_file.publish(state, "tunnels", {"tunnels": [{"peer": "bobs-imac", "state": "up",
                                                        "counters": {"packets_in": 3}}]})
    path = status_file.status_path(state, "tunnels")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    status_file.publish(state, "registration", {"state": "registered", "records": 9})
    # A status left behind by a process that is gone is reported as stale.
    data = json.loads(status_file.status_path(state, "registration").read_text())
    data["pid"] = 2**22 + 12345
    status_file.status_path(state, "registration").write_text(json.dumps(data))
    r = subprocess.run([script("btmm-status"), "--state-dir", str(state), "--json"], env=btmm_env,
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    recs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [x["component"] for x in recs] == ["registration", "tunnels"]
    assert recs[0]["stale"] is True and recs[0]["state"] == "registered"
    assert recs[1]["stale"] is False and recs[1]["pid"] == os.getpid()
    assert recs[1]["tunnels"][0]["counters"]["packets_in"] == 3
    pretty = subprocess.run([script("btmm-status"), "--state-dir", str(state), "--pretty"], env=btmm_env,
                            capture_output=True, text=True, check=False)
    assert pretty.returncode == 0 and "stale" in pretty.stdout and "bobs-imac" in pretty.stdout
    status_file.clear(state, "tunnels")
    assert not path.exists()
