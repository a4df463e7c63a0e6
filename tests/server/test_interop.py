"""btmm-serve against real clients: nsupdate, dig, kdig +tls, dnsperf; and BIND's rcodes.

One server (two zones: bob = the account, alice = another account with its own key) is
shared by the tests of this module; each test uses its own names.
"""

from __future__ import annotations

import re
import struct
import subprocess
import time
from pathlib import Path
from unittest import mock

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.update
import pytest

from tests.server.conftest import key_file
from tests.server.rawdns import outcome, tcp_exchange, tsig_mac_valid, udp_exchange
from tests.server.serve_proc import ZONE, ServeProc, account_key, names, rcode
from tools.peers.bind import BindServer, PeerZone

BOB = "bob.members.example."
LEASE = dns.edns.OptionType.make(2)
ALICE = "alice.members.example."


def nsupdate(key: Path, port: int, script_text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsupdate", "-k", str(key)], input=f"server 127.0.0.1 {port}\n{script_text}",
                          capture_output=True, text=True, timeout=20)


def dig(port: int, *args: str) -> str:
    return subprocess.run(["dig", "-p", str(port), "@127.0.0.1", "+time=3", "+tries=1", *args],
                          capture_output=True, text=True, timeout=20, check=True).stdout


def signed_update(key: dns.tsig.Key, zone: str = BOB) -> dns.update.UpdateMessage:
    return dns.update.UpdateMessage(zone, keyring=key)


def test_nsupdate_registers_dig_and_kdig_read(server: ServeProc, workdir: Path, account: Path) -> None:
    serial_before = server.query(BOB, "SOA").answer[0][0].serial
    key = key_file(workdir, account)
    done = nsupdate(key, server.port, f"""zone {BOB}
update add _ssh._tcp.{BOB} 120 PTR Bob\\'s\\032iMac._ssh._tcp.{BOB}
update add Bob\\'s\\032iMac._ssh._tcp.{BOB} 120 SRV 0 0 22 imac.{BOB}
update add Bob\\'s\\032iMac._ssh._tcp.{BOB} 120 TXT "path=/" "u=bob"
update add imac.{BOB} 120 AAAA fd12:3456:789a::1
send
""")
    assert done.returncode == 0, done.stderr
    assert dig(server.port, f"_ssh._tcp.{BOB}", "PTR", "+short").strip() == f"Bob's\\032iMac._ssh._tcp.{BOB}"
    srv = subprocess.run(["kdig", "+tls", "-p", str(server.tls_port), "@127.0.0.1",
                          f"Bob's\\032iMac._ssh._tcp.{BOB}", "SRV"],
                         capture_output=True, text=True, timeout=20)
    assert "TLS session" in srv.stdout and f"0 0 22 imac.{BOB}" in srv.stdout, srv.stdout + srv.stderr
    txt = dig(server.port, f"Bob's\\032iMac._ssh._tcp.{BOB}", "TXT", "+short", "+tcp")
    assert '"path=/" "u=bob"' in txt
    full = dig(server.port, f"Bob's\\032iMac._ssh._tcp.{BOB}", "SRV")
    assert "flags: qr aa" in full
    assert re.search(rf"imac\.{re.escape(BOB)}\s+120\s+IN\s+AAAA\s+fd12:3456:789a::1", full)
    assert server.query(BOB, "SOA", tcp=True).answer[0][0].serial == serial_before + 1, server.log()
    events = [e for e in server.log_events() if e.get("event") == "update" and e["rcode"] == "NOERROR"]
    assert events and events[-1]["key"].startswith("btmm-bob") and "SRV" in events[-1]["what"]
    assert "secret" not in server.log().lower()


