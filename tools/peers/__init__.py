"""Launchers for the real peers (BIND, Knot, strongSwan, miniupnpd, a STUN server) used by tests, benchmarks and the demo: each runs in a temp dir / network namespace and is stopped by PID."""
