"""Network namespaces and child processes for tests, benchmarks and the demo.

How this works: a :class:`Lab` owns a unique name prefix (so parallel runs never collide),
the namespaces it created and the processes it started. ``close()`` (or leaving the
``with`` block, also on an exception or Ctrl-C) stops every process by its PID — never by
name — and deletes every namespace. Nothing here touches namespaces or processes that
this Lab did not create.

Interface names are limited to 15 characters by Linux; namespace names are not.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType


class LabError(RuntimeError):
    """A namespace/link/process operation failed; the message names the command."""


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("network namespaces need root: run as root (sudo)")


def require_binary(name: str, package: str) -> str:
    """Path of ``name`` or a LabError naming the Debian package to install."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}", f"/usr/lib/ipsec/{name}")
         if os.access(p, os.X_OK)), None)
    if path is None:
        raise LabError(f"{name} is not installed: apt-get install {package} "
                       "(scripts/test installs it)")
    return path


class Lab:
    """Namespaces + processes that are torn down together."""

    def __init__(self, prefix: str | None = None) -> None:
        require_root()
        self.prefix = prefix or f"btmm{os.getpid() % 100000}{secrets.token_hex(2)}"
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.cleanup_paths: list[Path] = []
        self.closed = False

    def remove_on_close(self, path: Path) -> Path:
        """Delete directory ``path`` (recursively) when the lab closes, after its processes stop."""
        self.cleanup_paths.append(path)
        return path

    # ------------------------------------------------------------------ namespaces
    def ns(self, short: str) -> str:
        """Create namespace ``<prefix>-<short>`` with ``lo`` up; returns its name."""
        name = f"{self.prefix}-{short}"
        self._ip(None, "netns", "add", name)
        self.namespaces.append(name)
        self._ip(name, "link", "set", "lo", "up")
        return name

    def veth(self, ns_a: str | None, if_a: str, ns_b: str | None, if_b: str, mtu: int = 1500) -> None:
        """A veth pair ``if_a`` in ``ns_a`` ↔ ``if_b`` in ``ns_b`` (None = root namespace), up."""
        args = ["link", "add", "name", if_a]
        if ns_a:
            args += ["netns", ns_a]
        args += ["mtu", str(mtu), "type", "veth", "peer", "name", if_b]
        if ns_b:
            args += ["netns", ns_b]
        args += ["mtu", str(mtu)]
        self._ip(None, *args)
        self._ip(ns_a, "link", "set", if_a, "up")
        self._ip(ns_b, "link", "set", if_b, "up")

    def addr(self, ns: str | None, ifname: str, cidr: str) -> None:
        extra = ["nodad"] if ":" in cidr else []
        self._ip(ns, "addr", "add", cidr, "dev", ifname, *extra)

    def route(self, ns: str | None, *args: str) -> None:
        self._ip(ns, "route", "replace", *args) if ":" not in " ".join(args) else \
            self._ip(ns, "-6", "route", "replace", *args)

    def sysctl(self, ns: str | None, key: str, value: str) -> None:
        self.run(ns, ["sysctl", "-q", "-w", f"{key}={value}"])

    def nft(self, ns: str | None, ruleset: str) -> None:
        """Load an nftables ruleset (text) into ``ns``."""
        self.run(ns, [require_binary("nft", "nftables"), "-f", "-"], input=ruleset.encode())

    # ------------------------------------------------------------------ processes
    @staticmethod
    def wrap(ns: str | None, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv] if ns else list(argv)

    def run(
        self,
        ns: str | None,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 30.0,
        input: bytes | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a command to completion inside ``ns``; LabError on failure when ``check``."""
        try:
            proc = subprocess.run(self.wrap(ns, argv), capture_output=True, timeout=timeout,
                                  input=input, env=env, check=False)
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"timed out after {timeout}s: {' '.join(argv)}") from exc
        if check and proc.returncode != 0:
            raise LabError(
                f"command failed ({proc.returncode}) in {ns or 'root ns'}: {' '.join(argv)}: "
                f"{proc.stderr.decode(errors='replace').strip()[:500]}"
            )
        return proc

    def popen(self, ns: str | None, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        """Start a long-running process inside ``ns``; it is stopped by PID on close()."""
        proc: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
            self.wrap(ns, argv), **kwargs)
        self.processes.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``: by PID, only our own process."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=timeout)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        return proc.returncode

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for proc in reversed(self.processes):
            with contextlib.suppress(Exception):
                self.stop(proc)
        for name in reversed(self.namespaces):
            # Kill anything still running inside (e.g. a daemon that forked), by PID.
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True,
                                  check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        for path in reversed(self.cleanup_paths):
            shutil.rmtree(path, ignore_errors=True)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------ helpers
    def _ip(self, ns: str | None, *args: str) -> None:
        argv = ["ip", *(["-n", ns] if ns else []), *args]
        proc = subprocess.run(argv, capture_output=True, check=False)
        if proc.returncode != 0:
            raise LabError(f"{' '.join(argv)}: {proc.stderr.decode(errors='replace').strip()}")


def wait_for(predicate: object, timeout: float = 10.0, interval: float = 0.05, what: str = "") -> None:
    """Poll ``predicate()`` until true or raise LabError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(interval)
    raise LabError(f"timed out after {timeout}s waiting for {what or predicate}")


def wait_for_file(path: Path, timeout: float = 10.0) -> None:
    wait_for(path.exists, timeout, what=f"{path} to appear")
