"""The life cycle shared by the peers that run one daemon from a temp dir (BIND, Knot).

:class:`DaemonPeer` finds the binary (or says which package to install), makes the work
directory unless one is given, lets the subclass write its configuration there and name
the command line (:meth:`DaemonPeer.command`), starts the daemon with stdout and stderr
captured in ``BINARY.stderr`` in that directory, and waits until the subclass says it is ready
(:meth:`DaemonPeer.ready`, which raises RuntimeError with the daemon's log when it is
not; the daemon is then stopped and the error re-raised). :meth:`DaemonPeer.stop` stops it
by PID (SIGTERM, then SIGKILL if it lingers) and removes the work directory only when it
made it. It is a context manager: ``with KnotServer(zones) as knot: ...``.

strongSwan and miniupnpd run inside network namespaces through ``tools.netns.Lab``, which
starts, tracks and stops their processes itself, so they do not use this class.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Self


@dataclass
class _Proc:
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None


def stop_pid(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """SIGTERM the process by PID, SIGKILL it if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


def log_tail(log: Path | None, lines: int = 15) -> str:
    """The last ``lines`` lines of a daemon's log on one line (for error messages)."""
    if log is None or not log.exists():
        return "(no log)"
    return " | ".join(log.read_text(errors="replace").splitlines()[-lines:])


@dataclass(kw_only=True)
class DaemonPeer:
    """One daemon run from ``workdir`` (a fresh temp dir by default); see the module docstring."""

    kind: ClassVar[str]  # a short name ("bind"): the temp dir is btmm-KIND-*
    binary: ClassVar[str]  # the executable's name, looked up on PATH, else in /usr/sbin
    package: ClassVar[str]  # the Debian package that installs it (for the error message)

    workdir: Path | None = None
    _proc: _Proc = field(default_factory=_Proc)
    _own_dir: bool = False

    @property
    def pid(self) -> int | None:
        return self._proc.proc.pid if self._proc.proc else None

    def command(self, binary: str, d: Path) -> list[str]:
        """Write the configuration into ``d``; the command line that runs the daemon with it."""
        raise NotImplementedError

    def ready(self, proc: subprocess.Popen[bytes], d: Path) -> None:
        """Return once the daemon serves; raise RuntimeError (with its log) if it died or never did."""
        raise NotImplementedError

    def start(self) -> Self:
        binary = shutil.which(self.binary) or f"/usr/sbin/{self.binary}"
        if not Path(binary).exists():
            raise RuntimeError(f"{self.binary} not found: apt-get install {self.package}")
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"btmm-{self.kind}-"))
            self._own_dir = True
        d = self.workdir
        d.mkdir(parents=True, exist_ok=True)
        argv = self.command(binary, d)
        log = d / f"{self.binary}.stderr"
        with log.open("wb") as err:
            self._proc.proc = subprocess.Popen(argv, cwd=d, stdout=err, stderr=subprocess.STDOUT)
        self._proc.log = log
        try:
            self.ready(self._proc.proc, d)
        except RuntimeError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        stop_pid(self._proc.proc)
        if self._own_dir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