def test_negative_answers_case_and_refusals(server: ServeProc, account: Path) -> None:
    key = account_key(account)
    up = signed_update(key)
    up.add(f"Mixed-Case.Host.{BOB}", 60, "A", "192.0.2.7")
    assert rcode(server.send(up)) == "NOERROR"
    nx = server.query(f"nothing-here.{BOB}", "A")
    assert rcode(nx) == "NXDOMAIN" and nx.authority[0].rdtype == dns.rdatatype.SOA
    assert nx.flags & dns.flags.AA
    nodata = server.query(f"mixed-case.host.{BOB}", "AAAA")
    assert rcode(nodata) == "NOERROR" and not nodata.answer
    assert nodata.authority[0].rdtype == dns.rdatatype.SOA
    ent = server.query(f"host.{BOB}", "A")  # empty non-terminal: NODATA, not NXDOMAIN (RFC 8020)
    assert rcode(ent) == "NOERROR" and not ent.answer
    upper = server.query(f"MIXED-CASE.HOST.{BOB.upper()}", "A")
    assert names(upper) == ["192.0.2.7"] and str(upper.question[0].name).startswith("MIXED-CASE")
    assert rcode(server.query(BOB, "ANY")) == "REFUSED"
    assert rcode(server.query("example.com.", "A")) == "REFUSED"
    assert rcode(server.query(BOB, "AXFR", tcp=True)) == "REFUSED"
    ptr = server.query(f"_ssh._tcp.{BOB}", "PTR")
    assert any("Bob's\\032iMac" in n for n in names(ptr))


def test_edns_and_truncation(server: ServeProc, account: Path) -> None:
    up = signed_update(account_key(account))
    for i in range(30):
        up.add(f"big.{BOB}", 60, "TXT", '"' + f"{i:03d}" + "x" * 180 + '"')
    assert rcode(server.send(up)) == "NOERROR"
    plain = dns.message.make_query(f"big.{BOB}", "TXT")  # no EDNS: 512 bytes
    reply = dns.message.from_wire(udp_exchange(plain.to_wire(), server.port))
    assert reply.flags & dns.flags.TC
    edns = dns.message.make_query(f"big.{BOB}", "TXT", use_edns=0, payload=1232)
    reply = dns.message.from_wire(udp_exchange(edns.to_wire(), server.port))
    assert reply.flags & dns.flags.TC and reply.edns == 0 and reply.payload == 1232
    full = server.query(f"big.{BOB}", "TXT", tcp=True)
    assert len(full.answer[0]) == 30 and not full.flags & dns.flags.TC
    badvers = dns.message.make_query(BOB, "SOA", use_edns=1)
    assert dns.message.from_wire(udp_exchange(badvers.to_wire(), server.port)).rcode() == dns.rcode.BADVERS


def test_own_service_records(server: ServeProc) -> None:
    for label in ("_dns-update-tls._tcp", "_dns-push-tls._tcp"):
        reply = server.query(f"{label}.{BOB}", "SRV")
        srv = reply.answer[0][0]
        assert srv.port == server.tls_port and srv.target == dns.name.from_text(f"ns.{BOB}")
        assert names(reply) and reply.additional[0][0].address == "127.0.0.1"
    assert names(server.query(BOB, "NS")) == [f"ns.{BOB}"]


def test_serial_only_on_change(server: ServeProc, account: Path) -> None:
    key = account_key(account)

    def serial() -> int:
        return int(server.query(BOB, "SOA").answer[0][0].serial)

    up = signed_update(key)
    up.add(f"same.{BOB}", 300, "A", "192.0.2.9")
    assert rcode(server.send(up)) == "NOERROR"
    before = serial()
    again = signed_update(key)
    again.add(f"same.{BOB}", 300, "A", "192.0.2.9")
    assert rcode(server.send(again)) == "NOERROR"
    assert serial() == before
    change = signed_update(key)
    change.delete(f"same.{BOB}", "A", "192.0.2.9")
    assert rcode(server.send(change)) == "NOERROR"
    assert serial() == before + 1
    assert rcode(server.query(f"same.{BOB}", "A")) == "NXDOMAIN"


