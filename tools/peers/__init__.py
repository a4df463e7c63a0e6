"""Launchers for the real peers used by tests, benchmarks and the demo.

BIND, Knot, strongSwan, miniupnpd and a STUN server: each runs from a temp dir and/or in
a network namespace and is stopped by its PID.
"""
