"""Fixtures of the DNS-SD suite: one account and one server of each kind per package run."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import make_account, private_env, script
from tests.dnssd.servers import KIND_IDS, SERVER_KINDS, ServerUnderTest, start
from tools.account_file import Account, load_account


@dataclass
class DnsEnv:
    server: ServerUnderTest
    account_file: Path
    account: Account
    env: dict[str, str]
    root: Path
    counter: list[int]

    @property
    def zone_text(self) -> str:
        return self.account.domain

    def state_dir(self, name: str) -> Path:
        path = self.root / "hosts" / name
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path

    def unique(self, prefix: str) -> str:
        self.counter[0] += 1
        return f"{prefix}{self.counter[0]}"


@pytest.fixture(scope="package", params=SERVER_KINDS, ids=KIND_IDS)
def dns_env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsEnv]:
    kind: str = request.param
    root = tmp_path_factory.mktemp(f"dnssd-{kind}")
    env = private_env(root)
    account_file = make_account(root, env)
    account = load_account(str(account_file))
    server = start(kind, account_file, account, root, script)
    try:
        yield DnsEnv(server, account_file, account, env, root, [0])
    finally:
        server.stop()
