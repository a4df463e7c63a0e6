"""btmm-serve: the embedded authoritative DNS server for an account's zone.

``core`` answers queries and RFC 2136 UPDATEs (TSIG, Update Lease) and keeps DNS Push
subscriptions; ``zone`` is the in-memory data; ``store`` the SQLite file; ``keys`` the
TSIG key files and per-key rate limits; ``net`` the asyncio UDP/TCP/TLS listeners and
DSO sessions; ``tlsutil`` the certificate handling. The command is ``tools/serve.py``.
"""
