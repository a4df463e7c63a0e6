"""Did the gateway lose its state? The epoch checks of RFC 6886 §3.6 and RFC 6887 §8.5.

Every reply carries the server's epoch: seconds since it started (or since it lost its
mappings). A client remembers the last epoch and its own clock when it arrived. If the
server's clock advanced clearly less than the client's, the server restarted (or lost its
mapping table) and every mapping must be requested again.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EpochSample:
    epoch: int  # the server's epoch, seconds
    at: float  # the client's clock when the reply arrived, seconds


def natpmp_epoch_ok(previous: EpochSample, epoch: int, now: float) -> bool:
    """RFC 6886 §3.6: valid unless the epoch went back or advanced < 7/8 of our time - 2 s."""
    if epoch < previous.epoch:
        return False
    client_delta = max(0.0, now - previous.at)
    return epoch - previous.epoch >= client_delta * 7 / 8 - 2


def pcp_epoch_ok(previous: EpochSample, epoch: int, now: float) -> bool:
    """RFC 6887 §8.5: valid unless it went back or drifted more than 1/16 + 2 s either way."""
    if epoch < previous.epoch:
        return False
    client_delta = max(0.0, now - previous.at)
    server_delta = epoch - previous.epoch
    if server_delta + 2 < client_delta - client_delta / 16:
        return False
    return not client_delta + 2 < server_delta - server_delta / 16
