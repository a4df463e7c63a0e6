"""The embedded btmm DNS server (work in progress)."""
