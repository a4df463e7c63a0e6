"""The main job, `scripts/demo` (btmm-demo), end to end — and it leaves nothing behind.

The demo builds its world in network namespaces and a temp dir holding logs and the demo
account (secrets): without --keep, the temp dir must be gone when it exits.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.conftest import script
from tools.netns import Lab


def test_lab_removes_registered_dirs_after_its_processes(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "sub" / "log").write_text("x")
    kept = tmp_path / "kept"
    kept.mkdir()
    with Lab() as lab:
        assert lab.remove_on_close(work) == work
        ns = lab.ns("a")
        proc = lab.popen(ns, ["sleep", "30"], cwd=str(work))
    assert proc.poll() is not None
    assert not work.exists()
    assert kept.exists()


def test_demo_runs_and_cleans_up(tmp_path: Path) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = dict(os.environ, TMPDIR=str(tmpdir), COLUMNS="100")
    proc = subprocess.run([script("btmm-demo"), "--json"], capture_output=True, text=True, timeout=300,
                          env=env, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["type"] == "demo"
    assert summary["response"].startswith("hello from Bob")
    assert summary["ula"].startswith("fd")
    assert summary["deregistered"] is True
    assert summary["ttfb_ms"] > 0 and summary["on_demand_ttfb_ms"] > 0
    assert sorted(p.name for p in tmpdir.iterdir()) == [], "the demo left files in TMPDIR"


def test_demo_keep_keeps_the_logs(tmp_path: Path) -> None:
    keep = tmp_path / "logs"
    proc = subprocess.run([script("btmm-demo"), "--json", "--keep", str(keep)], capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (keep / "account.json").exists()
    assert oct((keep / "account.json").stat().st_mode & 0o777) == "0o600"
    assert any(keep.glob("*.stderr"))
