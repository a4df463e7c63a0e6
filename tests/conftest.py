"""Shared fixtures: a network-namespace lab per test, temp account files, console scripts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.netns import Lab

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def script(name: str) -> str:
    """Path of an installed console script (the real entry point, as a user runs it)."""
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"console script {name} is not installed; run scripts/setup")
    return found


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A namespace lab torn down after the test (fails, not skips, without root)."""
    with Lab() as the_lab:
        yield the_lab


def private_env(root: Path) -> dict[str, str]:
    """Environment for btmm commands with config and state under ``root`` (no inherited account)."""
    env = dict(os.environ)
    env["XDG_CONFIG_HOME"] = str(root / "config")
    env["XDG_STATE_HOME"] = str(root / "state")
    env.pop("BTMM_ACCOUNT", None)
    env.pop("BTMM_STATE_DIR", None)
    env["COLUMNS"] = "200"
    return env


def make_account(root: Path, env: dict[str, str], domain: str = "bob.members.example") -> Path:
    """A fresh account file ``root/account.json`` created by the real btmm-account."""
    path = root / "account.json"
    subprocess.run([script("btmm-account"), "--account", str(path), "init", "--domain", domain, "--json"],
                   check=True, env=env, capture_output=True, timeout=30)
    return path


@pytest.fixture
def btmm_env(tmp_path: Path) -> dict[str, str]:
    """Environment for running btmm commands with a private config and state dir."""
    return private_env(tmp_path)


@pytest.fixture
def account_file(tmp_path: Path, btmm_env: dict[str, str]) -> Path:
    """A fresh account file for bob.members.example created by the real btmm-account."""
    return make_account(tmp_path, btmm_env)
