"""The registration/browse suite against real servers: BIND 9.18, Knot 3.2, btmm-serve.

The tools run as the installed console scripts in subprocesses (JSON lines, exit codes,
SIGTERM removal); ``dig`` and ``nsupdate`` are the independent witnesses. BIND preserves
the case of names, Knot lower-cases them: assertions say which.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.name
import dns.rcode
import dns.rdatatype
import dns.update
import pytest

import ula
from dnssd_wa import driver, errors, names, records, update
from dnssd_wa.names import ServiceSpec
from tests.conftest import script
from tests.dnssd.conftest import DnsEnv
from tests.dnssd.servers import UNSERVED_ZONE
from tools.account_file import load_or_create_identity

pytestmark = pytest.mark.peer

BOB = "Bob’s iMac"  # U+2019, as macOS names it
ALICE = "Alice's MacBook Pro"
BOB_SERVICES = ("--service", "_rfb._tcp:5900:u=bob,path=/", "--service", "_ssh._tcp:22",
                "--outer", "198.18.0.7:4500")


# ---------------------------------------------------------------------------- helpers


def run_script(argv: list[str], env: dict[str, str], *, stdin: str | None = None,
               timeout: float = 40) -> subprocess.CompletedProcess[str]:
    """Run the installed console script ``argv[0]`` to completion."""
    return subprocess.run([script(argv[0]), *argv[1:]], input=stdin, capture_output=True, text=True, env=env,
                          timeout=timeout, stdin=None if stdin is not None else subprocess.DEVNULL)


def run_cli(denv: DnsEnv, argv: list[str], *, stdin: str | None = None,
            timeout: float = 40) -> subprocess.CompletedProcess[str]:
    return run_script(argv, denv.env, stdin=stdin, timeout=timeout)


@contextlib.contextmanager
def running(argv: list[str], env: dict[str, str], *,
            stdin: int = subprocess.DEVNULL) -> Iterator[subprocess.Popen[str]]:
    """A long-running console script with stdout/stderr piped; killed if the test leaves it running."""
    proc = subprocess.Popen([script(argv[0]), *argv[1:]], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=stdin, text=True, env=env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def dig(denv: DnsEnv, name: dns.name.Name | str, rdtype: str) -> list[str]:
    qname = name.to_text() if isinstance(name, dns.name.Name) else name
    res = subprocess.run(
        [
            "dig",
            "+short",
            "+norec",
            "+time=2",
            "+tries=2",
            "-p",
            str(denv.server.port),
            f"@{denv.server.address}",
            qname,
            rdtype,
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    return [line.strip() for line in res.stdout.splitlines() if line.strip()]


def register_cmd(account_file: Path, label: str, name: str, state_dir: Path, *extra: str) -> list[str]:
    """``btmm-register --json`` for host ``label`` with instance name ``name``, then ``extra``."""
    return ["btmm-register", "--json", "--account", str(account_file), "--host", label,
            "--state-dir", str(state_dir), "--name", name, *extra]


def register_argv(denv: DnsEnv, label: str, name: str, *extra: str) -> list[str]:
    return register_cmd(denv.account_file, label, name, denv.state_dir(label),
                        "--server", denv.server.server_arg, *extra)


def stop_registration(proc: subprocess.Popen[str]) -> None:
    """SIGTERM a running btmm-register: it removes its records, says so and exits 0."""
    os.kill(proc.pid, signal.SIGTERM)
    assert read_line(proc, 20)["state"] == "removed"
    assert proc.wait(20) == 0


def browse(denv: DnsEnv, *types: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    mode = [] if "--pretty" in extra else ["--json"]
    argv = ["btmm-browse", *mode, "--account", str(denv.account_file), "--server", denv.server.server_arg]
    for t in types:
        argv += ["-t", t]
    return run_cli(denv, [*argv, *extra])


def stored(denv: DnsEnv, text: str) -> str:
    """How the server stores ``text`` in a name: BIND keeps case, Knot lower-cases ASCII."""
    return text if denv.server.preserves_case else text.lower()


def zone(denv: DnsEnv) -> dns.name.Name:
    return names.domain_name(denv.zone_text)


def key(denv: DnsEnv) -> update.TsigKey:
    return update.TsigKey(denv.account.tsig_name, denv.account.tsig_secret)


def client(denv: DnsEnv, transport: driver.Transport = driver.Transport.UDP) -> driver.DnsClient:
    return driver.DnsClient(driver.ServerConfig(denv.server.address, denv.server.port, transport))


def host_spec(denv: DnsEnv, label: str, instance: str, *services: ServiceSpec) -> records.HostSpec:
    ident = load_or_create_identity(denv.state_dir(label))
    return records.HostSpec(
        domain=denv.account.domain,
        host_label=label,
        ula=ula.host_address(denv.account.ula_prefix, ident.iid),
        instance=instance,
        services=services,
        autotunnel_label=ula.autotunnel_label(ident.iid),
        model="test",
        kerberos=ident.kerberos,
    )


def send(denv: DnsEnv, msg: dns.update.UpdateMessage, *, rrsets: tuple[records.RRSet, ...] = (),
         transport: driver.Transport = driver.Transport.UDP) -> update.Reply:
    """Send ``msg`` signed with the account's key through the library driver."""

    async def go() -> update.Reply:
        async with client(denv, transport) as c:
            return await driver.send_update(c, msg, key(denv), zone=denv.account.domain, rrsets=rrsets)

    return asyncio.run(go())


