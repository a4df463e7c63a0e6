"""IANA IKEv2 registries used here (RFC 7296 §3, RFC 5282, RFC 7634, RFC 8031).

Every registry is an :class:`IntEnum` that tolerates unknown values: ``ExchangeType(99)``
returns a pseudo-member named ``UNKNOWN_99`` instead of raising, so a parser can carry a
value it does not understand and decide later what the RFC says to do with it.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class TolerantIntEnum(IntEnum):
    """IntEnum whose unknown values become ``UNKNOWN_<n>`` pseudo-members."""

    @classmethod
    def _missing_(cls, value: object) -> Any:
        if not isinstance(value, int) or value < 0:
            return None
        member = int.__new__(cls, value)
        member._name_ = f"UNKNOWN_{value}"
        member._value_ = value
        return member


class ExchangeType(TolerantIntEnum):
    IKE_SA_INIT = 34
    IKE_AUTH = 35
    CREATE_CHILD_SA = 36
    INFORMATIONAL = 37


class PayloadType(TolerantIntEnum):
    NONE = 0
    SA = 33
    KE = 34
    IDI = 35
    IDR = 36
    CERT = 37
    CERTREQ = 38
    AUTH = 39
    NONCE = 40
    NOTIFY = 41
    DELETE = 42
    VENDOR_ID = 43
    TSI = 44
    TSR = 45
    SK = 46
    CP = 47
    EAP = 48


class Flag:
    INITIATOR = 0x08
    VERSION = 0x10
    RESPONSE = 0x20


class ProtocolId(TolerantIntEnum):
    IKE = 1
    AH = 2
    ESP = 3


class TransformType(TolerantIntEnum):
    ENCR = 1
    PRF = 2
    INTEG = 3
    DH = 4
    ESN = 5


class EncrId(TolerantIntEnum):
    AES_CBC = 12
    AES_GCM_8 = 18
    AES_GCM_12 = 19
    AES_GCM_16 = 20
    CHACHA20_POLY1305 = 28


class PrfId(TolerantIntEnum):
    HMAC_SHA1 = 2
    HMAC_SHA2_256 = 5
    HMAC_SHA2_384 = 6


class DhGroup(TolerantIntEnum):
    NONE = 0
    MODP_1024 = 2
    MODP_2048 = 14
    ECP_256 = 19
    CURVE25519 = 31


class AttributeType(TolerantIntEnum):
    KEY_LENGTH = 14


class IdType(TolerantIntEnum):
    IPV4_ADDR = 1
    FQDN = 2
    RFC822_ADDR = 3
    IPV6_ADDR = 5
    DER_ASN1_DN = 9
    KEY_ID = 11


class AuthMethod(TolerantIntEnum):
    RSA = 1
    PSK = 2
    DSS = 3


class TsType(TolerantIntEnum):
    IPV4_ADDR_RANGE = 7
    IPV6_ADDR_RANGE = 8


class NotifyType(TolerantIntEnum):
    UNSUPPORTED_CRITICAL_PAYLOAD = 1
    INVALID_IKE_SPI = 4
    INVALID_MAJOR_VERSION = 5
    INVALID_SYNTAX = 7
    INVALID_MESSAGE_ID = 9
    INVALID_SPI = 11
    NO_PROPOSAL_CHOSEN = 14
    INVALID_KE_PAYLOAD = 17
    AUTHENTICATION_FAILED = 24
    SINGLE_PAIR_REQUIRED = 34
    NO_ADDITIONAL_SAS = 35
    INTERNAL_ADDRESS_FAILURE = 36
    FAILED_CP_REQUIRED = 37
    TS_UNACCEPTABLE = 38
    INVALID_SELECTORS = 39
    TEMPORARY_FAILURE = 43
    CHILD_SA_NOT_FOUND = 44
    INITIAL_CONTACT = 16384
    SET_WINDOW_SIZE = 16385
    ADDITIONAL_TS_POSSIBLE = 16386
    IPCOMP_SUPPORTED = 16387
    NAT_DETECTION_SOURCE_IP = 16388
    NAT_DETECTION_DESTINATION_IP = 16389
    COOKIE = 16390
    USE_TRANSPORT_MODE = 16391
    HTTP_CERT_LOOKUP_SUPPORTED = 16392
    REKEY_SA = 16393
    ESP_TFC_PADDING_NOT_SUPPORTED = 16394
    NON_FIRST_FRAGMENTS_ALSO = 16395
    MOBIKE_SUPPORTED = 16396
    NO_ADDITIONAL_ADDRESSES = 16399
    UPDATE_SA_ADDRESSES = 16400
    MULTIPLE_AUTH_SUPPORTED = 16404
    EAP_ONLY_AUTHENTICATION = 16417
    IKEV2_FRAGMENTATION_SUPPORTED = 16430
    SIGNATURE_HASH_ALGORITHMS = 16431
    IKEV2_MESSAGE_ID_SYNC_SUPPORTED = 16420

    @property
    def is_error(self) -> bool:
        return int(self) < 16384


NON_ESP_MARKER = b"\x00\x00\x00\x00"
IKE_PORT = 500
NATT_PORT = 4500
