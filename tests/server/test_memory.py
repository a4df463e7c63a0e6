"""Memory: 10,000 hosts (10 records each, one atomic UPDATE per host) → btmm-serve RSS < 150 MB."""

from __future__ import annotations

from pathlib import Path

import dns.flags

from tests.server.hosts import register_pipelined
from tests.server.serve_proc import ServeProc, account_key, names, rcode

HOSTS = 10_000
RSS_LIMIT_KB = 150 * 1024


def test_ten_thousand_hosts_fit_in_150_mb(tmp_path: Path, account: Path) -> None:
    key = account_key(account)
    with ServeProc(tmp_path, account, "--rate-limit", "0") as server:
        ok = register_pipelined(server.port, "bob.members.example.", key, 0, HOSTS)
        assert ok == HOSTS
        host = server.query(f"h{HOSTS - 1:d}.bob.members.example.", "AAAA")
        assert names(host) == [f"fd12:3456:789a::{HOSTS - 1:x}"]
        big = server.query("_ssh._tcp.bob.members.example.", "PTR", tcp=True)
        assert rcode(big) == "NOERROR" and big.flags & dns.flags.TC  # 10,000 PTRs exceed 64 KiB
        rss = server.rss_kb()
        assert rss < RSS_LIMIT_KB, f"RSS {rss / 1024:.1f} MB with {HOSTS} hosts"