def lib_register(denv: DnsEnv, spec: records.HostSpec) -> update.Reply:
    rrsets = records.host_records(spec)
    return send(denv, update.register_update(zone(denv), rrsets, None), rrsets=rrsets)


def read_line(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no output within {timeout} s"
    line = proc.stdout.readline()
    assert line, f"process ended (rc={proc.poll()}): {proc.stderr.read() if proc.stderr else ''}"
    rec: dict[str, Any] = json.loads(line)
    return rec


# ---------------------------------------------------------------------------- the main story


def test_register_dig_browse_reregister_coexist_remove(dns_env: DnsEnv) -> None:
    d = dns_env
    dom = zone(d)
    # 1. register host 1 (UTF-8 name with U+2019, space), two services, outer endpoint, model
    res = run_cli(d, register_argv(d, "bobs-imac", BOB, *BOB_SERVICES, "--model", "iMac20,1", "--once"))
    assert res.returncode == 0, res.stderr
    [reg] = json_lines(res.stdout)
    assert reg["type"] == "registration" and reg["state"] == "registered"
    assert reg["host"] == f"bobs-imac.{d.account.domain}"
    assert len(reg["records"]) == 15
    if d.server.echoes_lease:
        assert isinstance(reg["lease_granted"], int) and reg["lease_granted"] > 0
    else:
        assert reg["lease_granted"] is None
        assert "did not echo the Update Lease option" in res.stderr

    # 2. dig sees every record
    ident = load_or_create_identity(d.state_dir("bobs-imac"))
    host_ula = ula.host_address(d.account.ula_prefix, ident.iid)
    host = names.host_name("bobs-imac", dom)
    rfb = names.instance_name(BOB, "_rfb._tcp", dom)
    ssh = names.instance_name(BOB, "_ssh._tcp", dom)
    tunnel = ula.autotunnel_label(ident.iid)
    assert dig(d, host, "AAAA") == [str(host_ula)]
    assert dig(d, names.service_type_name("_rfb._tcp", dom), "PTR") == [
        names.instance_name(stored(d, BOB), "_rfb._tcp", dom).to_text()
    ]
    assert dig(d, rfb, "SRV") == [f"0 0 5900 {host.to_text()}"]
    assert dig(d, rfb, "TXT") == ['"u=bob" "path=/"']
    assert dig(d, ssh, "SRV") == [f"0 0 22 {host.to_text()}"]
    assert dig(d, ssh, "TXT") == ['""']
    assert dig(d, f"_autotunnel._udp.{host.to_text()}", "SRV") == [
        f"0 0 4500 {stored(d, tunnel)}.{dom.to_text()}"
    ]
    assert dig(d, f"{tunnel}.{dom.to_text()}", "A") == ["198.18.0.7"]
    info = dns.name.Name([BOB.encode(), b"_device-info", b"_tcp", *dom.labels])
    assert dig(d, info, "TXT") == ['"model=iMac20,1"']
    assert dig(d, f"_kerberos.{host.to_text()}", "TXT") == [f'"{stored(d, ident.kerberos)}"'] or dig(
        d, f"_kerberos.{host.to_text()}", "TXT"
    ) == [f'"{ident.kerberos}"']
    assert dig(d, f"b._dns-sd._udp.{dom.to_text()}", "PTR") == [dom.to_text()]
    assert dig(d, f"lb._dns-sd._udp.{dom.to_text()}", "PTR") == [dom.to_text()]
    assert sorted(dig(d, f"_services._dns-sd._udp.{dom.to_text()}", "PTR")) == sorted(
        [f"_rfb._tcp.{dom.to_text()}", f"_ssh._tcp.{dom.to_text()}"]
    )

    # 3. browse finds the services with the exact names (verbose shows questions and timings)
    res = browse(d, "_rfb._tcp", "_ssh._tcp", extra=("--verbose",))
    assert res.returncode == 0, res.stderr
    svcs = json_lines(res.stdout)
    assert {(s["instance"], s["service_type"]) for s in svcs} == {
        (stored(d, BOB), "_rfb._tcp"),
        (stored(d, BOB), "_ssh._tcp"),
    }
    by_type = {s["service_type"]: s for s in svcs}
    assert by_type["_rfb._tcp"]["port"] == 5900 and by_type["_rfb._tcp"]["txt"] == {"u": "bob", "path": "/"}
    assert by_type["_rfb._tcp"]["addresses"] == [str(host_ula)]
    assert by_type["_rfb._tcp"]["host"] == f"bobs-imac.{d.account.domain}"
    assert "_rfb._tcp." in res.stderr and " ms" in res.stderr and "PTR" in res.stderr
    # --types and --domains
    types = json_lines(browse(d, extra=("--types",)).stdout)
    assert {t["service_type"] for t in types} == {"_rfb._tcp", "_ssh._tcp"}
    doms = json_lines(browse(d, extra=("--domains",)).stdout)
    assert {(x["kind"], x["domain"]) for x in doms} == {("b", d.account.domain), ("lb", d.account.domain)}

    # 4. re-register is idempotent (same records, one of each)
    res = run_cli(d, register_argv(d, "bobs-imac", BOB, *BOB_SERVICES, "--model", "iMac20,1", "--once"))
    assert res.returncode == 0, res.stderr
    assert dig(d, rfb, "SRV") == [f"0 0 5900 {host.to_text()}"]
    assert len(dig(d, names.service_type_name("_rfb._tcp", dom), "PTR")) == 1
    assert dig(d, host, "AAAA") == [str(host_ula)]
    assert len(dig(d, f"b._dns-sd._udp.{dom.to_text()}", "PTR")) == 1

    # 5. a second host coexists
    res = run_cli(d, register_argv(d, "alices-mbp", ALICE, "--service", "_rfb._tcp:5901", "--once"))
    assert res.returncode == 0, res.stderr
    svcs = json_lines(browse(d, "_rfb._tcp").stdout)
    assert {s["instance"] for s in svcs} == {stored(d, BOB), stored(d, ALICE)}

    # 6. host 1 runs until SIGTERM, then removes exactly its own records; host 2 stays
    argv = register_argv(d, "bobs-imac", BOB, "--service", "_rfb._tcp:5900", "--service", "_ssh._tcp:22",
                         "--outer", "198.18.0.7:4500")
    with running(argv, d.env) as proc:
        assert read_line(proc, 20)["state"] == "registered"
        stop_registration(proc)
    assert dig(d, host, "AAAA") == []
    assert dig(d, rfb, "SRV") == []
    assert dig(d, f"{tunnel}.{dom.to_text()}", "A") == []
    assert dig(d, f"_kerberos.{host.to_text()}", "TXT") == []
    svcs = json_lines(browse(d, "_rfb._tcp").stdout)
    assert [s["instance"] for s in svcs] == [stored(d, ALICE)]
    assert dig(d, f"b._dns-sd._udp.{dom.to_text()}", "PTR") == [dom.to_text()]  # shared: kept


def test_register_over_tcp_and_tls(dns_env: DnsEnv) -> None:
    d = dns_env
    res = run_cli(
        d, register_argv(d, "tcp-host", "TCP host", "--service", "_http._tcp:80", "--tcp", "--once")
    )
    assert res.returncode == 0, res.stderr
    assert json_lines(res.stdout)[0]["server"].endswith("(tcp)")
    if d.server.tls_port is None:  # Knot 3.2 has no DoT: a TLS attempt must fail clearly
        argv = register_argv(d, "tls-host", "TLS host", "--service", "_http._tcp:81", "--once", "--tls")
        argv[argv.index("--server") + 1] = f"localhost:{d.server.port}"
        res = run_cli(d, argv)
        assert res.returncode == 2, res.stderr
        assert "TLS handshake" in res.stderr and "Traceback" not in res.stderr
        return
    argv = register_argv(
        d,
        "tls-host",
        "TLS host",
        "--service",
        "_http._tcp:81",
        "--once",
        "--tls",
        "--ca-file",
        str(d.server.ca_file),
    )
    argv[argv.index("--server") + 1] = f"localhost:{d.server.tls_port}"
    res = run_cli(d, argv)
    assert res.returncode == 0, res.stderr
    assert json_lines(res.stdout)[0]["server"].endswith("(tls)")
    svcs = json_lines(
        browse(
            d,
            "_http._tcp",
            extra=("--tls", "--ca-file", str(d.server.ca_file), "--server", f"localhost:{d.server.tls_port}"),
        ).stdout
    )
    assert {stored(d, "TLS host"), stored(d, "TCP host")} <= {s["instance"] for s in svcs}
    # the certificate does not name wrong.example: the hostname check must fail
    argv += ["--tls-name", "wrong.example"]
    res = run_cli(d, argv)
    assert res.returncode == 2
    assert "not valid for wrong.example" in res.stderr and "Traceback" not in res.stderr
    assert res.stderr.count("\n") == 1


def test_nsupdate_adds_service_browse_finds_it(dns_env: DnsEnv, tmp_path: Path) -> None:
    d = dns_env
    keyfile = tmp_path / "tsig.key"
    keyfile.write_text(d.account.tsig_key_clause())
    keyfile.chmod(0o600)
    dom = d.account.domain
    script_text = (
        f"server {d.server.address} {d.server.port}\nzone {dom}\n"
        f"update add _ipp._tcp.{dom}. 120 PTR Printer\\0322\\.0._ipp._tcp.{dom}.\n"
        f"update add Printer\\0322\\.0._ipp._tcp.{dom}. 120 SRV 0 0 631 printer.{dom}.\n"
        f'update add Printer\\0322\\.0._ipp._tcp.{dom}. 120 TXT "rp=ipp/print"\n'
        f"update add printer.{dom}. 120 AAAA fd00:1:2::9\nsend\n"
    )
    res = subprocess.run(
        ["nsupdate", "-k", str(keyfile)], input=script_text, capture_output=True, text=True, timeout=20
    )
    assert res.returncode == 0, res.stderr
    svcs = json_lines(browse(d, "_ipp._tcp").stdout)
    assert [(s["instance"], s["port"], s["txt"], s["addresses"]) for s in svcs] == [
        (stored(d, "Printer 2.0"), 631, {"rp": "ipp/print"}, ["fd00:1:2::9"])
    ]
    table = browse(d, "_ipp._tcp", extra=("--pretty",))  # the rich table a terminal shows
    assert table.returncode == 0 and stored(d, "Printer 2.0") in table.stdout and "631" in table.stdout


def test_ptr_pointing_nowhere_is_skipped_and_reported(dns_env: DnsEnv) -> None:
    d = dns_env
    dom = zone(d)
    lib_register(d, host_spec(d, "ghost-ok", "Real One", ServiceSpec("_afpovertcp._tcp", 548)))
    msg = dns.update.UpdateMessage(dom)
    msg.add(names.service_type_name("_afpovertcp._tcp", dom), 120, "PTR",
            names.instance_name("Gone Away", "_afpovertcp._tcp", dom).to_text())
    send(d, msg)
    res = browse(d, "_afpovertcp._tcp")
    assert res.returncode == 0, res.stderr
    assert [s["instance"] for s in json_lines(res.stdout)] == [stored(d, "Real One")]
    assert "pointing nowhere" in res.stderr and stored(d, "Gone Away") in res.stderr


def test_watch_reports_added_and_removed(dns_env: DnsEnv) -> None:
    d = dns_env
    argv = ["btmm-browse", "--json", "--account", str(d.account_file), "--server", d.server.server_arg,
            "-t", "_daap._tcp", "--watch", "--min-interval", "0.1", "--max-interval", "0.2"]
    with running(argv, d.env) as proc:
        time.sleep(0.5)
        spec = host_spec(d, "watched", "Music Box", ServiceSpec("_daap._tcp", 3689))
        lib_register(d, spec)
        added = read_line(proc, 10)
        assert (added["event"], added["instance"], added["port"]) == ("added", stored(d, "Music Box"), 3689)
        send(d, update.remove_update(zone(d), records.host_records(spec)))
        removed = read_line(proc, 10)
        assert (removed["event"], removed["instance"]) == ("removed", stored(d, "Music Box"))
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(10) == 0


# ---------------------------------------------------------------------------- errors, for real


def _bad_update(
    d: DnsEnv, case: str
) -> tuple[dns.update.UpdateMessage, update.TsigKey | None, str, float | None, dns.name.Name]:
    """(message, key, zone text, signing time, a name that must stay absent) for ``case``."""
    dom = zone(d)
    probe = names.host_name(d.unique("probe-"), dom)
    good = key(d)
    msg = dns.update.UpdateMessage(dom)
    msg.add(probe, 120, "AAAA", "fd00::1")
    if case == "wrong-secret":
        return msg, update.TsigKey(good.name, b"\x01" * 32), d.account.domain, None, probe
    if case == "unknown-key":
        return msg, update.TsigKey("no-such-key.example", good.secret), d.account.domain, None, probe
    if case == "clock-skew":
        return msg, good, d.account.domain, time.time() - 3600, probe
    if case == "unsigned":
        return msg, None, d.account.domain, None, probe
    if case == "forbidden-type":
        msg.add(names.host_name(d.unique("cname-"), dom), 120, "CNAME", f"x.{dom.to_text()}")
        return msg, good, d.account.domain, None, probe
    if case == "yxrrset":
        msg.absent(dom, "SOA")
        return msg, good, d.account.domain, None, probe
    if case == "notzone":
        msg.add(dns.name.from_text(f"x.{UNSERVED_ZONE}."), 120, "AAAA", "fd00::2")
        return msg, good, d.account.domain, None, probe
    if case == "not-served":
        other = names.domain_name(UNSERVED_ZONE)
        m = dns.update.UpdateMessage(other)
        m.add(names.host_name("x", other), 120, "AAAA", "fd00::3")
        return m, good, UNSERVED_ZONE, None, probe
    if case == "other-zone":
        other = names.domain_name(d.server.other_zone or "alice.members.example")
        m = dns.update.UpdateMessage(other)
        m.add(names.host_name("x", other), 120, "AAAA", "fd00::4")
        return m, good, other.to_text(omit_final_dot=True), None, names.host_name("x", other)
    raise AssertionError(case)


KIND_OF = {
    "BADSIG": errors.Failure.BADSIG,
    "BADKEY": errors.Failure.BADKEY,
    "BADTIME": errors.Failure.BADTIME,
    "NOTZONE": errors.Failure.NOTZONE,
    "NOTAUTH": errors.Failure.NOTAUTH,
    "REFUSED": errors.Failure.REFUSED,
    "YXRRSET": errors.Failure.YXRRSET,
}


@pytest.mark.parametrize(
    "case",
    [
        "wrong-secret",
        "unknown-key",
        "clock-skew",
        "unsigned",
        "forbidden-type",
        "yxrrset",
        "notzone",
        "not-served",
        "other-zone",
    ],
)
def test_bad_update_refused_nothing_applied(dns_env: DnsEnv, case: str) -> None:
    d = dns_env
    msg, k, zone_text, when, probe = _bad_update(d, case)

    async def go() -> errors.UpdateFailed:
        async with client(d) as c:
            with pytest.raises(errors.UpdateFailed) as info:
                await driver.send_update(c, msg, k, zone=zone_text, now=when)
            return info.value

    failure = asyncio.run(go())
    want_rcode, want_tsig = d.server.expect[case]
    assert dns.rcode.to_text(dns.rcode.Rcode.make(failure.rcode)) == want_rcode, failure.message
    assert failure.kind is KIND_OF[want_tsig or want_rcode], failure.message
    if case == "clock-skew":
        assert "server's clock says" in failure.message and "skew" in failure.message
    assert dig(d, probe, "AAAA") == []  # nothing half-applied


def test_wrong_secret_cli_one_line_exit_2(dns_env: DnsEnv, tmp_path: Path) -> None:
    d = dns_env
    data = json.loads(d.account_file.read_text())
    data["tsig"]["secret"] = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
    bad = tmp_path / "bad-account.json"
    bad.write_text(json.dumps(data))
    bad.chmod(0o600)
    argv = register_argv(d, "badkey-host", "Bad Key", "--service", "_ssh._tcp:22", "--once")
    argv[argv.index("--account") + 1] = str(bad)
    res = run_cli(d, argv)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "BADSIG" in lines[0] and "Traceback" not in res.stderr
    assert res.stdout == ""


def test_unreachable_server_retries_then_exit_3(
    account_file: Path, btmm_env: dict[str, str], tmp_path: Path
) -> None:
    from tools.peers.bind import free_port

    argv = register_cmd(account_file, "lonely", "Lonely", tmp_path / "st", "--service", "_ssh._tcp:22",
                        "--once", "--timeout", "0.5", "--server", f"127.0.0.1:{free_port()}")
    res = run_script(argv, btmm_env, timeout=30)
    assert res.returncode == 3, res.stderr
    assert "unreachable" in res.stderr and "gave up after 3 attempts" in res.stderr
    assert "Traceback" not in res.stderr


def test_truncated_udp_answer_falls_back_to_tcp(dns_env: DnsEnv) -> None:
    """60 instances of one type: the PTR answer exceeds 1232 bytes, so UDP says TC and TCP follows."""
    d = dns_env
    dom = zone(d)
    msg = dns.update.UpdateMessage(dom)
    type_name = names.service_type_name("_pdl-datastream._tcp", dom)
    for i in range(60):
        inst = names.instance_name(f"Office Printer Number {i:02d}", "_pdl-datastream._tcp", dom)
        msg.add(type_name, 120, "PTR", inst.to_text())
        msg.add(inst, 120, "SRV", f"0 0 9100 printers.{dom.to_text()}")
        msg.add(inst, 120, "TXT", '""')
    msg.add(names.host_name("printers", dom), 120, "AAAA", "fd00:1:2::100")

    send(d, msg, transport=driver.Transport.TCP)
    res = browse(d, "_pdl-datastream._tcp", extra=("--verbose",))
    assert res.returncode == 0, res.stderr
    assert "reply truncated (TC): retrying over TCP" in res.stderr
    svcs = json_lines(res.stdout)
    assert len(svcs) == 60 and all(s["addresses"] == ["fd00:1:2::100"] for s in svcs)


def test_bind_rrset_limit_servfail_says_which(tmp_path: Path) -> None:
    """BIND >= 9.18.28: the 101st PTR of one type fails the whole update with SERVFAIL."""
    import secrets as pysecrets

    from tools.peers.bind import BindServer, PeerZone

    zone_name = "many.members.example"
    z = PeerZone(zone_name, "k-many", pysecrets.token_bytes(32))
    with BindServer([z], tls=False, workdir=tmp_path / "bind") as srv:
        dom = names.domain_name(zone_name)
        tkey = update.TsigKey(z.key_name, z.key_secret)
        fill = dns.update.UpdateMessage(dom)
        for i in range(100):
            fill.add(
                names.service_type_name("_many._tcp", dom),
                120,
                "PTR",
                names.instance_name(f"filler {i}", "_many._tcp", dom).to_text(),
            )
        spec = records.HostSpec(
            zone_name,
            "one-more",
            ipaddress.IPv6Address("fd00::101"),
            "One More",
            (ServiceSpec("_many._tcp", 1),),
        )
        rrsets = records.host_records(spec)
        cfg = driver.ServerConfig(srv.address, srv.port, driver.Transport.TCP)

        async def go() -> errors.UpdateFailed:
            async with driver.DnsClient(cfg) as c:
                await driver.send_update(c, fill, tkey, zone=zone_name)
                with pytest.raises(errors.UpdateFailed) as info:
                    await driver.send_update(
                        c, update.register_update(dom, rrsets, None), tkey, zone=zone_name, rrsets=rrsets
                    )
                reply = await c.query(names.host_name("one-more", dom), dns.rdatatype.AAAA)
                assert not reply.answer  # nothing applied
                return info.value

        failure = asyncio.run(go())
    assert failure.kind is errors.Failure.SERVFAIL_RRSET_LIMIT
    assert "101 records" in failure.message and "max-records-per-type" in failure.message


def test_discovery_by_dns_update_tls_srv(tmp_path: Path) -> None:
    """No --server: the update server comes from SRV _dns-update-tls._tcp.<domain> (BIND, DoT)."""
    from tools.peers.bind import BindServer, PeerZone
    from tools.peers.bind import free_port as fp

    env = dict(os.environ)
    env["XDG_CONFIG_HOME"], env["XDG_STATE_HOME"] = str(tmp_path / "c"), str(tmp_path / "s")
    from tests.conftest import make_account
    from tools.account_file import load_account

    account_file = make_account(tmp_path, env, "disco.members.example")
    acc = load_account(str(account_file))
    tls_port = fp()
    z = PeerZone(
        acc.domain,
        acc.tsig_name,
        acc.tsig_secret,
        extra=(f"_dns-update-tls._tcp IN SRV 0 0 {tls_port} localhost.",),
    )
    with BindServer([z], tls_port=tls_port, workdir=tmp_path / "bind") as srv:
        argv = register_cmd(account_file, "disco", "Disco", tmp_path / "st", "--service", "_ssh._tcp:22",
                            "--resolver", f"127.0.0.1:{srv.port}", "--ca-file", str(srv.cert_file), "--once")
        res = run_script(argv, env, timeout=30)
        assert res.returncode == 0, res.stderr
        assert json_lines(res.stdout)[0]["server"] == f"localhost:{tls_port} (tls)"


def test_port_mapping_records_trigger_reregistration(dns_env: DnsEnv) -> None:
    d = dns_env
    argv = register_argv(d, "mapped", "Mapped Host", "--service", "_ssh._tcp:22")
    with running(argv, d.env, stdin=subprocess.PIPE) as proc:
        assert proc.stdin is not None
        first = read_line(proc, 20)
        assert first["state"] == "registered" and first["outer"] is None
        mapping = {
            "type": "port-mapping",
            "v": 1,
            "protocol": "nat-pmp",
            "external_address": "198.18.0.9",
            "external_port": 4501,
            "internal_port": 4500,
            "lifetime": 7200,
        }
        proc.stdin.write(json.dumps(mapping) + "\n")
        proc.stdin.flush()
        second = read_line(proc, 20)
        assert second["state"] == "registered" and second["outer"] == "198.18.0.9:4501"
        assert second["protocol"] == "nat-pmp"  # context copied through
        ident = load_or_create_identity(d.state_dir("mapped"))
        tunnel = f"{ula.autotunnel_label(ident.iid)}.{d.account.domain}"
        assert dig(d, tunnel, "A") == ["198.18.0.9"]
        ep = asyncio.run(_tunnel(d, "mapped"))
        assert (ep.inner, ep.outer_address, ep.outer_port) == (
            str(ula.host_address(d.account.ula_prefix, ident.iid)),
            "198.18.0.9",
            4501,
        )
        stop_registration(proc)
        assert dig(d, tunnel, "A") == []


async def _tunnel(d: DnsEnv, label: str) -> Any:
    async with client(d) as c:
        ep, problems = await driver.resolve_tunnel_endpoint(c, names.host_name(label, zone(d)))
        assert problems == []
        return ep


def test_long_running_register_backs_off_and_stops_cleanly(
    account_file: Path, btmm_env: dict[str, str], tmp_path: Path
) -> None:
    """Not --once: an unreachable server is retried with growing delays until SIGTERM (exit 0)."""
    from tools.peers.bind import free_port

    argv = register_cmd(account_file, "patient", "Patient", tmp_path / "st", "--service", "_ssh._tcp:22",
                        "--timeout", "0.3", "--server", f"127.0.0.1:{free_port()}")
    with running(argv, btmm_env) as proc:
        assert proc.stderr is not None
        delays: list[float] = []
        deadline = time.monotonic() + 20
        while len(delays) < 3 and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if "retrying in" in line:
                delays.append(float(line.rsplit("retrying in ", 1)[1].split(" s")[0]))
        assert delays == [0.5, 1.0, 2.0]
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert out == "" and "stopped before anything was registered" in err
