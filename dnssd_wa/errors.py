"""The errors of dnssd_wa, and one clear message per server refusal.

How this works
--------------
Three kinds of failure leave this package:

* :class:`BadName` / :class:`DecodeError` — local input or a server's bytes we cannot use.
* :class:`UpdateFailed` — the server answered an UPDATE with an error. :func:`explain_update`
  turns (rcode, TSIG error, server time, context) into one line a user can act on, and a
  :class:`Failure` kind that callers map to exit codes and tests assert on.
* :class:`TransportFailed` — the server could not be reached, the TLS handshake failed
  (certificate mismatch), or it never answered.

``Failure.user_fixable`` separates credentials/configuration problems (wrong key, zone,
policy, certificate) from the server's own trouble (unreachable, SERVFAIL).
"""

from __future__ import annotations

import datetime
import enum

import dns.rcode


class DnssdError(Exception):
    """Base class of every error this package raises."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadName(DnssdError):
    """A name, service type or flag value that cannot become a DNS name."""


class DecodeError(DnssdError):
    """Bytes from the network (a reply, an EDNS option) that do not parse."""


class Failure(enum.Enum):
    BADSIG = "badsig"
    BADKEY = "badkey"
    BADTIME = "badtime"
    NOTZONE = "notzone"
    NOTAUTH = "notauth"
    REFUSED = "refused"
    SERVFAIL_RRSET_LIMIT = "servfail-rrset-limit"
    SERVFAIL = "servfail"
    YXRRSET = "yxrrset"
    FORMERR = "formerr"
    UNSIGNED_REPLY = "unsigned-reply"
    OTHER = "other"
    UNREACHABLE = "unreachable"
    TLS_MISMATCH = "tls-mismatch"
    TIMEOUT = "timeout"

    @property
    def user_fixable(self) -> bool:
        return self not in {Failure.SERVFAIL, Failure.SERVFAIL_RRSET_LIMIT, Failure.UNREACHABLE,
                            Failure.TIMEOUT, Failure.OTHER}


class UpdateFailed(DnssdError):
    """The server refused or failed an UPDATE (nothing was applied: updates are atomic)."""

    def __init__(self, kind: Failure, message: str, rcode: int, tsig_error: int = 0) -> None:
        super().__init__(message)
        self.kind = kind
        self.rcode = rcode
        self.tsig_error = tsig_error


class TransportFailed(DnssdError):
    """No usable answer: unreachable server, TLS failure or timeout."""

    def __init__(self, kind: Failure, message: str) -> None:
        super().__init__(message)
        self.kind = kind


RRSET_LIMIT = 100  # BIND >= 9.18.28 max-records-per-type default


def _utc(seconds: int) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def explain_update(
    rcode: int,
    tsig_error: int,
    *,
    zone: str,
    server: str,
    key_name: str,
    client_time: int | None = None,
    server_time: int | None = None,
    largest_rrset: tuple[str, int] | None = None,
) -> UpdateFailed:
    """One clear message for an UPDATE the server refused.

    ``largest_rrset`` is (owner/type, record count after this update) of the biggest shared
    RRset this update adds to, when the caller could find out after a SERVFAIL.
    """
    where = f"{server} for zone {zone}"
    rname = dns.rcode.to_text(dns.rcode.Rcode.make(rcode)) if 0 <= rcode < 4096 else str(rcode)
    if tsig_error == dns.rcode.BADSIG:
        return UpdateFailed(Failure.BADSIG, (
            f"{where} rejected the TSIG signature ({rname}/BADSIG): the key {key_name} exists "
            "there but its secret differs from the account file's; copy the current account file "
            "from the machine that created it, or load this key into the server"), rcode, tsig_error)
    if tsig_error == dns.rcode.BADKEY:
        return UpdateFailed(Failure.BADKEY, (
            f"{where} refused the TSIG key {key_name} ({rname}/BADKEY): the server does not know that "
            "key — or, like Knot, says so when the key's ACL does not allow this change (another "
            "account's zone, a type outside PTR/SRV/TXT/A/AAAA); add the account's key to the server "
            "(btmm-account tsig-key prints it) or use the right account file"), rcode, tsig_error)
    if tsig_error == dns.rcode.BADTIME:
        detail = ""
        if server_time is not None:
            detail = f"; the server's clock says {_utc(server_time)}"
            if client_time is not None:
                detail += f", ours {_utc(client_time)} (skew {client_time - server_time:+d} s)"
        return UpdateFailed(Failure.BADTIME, (
            f"{where} rejected the update because the clocks differ by more than the TSIG fudge "
            f"({rname}/BADTIME){detail}; fix this machine's clock (enable NTP)"), rcode, tsig_error)
    if tsig_error:
        return UpdateFailed(Failure.OTHER, f"{where} answered {rname} with TSIG error {tsig_error}",
                            rcode, tsig_error)
    if rcode == dns.rcode.NOTZONE:
        return UpdateFailed(Failure.NOTZONE, (
            f"{where} answered NOTZONE: a record name lies outside zone {zone}; check the account "
            "domain and --host"), rcode)
    if rcode == dns.rcode.NOTAUTH:
        return UpdateFailed(Failure.NOTAUTH, (
            f"{where} answered NOTAUTH: that server is not authoritative for {zone} (the zone is "
            "not served there, or the key is not allowed to update it); check --server and the "
            "account domain"), rcode)
    if rcode == dns.rcode.REFUSED:
        return UpdateFailed(Failure.REFUSED, (
            f"{where} REFUSED the update by policy: key {key_name} may not change these records "
            "(another account's zone, a record type outside PTR/SRV/TXT/A/AAAA, or an unsigned "
            "update); use this account's own domain"), rcode)
    if rcode == dns.rcode.SERVFAIL:
        if largest_rrset is not None and largest_rrset[1] > RRSET_LIMIT:
            owner, count = largest_rrset
            return UpdateFailed(Failure.SERVFAIL_RRSET_LIMIT, (
                f"{where} answered SERVFAIL: {owner} would hold {count} records, more than the "
                f"server's per-RRset limit of {RRSET_LIMIT} (BIND max-records-per-type); nothing was "
                "applied — raise max-records-per-type on the server or publish fewer services"),
                rcode)
        return UpdateFailed(Failure.SERVFAIL, (
            f"{where} answered SERVFAIL: the server could not apply the update (BIND does this when "
            f"an RRset would exceed {RRSET_LIMIT} records or its update queue is full); nothing was "
            "applied — retry later, and check the server's log"), rcode)
    if rcode == dns.rcode.YXRRSET:
        return UpdateFailed(Failure.YXRRSET, (
            f"{where} answered YXRRSET: a prerequisite failed (records changed meanwhile); nothing "
            "was applied — retry"), rcode)
    if rcode == dns.rcode.FORMERR:
        return UpdateFailed(Failure.FORMERR, f"{where} answered FORMERR: it could not parse the "
                            "update (this is a bug in btmm or the server)", rcode)
    return UpdateFailed(Failure.OTHER, f"{where} answered {rname}", rcode)


def unreachable(server: str, detail: str, attempts: int = 1) -> TransportFailed:
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    return TransportFailed(Failure.UNREACHABLE, (
        f"DNS server {server} is unreachable{tries} ({detail}); check --server, the network, and "
        "that the server runs"))


def timed_out(server: str, seconds: float) -> TransportFailed:
    return TransportFailed(Failure.TIMEOUT, (
        f"DNS server {server} did not answer within {seconds:g} s; check --server and firewalls"))


def tls_mismatch(server: str, hostname: str, detail: str) -> TransportFailed:
    return TransportFailed(Failure.TLS_MISMATCH, (
        f"TLS certificate of {server} is not valid for {hostname} ({detail}); connect by the name "
        "in the server's certificate, or pass --ca-file with the server's CA"))
