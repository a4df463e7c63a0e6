"""Wireshark ``esp_sa`` table lines, so a capture of the outer link decrypts in tshark.

One line per SA direction (the UAT file ``esp_sa`` in a Wireshark profile, or
``tshark -o "uat:esp_sa:<line>"``)::

    "IPv4","198.18.0.1","198.18.0.2","0x0000c0de","AES-GCM with 16 octet ICV [RFC4106]",
    "0x<key ‖ salt>","NULL","","32-bit","0"

ESP-in-UDP is decoded by Wireshark's UDP-encapsulation dissector on port 4500. Wildcard
addresses "*" are used because NAT rewrites outer addresses. Wireshark's ESP dissector
(checked with 4.0) knows AES-GCM but not ChaCha20-Poly1305 — a value it does not know makes
it reject the table — so ChaCha20-Poly1305 SAs are written as ``#`` comment lines that keep
the same fields (and keys) for other tools. Sans-I/O: returns strings.
"""

from __future__ import annotations

from esp_udp.sa import SAParams, Suite

_ENCRYPTION = {
    Suite.AES128GCM16: "AES-GCM with 16 octet ICV [RFC4106]",
    Suite.AES256GCM16: "AES-GCM with 16 octet ICV [RFC4106]",
    Suite.CHACHA20POLY1305: "ChaCha20-Poly1305 [RFC7634]",
}


def esp_sa_line(spi: int, suite: Suite, keymat: bytes, src: str = "*", dst: str = "*") -> str:
    """One ``esp_sa`` UAT record (quoted CSV) for an SA."""
    fields = ["IPv4", src, dst, f"0x{spi:08x}", _ENCRYPTION[suite], "0x" + keymat.hex(),
              "NULL", ""]
    line = ",".join(f'"{f}"' for f in fields)
    return "# " + line if suite is Suite.CHACHA20POLY1305 else line


def esp_sa_lines(params: SAParams) -> list[str]:
    """Both directions of a peer's SA pair (wildcard addresses: NAT rewrites them)."""
    return [
        esp_sa_line(params.spi_in, params.suite, params.key_in),
        esp_sa_line(params.spi_out, params.suite, params.key_out),
    ]
