"""The account file and the host identity: where secrets live, and the rules for them.

An account file is JSON, mode 0600, holding the account's domain, its TSIG key (name,
algorithm, secret), the IKE pre-shared key and the account's ULA /48 (plus the update
server when one was given). Every tool finds it by the same rule:

    --account FILE  →  $BTMM_ACCOUNT  →  $XDG_CONFIG_HOME/btmm/account.json (~/.config/...)

A host identity is an Ed25519 key pair kept in the host state directory
(``--state-dir`` → ``$BTMM_STATE_DIR`` → ``$XDG_STATE_HOME/btmm``, i.e. ~/.local/state/btmm),
created once, mode 0600. Its public key gives the host's ULA interface ID and its
``_kerberos`` LKDC value.

Files readable by group or others are refused with a one-line error naming the ``chmod``.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
import re
import secrets
import socket
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ula
from tools.cli import EXIT_USAGE, Fatal

if TYPE_CHECKING:  # cryptography is loaded only where a host identity is (the control client needs none)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ACCOUNT_ENV = "BTMM_ACCOUNT"
STATE_ENV = "BTMM_STATE_DIR"
ACCOUNT_FORMAT = 1
TSIG_ALGORITHM = "hmac-sha256"

_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class Account:
    """What every host of one account shares (copy the file to each host)."""

    domain: str
    tsig_name: str
    tsig_secret: bytes
    ike_psk: bytes
    ula_prefix: ipaddress.IPv6Network
    server: str | None = None
    tsig_algorithm: str = TSIG_ALGORITHM
    created: float = 0.0

    @property
    def zone(self) -> str:
        """The domain with a trailing dot (absolute DNS name)."""
        return self.domain.rstrip(".") + "."

    def to_json(self, *, reveal: bool) -> dict[str, Any]:
        def secret(value: str) -> str:
            return value if reveal else "********"

        data: dict[str, Any] = {
            "format": ACCOUNT_FORMAT,
            "domain": self.domain,
            "tsig": {
                "name": self.tsig_name,
                "algorithm": self.tsig_algorithm,
                "secret": secret(base64.b64encode(self.tsig_secret).decode()),
            },
            "ike_psk": secret(self.ike_psk.hex()),
            "ula_prefix": str(self.ula_prefix),
            "created": self.created,
        }
        if self.server:
            data["server"] = self.server
        return data

    def tsig_key_clause(self) -> str:
        """The TSIG key as a BIND ``key`` clause (Knot's keymgr/confs accept the same data)."""
        return (
            f'key "{self.tsig_name}" {{\n'
            f"\talgorithm {self.tsig_algorithm};\n"
            f'\tsecret "{base64.b64encode(self.tsig_secret).decode()}";\n'
            "};\n"
        )


def normalize_domain(domain: str) -> str:
    """A lower-case domain without a trailing dot; raises Fatal when malformed."""
    d = domain.strip().rstrip(".").lower()
    labels = d.split(".")
    if not d or len(labels) < 2 or not all(_LABEL_RE.match(lbl) for lbl in labels):
        raise Fatal(
            f"--domain {domain!r} is not a DNS domain name; give something like bob.members.example"
        )
    return d


def new_account(domain: str, server: str | None, *, now: float | None = None,
                eui64: bytes | None = None) -> Account:
    """A fresh account: random TSIG secret and PSK, RFC 4193 /48 from time + EUI-64."""
    dom = normalize_domain(domain)
    created = time.time() if now is None else now
    if eui64 is None:
        eui64 = ula.modified_eui64(uuid.getnode().to_bytes(6, "big"))
    return Account(
        domain=dom,
        tsig_name=f"btmm-{dom}",
        tsig_secret=secrets.token_bytes(32),
        ike_psk=secrets.token_bytes(32),
        ula_prefix=ula.account_prefix(created, eui64),
        server=server,
        created=created,
    )


def default_config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "btmm"


def account_path(arg: str | None) -> Path:
    """The account file by the shared rule: flag, environment, default path."""
    if arg:
        return Path(arg)
    env = os.environ.get(ACCOUNT_ENV)
    if env:
        return Path(env)
    return default_config_dir() / "account.json"


def check_private(path: Path, what: str) -> None:
    """Refuse a secrets file that group or others may read or write."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise Fatal(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise Fatal(f"cannot read {what} {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise Fatal(
            f"{what} {path} is readable by others (mode {stat.S_IMODE(mode):04o}); "
            f"run: chmod 600 {path}"
        )


def write_private(path: Path, data: bytes, *, force: bool) -> None:
    """Create ``path`` with mode 0600 (parent 0700), atomically; refuse to overwrite unless forced."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists() and not force:
        raise Fatal(f"{path} already exists; pass --force to replace it (the old secrets are lost)")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def save_account(account: Account, path: Path, *, force: bool = False) -> None:
    text = json.dumps(account.to_json(reveal=True), indent=2) + "\n"
    write_private(path, text.encode(), force=force)


def parse_account(data: dict[str, Any], source: str) -> Account:
    """An Account from its JSON form; raises Fatal naming the bad field."""
    try:
        tsig = data["tsig"]
        acc = Account(
            domain=normalize_domain(str(data["domain"])),
            tsig_name=str(tsig["name"]),
            tsig_algorithm=str(tsig.get("algorithm", TSIG_ALGORITHM)),
            tsig_secret=base64.b64decode(str(tsig["secret"]), validate=True),
            ike_psk=bytes.fromhex(str(data["ike_psk"])),
            ula_prefix=ipaddress.IPv6Network(str(data["ula_prefix"])),
            server=str(data["server"]) if data.get("server") else None,
            created=float(data.get("created", 0.0)),
        )
    except KeyError as exc:
        raise Fatal(f"account file {source} lacks field {exc.args[0]!r}; recreate it with "
                    "btmm-account init") from None
    except (ValueError, TypeError, binascii.Error) as exc:
        raise Fatal(f"account file {source} has a malformed value ({exc}); recreate it with "
                    "btmm-account init") from None
    if acc.tsig_algorithm != TSIG_ALGORITHM:
        raise Fatal(f"account file {source}: TSIG algorithm {acc.tsig_algorithm} is not "
                    f"supported (only {TSIG_ALGORITHM})")
    if len(acc.tsig_secret) < 16 or len(acc.ike_psk) < 16:
        raise Fatal(f"account file {source}: TSIG secret or PSK shorter than 16 bytes")
    if acc.ula_prefix.prefixlen != 48 or not acc.ula_prefix.subnet_of(
        ipaddress.IPv6Network("fd00::/8")
    ):
        raise Fatal(f"account file {source}: ula_prefix must be an fd00::/8 /48")
    return acc


def load_account(arg: str | None) -> Account:
    """Find, check (0600) and read the account file; every failure is one Fatal line."""
    path = account_path(arg)
    if not path.exists():
        raise Fatal(
            f"no account file at {path}; create one with: btmm-account init --domain YOUR.DOMAIN "
            "(or pass --account FILE / set BTMM_ACCOUNT)"
        )
    check_private(path, "account file")
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise Fatal(f"cannot read account file {path}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Fatal(f"account file {path} is not valid JSON ({exc}); recreate it with "
                    "btmm-account init") from None
    if not isinstance(data, dict):
        raise Fatal(f"account file {path} is not a JSON object")
    return parse_account(data, str(path))


# ---------------------------------------------------------------------------- host identity


def state_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    env = os.environ.get(STATE_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "btmm"


@dataclass(frozen=True)
class HostIdentity:
    """A host's Ed25519 identity key pair."""

    private_key: Ed25519PrivateKey
    public_bytes: bytes

    @property
    def iid(self) -> bytes:
        return ula.iid_from_public_key(self.public_bytes)

    @property
    def kerberos(self) -> str:
        return ula.kerberos_realm(self.public_bytes)


def load_or_create_identity(directory: Path) -> HostIdentity:
    """The host identity from ``directory/identity.key``, created (0600) on first use."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = directory / "identity.key"
    if path.exists():
        check_private(path, "host identity key")
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError, OSError) as exc:
            raise Fatal(f"host identity key {path} is unreadable ({exc}); move it away to make "
                        "a new one (the host's ULA will change)") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise Fatal(f"host identity key {path} is not an Ed25519 key")
    else:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            write_private(path, pem, force=False)
        except OSError as exc:
            raise Fatal(f"cannot create host identity in {directory}: {exc.strerror}; "
                        "pass --state-dir DIR") from None
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return HostIdentity(private_key=key, public_bytes=pub)


def default_host_label(hostname: str | None = None) -> str:
    """A DNS label from the machine's hostname: first label, lower case, LDH only."""
    name = (hostname if hostname is not None else socket.gethostname()).split(".")[0].lower()
    label = re.sub(r"[^a-z0-9-]+", "-", name).strip("-")[:63].strip("-")
    return label or "host"


def check_host_label(label: str) -> str:
    lbl = label.strip().lower()
    if not _LABEL_RE.match(lbl):
        raise Fatal(
            f"--host {label!r} is not a valid host label: use letters, digits and '-' "
            "(1-63 characters, no dots), e.g. bobs-imac"
        )
    return lbl


@dataclass(frozen=True)
class Host:
    """This host inside its account: label, names and addresses."""

    label: str
    account: Account
    identity: HostIdentity

    @property
    def fqdn(self) -> str:
        return f"{self.label}.{self.account.domain}"

    @property
    def iid(self) -> bytes:
        return self.identity.iid

    @property
    def ula(self) -> ipaddress.IPv6Address:
        return ula.host_address(self.account.ula_prefix, self.identity.iid)

    @property
    def autotunnel_name(self) -> str:
        return f"{ula.autotunnel_label(self.identity.iid)}.{self.account.domain}"

    @property
    def kerberos(self) -> str:
        return self.identity.kerberos


def load_host(account_arg: str | None, host_arg: str | None, state_arg: str | None) -> Host:
    """Account + host label + identity, by the shared rules (used by every host-side tool)."""
    account = load_account(account_arg)
    label = check_host_label(host_arg) if host_arg else default_host_label()
    identity = load_or_create_identity(state_dir(state_arg))
    return Host(label=label, account=account, identity=identity)


__all__ = [
    "EXIT_USAGE",
    "Account",
    "Host",
    "HostIdentity",
    "account_path",
    "check_host_label",
    "check_private",
    "default_host_label",
    "load_account",
    "load_host",
    "load_or_create_identity",
    "new_account",
    "parse_account",
    "save_account",
    "state_dir",
    "write_private",
]
