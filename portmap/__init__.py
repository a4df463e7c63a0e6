"""portmap: NAT-PMP (RFC 6886) and PCP (RFC 6887) port-mapping clients.

``portmap.wire`` is the pure codec, ``portmap.client`` the sans-I/O state machine
(:class:`~portmap.client.PortMapper`), ``portmap.driver`` runs it on UDP sockets and
``portmap.gateway`` finds the default gateway. See DESIGN.md §2.
"""

from portmap.client import (
    Change,
    DatagramIgnored,
    EpochReset,
    Event,
    Failure,
    Mapping,
    MappingDeleted,
    MappingFailed,
    MappingUpdated,
    Mode,
    PortMapper,
    Protocol,
    ProtocolFallback,
    State,
)
from portmap.errors import ClientError, DecodeError, EncodeError, PortmapError

__all__ = [
    "Change",
    "ClientError",
    "DatagramIgnored",
    "DecodeError",
    "EncodeError",
    "EpochReset",
    "Event",
    "Failure",
    "Mapping",
    "MappingDeleted",
    "MappingFailed",
    "MappingUpdated",
    "Mode",
    "PortMapper",
    "PortmapError",
    "Protocol",
    "ProtocolFallback",
    "State",
]