def _matrix(bob: dns.tsig.Key, alice: dns.tsig.Key) -> list[tuple[str, bytes, str]]:
    """(case, request wire, a name that must not exist afterwards)."""
    cases: list[tuple[str, bytes, str]] = []

    def add(case: str, msg: dns.message.Message, probe: str) -> None:
        cases.append((case, msg.to_wire(), probe))

    unsigned = dns.update.UpdateMessage(BOB)
    unsigned.add(f"m-unsigned.{BOB}", 60, "A", "192.0.2.1")
    add("unsigned", unsigned, f"m-unsigned.{BOB}")
    wrong = dns.tsig.Key(bob.name, b"\x01" * 32, bob.algorithm)
    up = signed_update(wrong)
    up.add(f"m-badsig.{BOB}", 60, "A", "192.0.2.1")
    add("wrong secret", up, f"m-badsig.{BOB}")
    unknown = dns.tsig.Key("no-such-key.", b"\x02" * 32, "hmac-sha256")
    up = signed_update(unknown)
    up.add(f"m-badkey.{BOB}", 60, "A", "192.0.2.1")
    add("unknown key", up, f"m-badkey.{BOB}")
    other_alg = dns.tsig.Key(bob.name, bob.secret, "hmac-sha512")
    up = signed_update(other_alg)
    up.add(f"m-badalg.{BOB}", 60, "A", "192.0.2.1")
    add("wrong algorithm", up, f"m-badalg.{BOB}")
    up = signed_update(bob)
    up.add(f"m-skew.{BOB}", 60, "A", "192.0.2.1")
    with mock.patch("time.time", return_value=time.time() - 3600):
        cases.append(("clock skew", up.to_wire(), f"m-skew.{BOB}"))
    up = signed_update(bob)
    up.add(f"m-ok-first.{BOB}", 60, "A", "192.0.2.1")
    up.add("www.example.com.", 60, "A", "192.0.2.1")
    add("name outside zone", up, f"m-ok-first.{BOB}")
    up = signed_update(bob, "carol.members.example.")
    up.add("x.carol.members.example.", 60, "A", "192.0.2.1")
    add("zone not served", up, f"m-none.{BOB}")
    up = signed_update(bob, ALICE)
    up.add(f"m-other.{ALICE}", 60, "A", "192.0.2.1")
    add("other account's zone", up, f"m-other.{ALICE}")
    up = signed_update(bob)
    up.add(f"m-type-ok.{BOB}", 60, "A", "192.0.2.1")
    up.add(f"m-cname.{BOB}", 60, "CNAME", f"x.{BOB}")
    add("forbidden type CNAME", up, f"m-type-ok.{BOB}")
    up = signed_update(bob)
    up.add(f"m-ns.{BOB}", 60, "NS", f"x.{BOB}")
    add("forbidden type NS", up, f"m-ns.{BOB}")
    up = signed_update(bob)
    up.present(f"m-nothere.{BOB}", "A")
    up.add(f"m-prereq1.{BOB}", 60, "A", "192.0.2.1")
    add("prerequisite rrset exists fails", up, f"m-prereq1.{BOB}")
    up = signed_update(bob)
    up.absent(f"m-base.{BOB}", "A")
    up.add(f"m-prereq2.{BOB}", 60, "A", "192.0.2.1")
    add("prerequisite rrset absent fails", up, f"m-prereq2.{BOB}")
    up = signed_update(bob)
    up.absent(f"m-base.{BOB}")
    up.add(f"m-prereq3.{BOB}", 60, "A", "192.0.2.1")
    add("prerequisite name absent fails", up, f"m-prereq3.{BOB}")
    up = signed_update(bob)
    up.present(f"m-base.{BOB}", "A", "192.0.2.250")
    up.add(f"m-prereq4.{BOB}", 60, "A", "192.0.2.1")
    add("prerequisite value differs", up, f"m-prereq4.{BOB}")
    return cases


def _run_matrix(port: int, cases: list[tuple[str, bytes, str]]) -> dict[str, tuple[str, str | None]]:
    results = {}
    for case, wire, probe in cases:
        results[case] = outcome(tcp_exchange(wire, port))
        probe_q = dns.message.make_query(probe, "A")
        probe_r = dns.message.from_wire(tcp_exchange(probe_q.to_wire(), port))
        assert not probe_r.answer, f"{case}: {probe} was applied"
    return results


EXPECTED = {
    "unsigned": ("REFUSED", None),
    "wrong secret": ("NOTAUTH", "BADSIG"),
    "unknown key": ("NOTAUTH", "BADKEY"),
    "wrong algorithm": ("NOTAUTH", "BADKEY"),
    "clock skew": ("NOTAUTH", "BADTIME"),
    "name outside zone": ("NOTZONE", None),
    "zone not served": ("NOTAUTH", None),
    "other account's zone": ("REFUSED", None),
    "forbidden type CNAME": ("REFUSED", None),
    "forbidden type NS": ("REFUSED", None),
    "prerequisite rrset exists fails": ("NXRRSET", None),
    "prerequisite rrset absent fails": ("YXRRSET", None),
    "prerequisite name absent fails": ("YXDOMAIN", None),
    "prerequisite value differs": ("NXRRSET", None),
}


