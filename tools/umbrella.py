"""btmm: umbrella command, ``btmm <stage> ...`` runs ``btmm-<stage> ...``."""

from __future__ import annotations

import importlib
import sys

STAGES: dict[str, str] = {
    "account": "tools.account",
    "ula": "tools.ula_cmd",
    "register": "tools.register",
    "browse": "tools.browse",
    "serve": "tools.serve",
    "map-port": "tools.map_port",
    "resolve-tunnel": "tools.resolve_tunnel",
    "tunnel-up": "tools.tunnel_up",
    "status": "tools.status",
    "demo": "tools.demo",
}

USAGE = "usage: btmm STAGE [ARGS...]\n\nstages:\n" + "".join(
    f"  {name:<16} btmm-{name}\n" for name in STAGES
) + "\nbtmm STAGE --help shows a stage's flags.\n"


def main() -> None:
    argv = sys.argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        sys.exit(0 if argv else 2)
    stage = argv[0]
    module_name = STAGES.get(stage)
    if module_name is None:
        sys.stderr.write(f"btmm: error: unknown stage {stage!r}; run `btmm --help` for the list\n")
        sys.exit(2)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        sys.stderr.write(f"btmm: error: stage {stage!r} is not built yet in this version\n")
        sys.exit(2)
    sys.argv = [f"btmm-{stage}", *argv[1:]]
    module.main()
