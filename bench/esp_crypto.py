"""Seal+open of one 1400-byte packet through esp_udp vs a bare AESGCM.encrypt call.

Target (issue 5): esp_udp seal+open ≤ 3× the bare AEAD call. Prints µs per operation and
the ratios, for both suites and both API forms (bytes in/out, and the *_into form the
datapath uses). Run: .venv/bin/python bench/esp_crypto.py
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from esp_udp.esp import InboundSA, OutboundSA
from esp_udp.sa import Suite

SIZE = 1400
N = 20000
REPEAT = 5


def per_op(fn: Callable[[], object], n: int = N) -> float:
    """Best-of-REPEAT µs per call."""
    runs = []
    for _ in range(REPEAT):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - t0) / n * 1e6)
    return min(runs)


def bench_suite(suite: Suite) -> dict[str, float]:
    keymat = os.urandom(suite.keymat_len)
    payload = os.urandom(SIZE)
    aead = ChaCha20Poly1305(keymat[:-4]) if suite is Suite.CHACHA20POLY1305 else AESGCM(keymat[:-4])
    nonce = os.urandom(12)
    aad = os.urandom(8)
    bare = per_op(lambda: aead.encrypt(nonce, payload, aad))
    sealed = aead.encrypt(nonce, payload, aad)
    bare_pair = per_op(lambda: aead.decrypt(nonce, aead.encrypt(nonce, payload, aad), aad))
    del sealed

    window = 1 << 20
    out_sa = OutboundSA(0x1000, suite, keymat)
    in_sa = InboundSA(0x1000, suite, keymat, window=max(64, 1024))

    def seal_open() -> None:
        in_sa.open(out_sa.seal(payload))

    plain = per_op(seal_open)

    out2 = OutboundSA(0x2000, suite, keymat)
    in2 = InboundSA(0x2000, suite, keymat)
    pbuf = memoryview(bytearray(SIZE + 64))
    pbuf[:SIZE] = payload
    obuf = memoryview(bytearray(SIZE + 128))
    dbuf = memoryview(bytearray(SIZE + 128))

    def seal_open_into() -> None:
        n = out2.seal_into(obuf, pbuf, SIZE)
        in2.open_into(obuf[:n], dbuf)

    into = per_op(seal_open_into)
    seal_only = per_op(lambda: OutboundSA.seal_into(out2, obuf, pbuf, SIZE))
    del window
    # The floor of the *_into form: the two AEAD calls alone, with the memoryview slices
    # they need (data, AAD, output), everything else precomputed.
    sealed_len = out2.seal_into(obuf, pbuf, SIZE)
    end = sealed_len - 32
    fbuf = memoryview(bytearray(SIZE + 128))
    nonce_e = os.urandom(12)
    ct = aead.encrypt(nonce_e, bytes(pbuf[:end]), bytes(obuf[:8]))
    cview = memoryview(bytearray(ct))

    def calls_only() -> None:
        aead.encrypt_into(nonce_e, pbuf[:end], obuf[:8], fbuf[16:sealed_len])
        aead.decrypt_into(nonce_e, cview[:], obuf[:8], dbuf[:end])

    floor = per_op(calls_only)
    return {"bare": bare, "bare_pair": bare_pair, "seal_open": plain, "seal_open_into": into,
            "seal_into": seal_only, "floor": floor}


def main() -> None:
    print(f"esp_udp crypto, {SIZE}-byte inner packet, best of {REPEAT}×{N} (µs per operation)")
    for suite in Suite:
        r = bench_suite(suite)
        print(f"{suite.value:18} bare encrypt {r['bare']:6.2f}  seal+open {r['seal_open']:6.2f} "
              f"({r['seal_open'] / r['bare']:.2f}×)  seal_into+open_into {r['seal_open_into']:6.2f} "
              f"({r['seal_open_into'] / r['bare']:.2f}×)  seal_into {r['seal_into']:5.2f} "
              f"({r['seal_into'] / r['bare']:.2f}×)  bare encrypt+decrypt {r['bare_pair']:5.2f} "
              f"(seal_into+open_into {r['seal_open_into'] / r['bare_pair']:.2f}× that)")
        print(f"{'':18} floor: encrypt_into+decrypt_into with the slices the *_into API passes "
              f"{r['floor']:5.2f} ({r['floor'] / r['bare']:.2f}× bare encrypt); Python around them "
              f"{r['seal_open_into'] - r['floor']:5.2f}")
    print("target: seal+open ≤ 3× one bare AEAD encrypt (a seal+open is two AEAD calls: 2× is the floor)")
    _ = statistics


if __name__ == "__main__":
    main()
