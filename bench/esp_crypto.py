"""Seal+open of one 1400-byte packet through esp_udp vs a bare AESGCM.encrypt call.

Target (issue 5): esp_udp seal+open ≤ 3× one bare AEAD encrypt of the same payload, both
measured in the same run. Prints µs per operation and ratios for every suite, for both API
forms (bytes in/out, and the ``*_into`` form the datapath uses), and where the time goes:

* ``bare enc+dec``: the two AEAD calls a seal+open cannot avoid, on ready-made bytes;
* ``AEAD floor``: the same two calls as an in-place seal/open must make them —
  ``encrypt_into``/``decrypt_into`` with the memoryview slices of the packet buffers
  (variable-length packets in fixed buffers: data and output must be exact-size views);
* ``python``: everything else in ``seal_into`` + ``open_into`` (= total − AEAD floor), and
  the same measured directly with the AEAD calls replaced by a no-op.

All variants are measured round-robin (``ROUNDS`` rounds of ``N`` calls each, best round
kept), so a busy shared machine slows them alike. Run: .venv/bin/python bench/esp_crypto.py
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from esp_udp.esp import InboundSA, OutboundSA
from esp_udp.sa import Suite

SIZE = 1400
N = 4000
ROUNDS = 25


def race(fns: dict[str, Callable[[], object]], rounds: int = ROUNDS, n: int = N) -> dict[str, float]:
    """Best-round µs per call of each function, measured round-robin."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t0) / n * 1e6)
    return best


def _noop(nonce: object, data: object, aad: object, out: object) -> None:
    return None


def variants(suite: Suite) -> dict[str, Callable[[], object]]:
    keymat = os.urandom(suite.keymat_len)
    payload = os.urandom(SIZE)
    aead = ChaCha20Poly1305(keymat[:-4]) if suite is Suite.CHACHA20POLY1305 else AESGCM(keymat[:-4])
    nonce = os.urandom(12)
    aad = os.urandom(8)
    sealed = aead.encrypt(nonce, payload, aad)

    out_sa = OutboundSA(0x1000, suite, keymat)
    in_sa = InboundSA(0x1000, suite, keymat)

    def seal_open() -> None:
        in_sa.open(out_sa.seal(payload))

    out2 = OutboundSA(0x2000, suite, keymat)
    in2 = InboundSA(0x2000, suite, keymat)
    pbuf = memoryview(bytearray(SIZE + 64))
    pbuf[:SIZE] = payload
    obuf = memoryview(bytearray(SIZE + 128))
    dbuf = memoryview(bytearray(SIZE + 128))

    def seal_open_into() -> None:
        n = out2.seal_into(obuf, pbuf, SIZE)
        in2.open_into(obuf[:n], dbuf)

    # The same Python with the AEAD calls replaced by a no-op (nothing is verified, so the
    # replay window and padding see what the real pair left in the buffers).
    out3 = OutboundSA(0x3000, suite, keymat)
    in3 = InboundSA(0x3000, suite, keymat)
    seal_open_calls = out3.seal_into(obuf, pbuf, SIZE)
    in3.open_into(obuf[:seal_open_calls], dbuf)
    out3._encrypt_into = _noop  # type: ignore[assignment]  # measurement only
    in3._decrypt_into = _noop  # type: ignore[assignment]

    def python_only() -> None:
        n = out3.seal_into(obuf, pbuf, SIZE)
        in3.replay.top = 0
        in3.open_into(obuf[:n], dbuf)

    # AEAD floor: the two calls with the views seal_into/open_into pass, nothing else.
    sealed_len = out2.seal_into(obuf, pbuf, SIZE)
    end = sealed_len - 32
    fbuf = memoryview(bytearray(SIZE + 128))
    nonce_v = memoryview(bytearray(nonce))
    aad_v = memoryview(bytearray(aad))
    aead.encrypt_into(nonce_v, pbuf[:end], aad_v, fbuf[16:sealed_len])

    def aead_floor() -> None:
        aead.encrypt_into(nonce_v, pbuf[:end], aad_v, obuf[16:sealed_len])
        aead.decrypt_into(nonce_v, fbuf[16:sealed_len], aad_v, dbuf[:end])

    return {
        "bare": lambda: aead.encrypt(nonce, payload, aad),
        "bare_pair": lambda: aead.decrypt(nonce, aead.encrypt(nonce, payload, aad), aad),
        "floor": aead_floor,
        "seal_open": seal_open,
        "seal_open_into": seal_open_into,
        "seal_into": lambda: out2.seal_into(obuf, pbuf, SIZE),
        "python_only": python_only,
        "_": lambda: sealed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rounds", nargs="?", type=int, default=ROUNDS,
                        help=f"round-robin rounds of {N} calls each (default {ROUNDS})")
    rounds = parser.parse_args().rounds
    print(f"esp_udp crypto, {SIZE}-byte inner packet, best of {rounds} round-robin rounds × {N} "
          "(µs per operation; ratios against the bare encrypt of the same run)")
    for suite in Suite:
        r = race(variants(suite), rounds)
        bare = r["bare"]

        def x(key: str, r: dict[str, float] = r, bare: float = bare) -> str:
            return f"{r[key]:5.2f} ({r[key] / bare:.2f}×)"

        print(f"{suite.value:17} bare encrypt {bare:5.2f} | seal_into+open_into {x('seal_open_into')} | "
              f"seal+open (bytes API) {x('seal_open')} | seal_into alone {x('seal_into')}")
        print(f"{'':17} where it goes: bare enc+dec {x('bare_pair')}, AEAD floor (the two *_into "
              f"calls with their views) {x('floor')}, python around them "
              f"{r['seal_open_into'] - r['floor']:5.2f} (measured alone with a no-op AEAD: "
              f"{r['python_only']:5.2f})")
    print("target: seal+open ≤ 3× one bare AEAD encrypt (a seal+open is two AEAD calls: 2× is the floor)")


if __name__ == "__main__":
    main()
