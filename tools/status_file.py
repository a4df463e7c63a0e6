"""Status files: how long-running stages tell `btmm-status` what they hold.

Each long-running stage (btmm-register, btmm-map-port, btmm-tunnel-up) publishes its
current state as one JSON object in ``<state dir>/status/<component>.json`` (mode 0600,
replaced atomically), stamped with its PID and the time. ``btmm-status`` reads them all
and marks a file whose PID is gone as stale. A stage removes its file on clean exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

COMPONENTS = ("port-mapping", "registration", "tunnels")


def status_path(state_dir: Path, component: str) -> Path:
    return state_dir / "status" / f"{component}.json"


def publish(state_dir: Path, component: str, data: dict[str, Any]) -> None:
    """Replace ``component``'s status with ``data`` (never raises: status is best effort)."""
    path = status_path(state_dir, component)
    body = dict(data, component=component, pid=os.getpid(), updated=time.time())
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps(body, ensure_ascii=False).encode())
        finally:
            os.close(fd)
        os.replace(tmp, path)


def clear(state_dir: Path, component: str) -> None:
    with contextlib.suppress(OSError):
        status_path(state_dir, component).unlink()


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_all(state_dir: Path) -> dict[str, dict[str, Any]]:
    """Every component's last status; ``stale`` is True when its process is gone."""
    result: dict[str, dict[str, Any]] = {}
    directory = state_dir / "status"
    if not directory.is_dir():
        return result
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(data, dict):
            data["stale"] = not _alive(data.get("pid"))
            result[path.stem] = data
    return result
