"""A hand-written parser and signer for the common UPDATE shape (the fast path).

How this works
--------------
btmm-register and nsupdate send UPDATEs of one shape: one zone (SOA, IN), prerequisites
and changes on PTR SRV TXT A AAAA (adds, deletes by type, deletes by value), an optional
OPT carrying only the Update Lease option, and a TSIG HMAC-SHA256 record last.
:func:`parse_update` reads exactly that shape straight from the wire bytes with
``struct`` and slices, applying the same rules dnspython applies (compression pointers
point backwards and never into the name itself, at most 16 hops, names ≤ 255 bytes,
rdata consumed exactly, one RR per RRset in an UPDATE, TTLs above 2^31-1 read as 0).
Anything else — another type or class, another EDNS option, a TSIG error field, a
truncated or odd message — returns ``None`` and the caller uses the dnspython path,
which then decides (so FORMERR, BADSIG, … come from one place). The parser is stricter
than dnspython, never looser: whatever it accepts dnspython reads the same way (the
differential tests in ``tests/server/test_fastpath.py`` check this on mutated wires).

:func:`tsig_valid` checks the request MAC (RFC 8945 §4.3.3: the message with the TSIG RR
removed, ARCOUNT decremented and the original ID, followed by the TSIG variables).
:func:`build_response` renders the answer to such an UPDATE byte for byte as dnspython
renders ``make_response`` + ``use_tsig`` (same name compression, same OPT, same MAC).

Nothing here raises on bad input: the internal :class:`_NotFast` never leaves the module.
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass

Labels = tuple[bytes, ...]  # including the final b"" (absolute names, like dnspython)

TYPE_A, TYPE_PTR, TYPE_TXT, TYPE_AAAA, TYPE_SRV = 1, 12, 16, 28, 33
TYPE_SOA, TYPE_OPT, TYPE_TSIG = 6, 41, 250
CLASS_IN, CLASS_NONE, CLASS_ANY = 1, 254, 255
OPCODE_UPDATE = 5
LEASE_OPTION = 2
FAST_TYPES = frozenset({TYPE_A, TYPE_PTR, TYPE_TXT, TYPE_AAAA, TYPE_SRV})
HMAC_SHA256_WIRE = b"\x0bhmac-sha256\x00"
MAC_SIZE = 32
MAX_HOPS = 16  # dnspython's MAX_COMPRESSION_POINTER_CHAIN

_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
_H = struct.Struct("!H")
_HH = struct.Struct("!HH")
_TSIG_TAIL = struct.Struct("!HIHH")  # time high, time low, fudge, mac length
_TSIG_END = struct.Struct("!HHH")  # original id, error, other length
_ANY_TTL0 = struct.pack("!HI", CLASS_ANY, 0)


class _NotFast(Exception):
    """Internal: the message is not of the fast shape (never escapes this module)."""


@dataclass(frozen=True, slots=True)
class WireRR:
    """One prerequisite or update RR. ``deleting`` is None (class IN), 254 (NONE) or 255
    (ANY); ``rdata`` is the uncompressed rdata (case kept), None for an empty RR."""

    labels: Labels
    rdtype: int
    deleting: int | None
    ttl: int
    rdata: bytes | None


@dataclass(frozen=True, slots=True)
class FastUpdate:
    msg_id: int
    flags: int
    zone: Labels
    prereqs: tuple[WireRR, ...]
    updates: tuple[WireRR, ...]
    edns: bool
    lease: bytes | None  # data of the first Update Lease option
    key: Labels
    time_signed: int
    fudge: int
    mac: bytes
    original_id: int
    tsig_start: int


Memo = dict[int, tuple[Labels, int, int, int]]


def _name(wire: bytes, pos: int, end: int, memo: Memo) -> tuple[Labels, int]:
    """Labels of the name at ``pos`` (reads stay below ``end``) and the offset after it."""
    labels, after, _hops, _size = _segment(wire, pos, end, memo)
    return labels, after


def _segment(wire: bytes, start: int, end: int, memo: Memo) -> tuple[Labels, int, int, int]:
    """The name at ``start``: (labels, offset after its first segment, pointer hops, wire
    size). A pointer continues at an earlier offset whose name must end before ``start``
    (dnspython's rule: a target never overlaps the name read so far) — read once per
    offset and remembered in ``memo`` (dnspython compresses every repeat of a suffix)."""
    labels: list[bytes] = []
    size = 1
    pos = start
    while True:
        if pos >= end:
            raise _NotFast
        count = wire[pos]
        if count == 0:
            if size > 255:
                raise _NotFast
            labels.append(b"")
            return tuple(labels), pos + 1, 0, size
        if count < 64:
            nxt = pos + 1 + count
            if nxt > end:
                raise _NotFast
            labels.append(wire[pos + 1:nxt])
            size += count + 1
            pos = nxt
            continue
        if count < 192 or pos + 2 > end:
            raise _NotFast
        target = (count & 0x3F) << 8 | wire[pos + 1]
        if target >= start:
            raise _NotFast
        tail = memo.get(target)
        if tail is None:
            tail = memo[target] = _segment(wire, target, start, memo)
        elif tail[1] > start:
            raise _NotFast  # that name runs into this one
        hops = tail[2] + 1
        size += tail[3] - 1
        if hops > MAX_HOPS or size > 255:
            raise _NotFast
        return tuple(labels) + tail[0], pos + 2, hops, size


def name_wire(labels: Labels) -> bytes:
    return b"".join([bytes((len(label),)) + label for label in labels])


def _rdata(wire: bytes, rdtype: int, pos: int, end: int, memo: Memo) -> bytes:
    """The uncompressed rdata of a fast type occupying ``wire[pos:end]``."""
    size = end - pos
    if rdtype == TYPE_AAAA:
        if size != 16:
            raise _NotFast
        return wire[pos:end]
    if rdtype == TYPE_A:
        if size != 4:
            raise _NotFast
        return wire[pos:end]
    if rdtype == TYPE_TXT:
        if size == 0:
            raise _NotFast
        at = pos
        while at < end:
            at += 1 + wire[at]
        if at != end:
            raise _NotFast
        return wire[pos:end]
    if rdtype == TYPE_PTR:
        labels, after = _name(wire, pos, end, memo)
        if after != end:
            raise _NotFast
        return name_wire(labels)
    # SRV: priority, weight, port, target (a compressed target is read like dnspython does)
    if size < 7:
        raise _NotFast
    labels, after = _name(wire, pos + 6, end, memo)
    if after != end:
        raise _NotFast
    return wire[pos:pos + 6] + name_wire(labels)


def _rrs(wire: bytes, pos: int, count: int, prereq: bool, memo: Memo) -> tuple[list[WireRR], int]:
    out: list[WireRR] = []
    total = len(wire)
    unpack = _RR.unpack_from
    for _ in range(count):
        labels, pos = _name(wire, pos, total, memo)
        if pos + 10 > total:
            raise _NotFast
        rdtype, rdclass, ttl, rdlen = unpack(wire, pos)
        pos += 10
        end = pos + rdlen
        if end > total or rdtype in (TYPE_OPT, TYPE_TSIG):
            raise _NotFast
        if rdclass == CLASS_ANY or (rdclass == CLASS_NONE and prereq):
            if rdlen:
                raise _NotFast
            out.append(WireRR(labels, rdtype, rdclass, 0, None))
            continue
        if rdclass not in (CLASS_IN, CLASS_NONE) or rdtype not in FAST_TYPES:
            raise _NotFast
        rdata = _rdata(wire, rdtype, pos, end, memo)
        out.append(WireRR(labels, rdtype, None if rdclass == CLASS_IN else CLASS_NONE,
                          0 if ttl > 0x7FFFFFFF else ttl, rdata))
        pos = end
    return out, pos


def parse_update(wire: bytes) -> FastUpdate | None:
    """The fast-path view of a signed UPDATE, or None (use the general path)."""
    try:
        return _parse(wire)
    except (_NotFast, IndexError, struct.error, RecursionError):
        return None


def _parse(wire: bytes) -> FastUpdate:
    total = len(wire)
    if total < 12:
        raise _NotFast
    msg_id, flags, zocount, prcount, upcount, adcount = _HEADER.unpack_from(wire, 0)
    if flags & 0x8000 or (flags >> 11) & 0xF != OPCODE_UPDATE or zocount != 1 or adcount not in (1, 2):
        raise _NotFast
    memo: Memo = {}
    zone, pos = _name(wire, 12, total, memo)
    if pos + 4 > total or _HH.unpack_from(wire, pos) != (TYPE_SOA, CLASS_IN):
        raise _NotFast
    pos += 4
    prereqs, pos = _rrs(wire, pos, prcount, True, memo)
    updates, pos = _rrs(wire, pos, upcount, False, memo)
    edns = False
    lease: bytes | None = None
    if adcount == 2:  # an OPT with nothing but Update Lease options
        if pos + 11 > total or wire[pos] != 0:
            raise _NotFast
        rdtype, _payload, ttl, rdlen = _RR.unpack_from(wire, pos + 1)
        pos += 11
        end = pos + rdlen
        if rdtype != TYPE_OPT or ttl != 0 or end > total:
            raise _NotFast
        while pos < end:
            if pos + 4 > end:
                raise _NotFast
            otype, olen = _HH.unpack_from(wire, pos)
            pos += 4
            if otype != LEASE_OPTION or pos + olen > end:
                raise _NotFast
            if lease is None:
                lease = wire[pos:pos + olen]
            pos += olen
        edns = True
    tsig_start = pos
    key, pos = _name(wire, pos, total, memo)
    if pos + 10 > total:
        raise _NotFast
    rdtype, rdclass, _ttl, rdlen = _RR.unpack_from(wire, pos)
    pos += 10
    if rdtype != TYPE_TSIG or rdclass != CLASS_ANY or pos + rdlen != total:
        raise _NotFast
    if wire[pos:pos + len(HMAC_SHA256_WIRE)].lower() != HMAC_SHA256_WIRE:
        raise _NotFast
    pos += len(HMAC_SHA256_WIRE)
    if pos + 10 + MAC_SIZE + 6 != total:
        raise _NotFast
    high, low, fudge, mac_size = _TSIG_TAIL.unpack_from(wire, pos)
    pos += 10
    if mac_size != MAC_SIZE:
        raise _NotFast
    mac = wire[pos:pos + MAC_SIZE]
    original_id, error, other = _TSIG_END.unpack_from(wire, pos + MAC_SIZE)
    if error or other:
        raise _NotFast
    return FastUpdate(msg_id, flags, zone, tuple(prereqs), tuple(updates), edns, lease, key,
                      high << 32 | low, fudge, mac, original_id, tsig_start)


def tsig_valid(wire: bytes, update: FastUpdate, secret: bytes, now: int) -> bool:
    """RFC 8945 §5.2: the MAC checks and the time is within the fudge."""
    tail = wire[update.tsig_start:]
    variables = (name_wire(update.key).lower() + _ANY_TTL0 + HMAC_SHA256_WIRE
                 + tail[-(MAC_SIZE + 6 + 10):-(MAC_SIZE + 6 + 2)] + b"\x00\x00\x00\x00")
    # time (6) + fudge (2) sit just before the MAC length; error and other length are 0
    signed = (_H.pack(update.original_id) + wire[2:10] + _H.pack(_H.unpack_from(wire, 10)[0] - 1)
              + wire[12:update.tsig_start] + variables)
    digest = hmac.digest(secret, signed, "sha256")
    if not hmac.compare_digest(digest, update.mac):
        return False
    return abs(update.time_signed - now) <= update.fudge


def build_response(update: FastUpdate, rcode: int, opt: tuple[int, bytes] | None, key_name: Labels,
                   secret: bytes, now: int, fudge: int = 300) -> bytes:
    """The signed response (flags QR|opcode|RD as asked, the zone echoed, ``opt`` as
    (payload, option bytes)), rendered like dnspython renders it."""
    flags = 0x8000 | (update.flags & 0x0100) | OPCODE_UPDATE << 11 | (rcode & 0xF)
    zone = update.zone
    parts = [_HEADER.pack(update.msg_id, flags, 1, 0, 0, 1 if opt is not None else 0),
             name_wire(zone), b"\x00\x06\x00\x01"]
    if opt is not None:
        payload, options = opt
        parts.append(b"\x00" + _RR.pack(TYPE_OPT, payload, 0, len(options)) + options)
    unsigned = b"".join(parts)
    # dnspython's compression: every suffix of the zone name (but the root) was recorded
    offsets: dict[Labels, int] = {}
    at = 12
    for i in range(len(zone) - 1):
        offsets[tuple([label.lower() for label in zone[i:]])] = at
        at += len(zone[i]) + 1
    owner = []
    for i, label in enumerate(key_name):
        if not label:
            owner.append(b"\x00")
            break
        found = offsets.get(tuple([lab.lower() for lab in key_name[i:]]))
        if found is not None:
            owner.append(_H.pack(0xC000 | found))
            break
        owner.append(bytes((len(label),)) + label)
    time_fudge = struct.pack("!HIH", (now >> 32) & 0xFFFF, now & 0xFFFFFFFF, fudge)
    signed = (_H.pack(MAC_SIZE) + update.mac + unsigned + name_wire(key_name).lower() + _ANY_TTL0
              + HMAC_SHA256_WIRE + time_fudge + b"\x00\x00\x00\x00")
    mac = hmac.digest(secret, signed, "sha256")
    rdata = HMAC_SHA256_WIRE + time_fudge + _H.pack(MAC_SIZE) + mac + _TSIG_END.pack(update.msg_id, 0, 0)
    tsig = b"".join(owner) + struct.pack("!HHIH", TYPE_TSIG, CLASS_ANY, 0, len(rdata)) + rdata
    header = _HEADER.pack(update.msg_id, flags, 1, 0, 0, 2 if opt is not None else 1)
    return header + unsigned[12:] + tsig
