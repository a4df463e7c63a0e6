"""Fixtures for the btmm-serve tests: one account and one running server per module."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import script
from tests.server.serve_proc import ServeProc


def make_account(directory: Path, domain: str = "bob.members.example") -> Path:
    path = directory / f"{domain}.account.json"
    env = dict(os.environ, XDG_CONFIG_HOME=str(directory / "cfg"), XDG_STATE_HOME=str(directory / "state"))
    subprocess.run([script("btmm-account"), "--account", str(path), "init", "--domain", domain, "--json"],
                   check=True, env=env, capture_output=True)
    return path


def key_file(directory: Path, account: Path) -> Path:
    """The account's TSIG key as a BIND key clause (what nsupdate -k reads), mode 0600."""
    out = subprocess.run([script("btmm-account"), "--account", str(account), "tsig-key"],
                         check=True, capture_output=True, text=True).stdout
    path = directory / (account.stem + ".key")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(out)
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="module")
def account(workdir: Path) -> Path:
    return make_account(workdir)


@pytest.fixture(scope="module")
def server(workdir: Path, account: Path) -> Iterator[ServeProc]:
    """btmm-serve with the account zone plus a second account's zone (alice) and its key."""
    alice = make_account(workdir, "alice.members.example")
    alice_key = key_file(workdir, alice)
    proc = ServeProc(workdir, account, "--zone", "bob.members.example", "--zone", "alice.members.example",
                     "--tsig-key", f"{alice_key}:alice.members.example",
                     "--lease-min", "1", "--lease-max", "3600", "--rate-limit", "0")
    with proc:
        yield proc
    assert proc.proc is None