@pytest.mark.peer
def test_bad_update_matrix_matches_bind(server: ServeProc, account: Path, workdir: Path) -> None:
    bob = account_key(account)
    alice = account_key(workdir / f"{ALICE.rstrip('.')}.account.json")
    base = signed_update(bob)
    base.add(f"m-base.{BOB}", 60, "A", "192.0.2.200")
    assert rcode(server.send(base)) == "NOERROR"
    zones = [PeerZone(BOB.rstrip("."), bob.name.to_text().rstrip("."), bob.secret),
             PeerZone(ALICE.rstrip("."), alice.name.to_text().rstrip("."), alice.secret)]
    with BindServer(zones, tls=False) as bind:
        up = signed_update(bob)
        up.add(f"m-base.{BOB}", 60, "A", "192.0.2.200")
        assert outcome(tcp_exchange(up.to_wire(), bind.port))[0] == "NOERROR"
        ours = _run_matrix(server.port, _matrix(bob, alice))
        theirs = _run_matrix(bind.port, _matrix(bob, alice))
    assert ours == EXPECTED
    assert theirs == EXPECTED


def test_badtime_is_signed_with_server_time(server: ServeProc, account: Path) -> None:
    key = account_key(account)
    up = signed_update(key)
    up.add(f"skew2.{BOB}", 60, "A", "192.0.2.1")
    with mock.patch("time.time", return_value=time.time() - 7200):
        wire = up.to_wire()
    reply_wire = tcp_exchange(wire, server.port)
    assert outcome(reply_wire) == ("NOTAUTH", "BADTIME")
    assert tsig_mac_valid(reply_wire, key, up.mac or b"")
    reply = dns.message.from_wire(reply_wire, keyring=False)
    assert reply.tsig is not None
    server_time = int.from_bytes(reply.tsig[0].other, "big")
    assert abs(server_time - time.time()) < 60


def test_apex_server_names_and_replay_refused(server: ServeProc, account: Path) -> None:
    key = account_key(account)
    for owner, rdtype, value in [(BOB, "TXT", '"apex"'), (f"ns.{BOB}", "A", "192.0.2.66"),
                                 (f"_dns-push-tls._tcp.{BOB}", "SRV", f"0 0 1 evil.{BOB}")]:
        up = signed_update(key)
        up.add(owner, 60, rdtype, value)
        assert rcode(server.send(up)) == "REFUSED", owner
        assert value not in " ".join(names(server.query(owner, rdtype)))
    up = signed_update(key)
    up.add(f"replay.{BOB}", 60, "A", "192.0.2.1")
    wire = up.to_wire()
    assert outcome(tcp_exchange(wire, server.port))[0] == "NOERROR"
    delete = signed_update(key)
    delete.delete(f"replay.{BOB}")
    assert rcode(server.send(delete)) == "NOERROR"
    assert outcome(tcp_exchange(wire, server.port))[0] == "REFUSED"
    assert rcode(server.query(f"replay.{BOB}", "A")) == "NXDOMAIN"


def _lease_option(msg: dns.message.Message) -> bytes | None:
    for option in msg.options:
        if option.otype == 2:
            return bytes(option.to_wire() or b"")
    return None


def test_leases_echo_clamp_and_expire(server: ServeProc, account: Path) -> None:
    key = account_key(account)
    up = signed_update(key)
    up.use_edns(0, options=[dns.edns.GenericOption(LEASE, struct.pack("!I", 1))])
    up.add(f"leased.{BOB}", 60, "A", "192.0.2.11")
    up.add(f"leased.{BOB}", 60, "TXT", '"short"')
    reply = server.send(up)
    assert rcode(reply) == "NOERROR" and _lease_option(reply) == struct.pack("!I", 1)
    permanent = signed_update(key)
    permanent.add(f"permanent.{BOB}", 60, "A", "192.0.2.12")
    assert _lease_option(server.send(permanent)) is None
    long = signed_update(key)
    long.use_edns(0, options=[dns.edns.GenericOption(LEASE, struct.pack("!II", 10**6, 10**7))])
    long.add(f"long.{BOB}", 60, "A", "192.0.2.13")
    assert _lease_option(server.send(long)) == struct.pack("!II", 3600, 3600)
    added = time.monotonic()
    assert names(server.query(f"leased.{BOB}", "A")) == ["192.0.2.11"]
    while rcode(server.query(f"leased.{BOB}", "A")) != "NXDOMAIN" and time.monotonic() - added < 10:
        time.sleep(0.05)
    gone_after = time.monotonic() - added
    assert gone_after < 1 + 1 + 0.5, gone_after  # RFC 9664 lease 1 s; spec: gone within lease + 1 s
    assert names(server.query(f"permanent.{BOB}", "A")) == ["192.0.2.12"]
    assert names(server.query(f"long.{BOB}", "A")) == ["192.0.2.13"]
    assert any(e.get("event") == "expire" for e in server.log_events())


