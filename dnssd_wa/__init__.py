"""dnssd_wa: wide-area DNS-SD (RFC 6763) on dnspython — DESIGN.md §2 and §4.

Sans-I/O core: ``names`` (instance labels from raw UTF-8), ``records`` (a host's record
set), ``update`` (one atomic TSIG-signed UPDATE, Update Lease option, refresh timer),
``browse`` (browse/resolve/tunnel plans), ``watch`` (added/removed events, polling loop
with injected sleep), ``errors`` (one clear message per refusal). I/O: ``driver`` (asyncio
UDP/TCP/DoT client, plan runner, update sender, server discovery). ``server/`` is the
embedded authoritative server (btmm-serve).
"""