@pytest.mark.peer
def test_dnsperf_runs(server: ServeProc, tmp_path: Path) -> None:
    queries = tmp_path / "q.txt"
    queries.write_text(f"{BOB} SOA\n_ssh._tcp.{BOB} PTR\nimac.{BOB} AAAA\nnothing.{BOB} A\n")
    done = subprocess.run(["dnsperf", "-s", "127.0.0.1", "-p", str(server.port), "-d", str(queries),
                           "-l", "2", "-Q", "5000"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    completed = int(re.search(r"Queries completed:\s+(\d+)", done.stdout).group(1))  # type: ignore[union-attr]
    lost = int(re.search(r"Queries lost:\s+(\d+)", done.stdout).group(1))  # type: ignore[union-attr]
    assert completed > 1000 and lost <= completed // 100, done.stdout
    assert rcode(server.query(BOB, "SOA")) == "NOERROR"


def test_zone_is_the_configured_one(server: ServeProc) -> None:
    assert server.ready["zones"] == [ZONE, ALICE]
    assert server.ready["fingerprint"].startswith("sha256:") and Path(server.ready["cert_file"]).exists()


def test_update_over_dot_and_tcp_pipelining(server: ServeProc, account: Path) -> None:
    import socket
    import ssl

    import dns.query

    up = signed_update(account_key(account))
    up.add(f"dot-host.{BOB}", 60, "AAAA", "fd00::d07")
    ctx = ssl.create_default_context(cafile=server.ready["cert_file"])
    ctx.check_hostname = False
    reply = dns.query.tls(up, "127.0.0.1", port=server.tls_port, ssl_context=ctx, timeout=5)
    assert rcode(reply) == "NOERROR" and reply.had_tsig
    queries = [dns.message.make_query(name, "AAAA") for name in
               (f"dot-host.{BOB}", f"nothing.{BOB}", f"imac.{BOB}")]
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"".join(struct.pack("!H", len(w)) + w for w in (q.to_wire() for q in queries)))
        reader = sock.makefile("rb")
        replies = []
        for _ in queries:
            size = struct.unpack("!H", reader.read(2))[0]
            replies.append(dns.message.from_wire(reader.read(size)))
    assert [r.id for r in replies] == [q.id for q in queries]
    assert names(replies[0]) == ["fd00::d07"] and rcode(replies[1]) == "NXDOMAIN"


def test_nsupdate_deletes_and_prerequisites(server: ServeProc, workdir: Path, account: Path) -> None:
    key = key_file(workdir, account)
    owner = f"Del\\032Me._http._tcp.{BOB}"
    done = nsupdate(key, server.port, f"""zone {BOB}
prereq nxdomain {owner}
update add {owner} 60 SRV 0 0 80 web.{BOB}
update add {owner} 60 TXT "a=1"
update add _http._tcp.{BOB} 60 PTR {owner}
send
""")
    assert done.returncode == 0, done.stderr
    again = nsupdate(key, server.port,
                     f"zone {BOB}\nprereq nxdomain {owner}\nupdate add {owner} 60 TXT \"b=2\"\nsend\n")
    assert again.returncode != 0 and "YXDOMAIN" in again.stdout + again.stderr
    assert dig(server.port, owner, "TXT", "+short").strip() == '"a=1"'
    by_type = nsupdate(key, server.port, f"zone {BOB}\nupdate delete {owner} TXT\nsend\n")
    assert by_type.returncode == 0, by_type.stderr
    assert "status: NOERROR" in dig(server.port, owner, "TXT")
    assert not dig(server.port, owner, "TXT", "+short")
    whole = nsupdate(key, server.port,
                     f"zone {BOB}\nupdate delete {owner}\nupdate delete _http._tcp.{BOB} PTR {owner}\nsend\n")
    assert whole.returncode == 0, whole.stderr
    assert "status: NXDOMAIN" in dig(server.port, owner, "SRV")
    assert "status: NXDOMAIN" in dig(server.port, f"_http._tcp.{BOB}", "PTR")
