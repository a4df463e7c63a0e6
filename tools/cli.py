"""Conventions shared by every btmm command.

How this works
--------------
A stage reads JSON lines from stdin (when stdin is not a terminal), does its job per
record and writes JSON lines to stdout (when stdout is not a terminal, or ``--json``).
On a terminal (or with ``--pretty``) the same records are rendered with rich instead.

* Every record is one JSON object: ``"type"`` names it, ``"v": 1`` versions it, bytes
  are hex strings, addresses are strings.
* :func:`derive` copies the fields of the input record the stage does not know into its
  output, so context flows down a pipe.
* A per-record failure becomes ``{"type": "error", "stage", "error", "input"}`` and the
  run exits 1; error records arriving on stdin are passed along untouched.
* A fatal problem (bad flag, unreadable account file, no server) raises :class:`Fatal`:
  :func:`run` prints one line on stderr and exits with its code. Never a traceback for a
  user mistake; an unexpected exception is reported as a bug in one line (set
  ``BTMM_DEBUG=1`` for the traceback).

Exit codes (the same for every command; printed by ``--help``):
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, NoReturn, TextIO

if TYPE_CHECKING:  # rich costs ~25 ms to import: only loaded when something is rendered
    from rich.console import Console, RenderableType

EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_USAGE = 2
EXIT_REMOTE = 3
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """exit codes:
  0    everything worked (also after a clean stop by SIGINT/SIGTERM of a long-running stage)
  1    some records failed (they were emitted as {"type": "error"} records)
  2    usage or configuration error: bad flag, unreadable or unsafe account/key file,
       credentials refused by the server or peer (wrong key, wrong PSK)
  3    a server or peer could not be reached or answered with a failure we cannot fix
  130  interrupted before anything was set up
"""

RECORD_VERSION = 1

Record = dict[str, Any]
Renderer = Callable[[Record], "RenderableType | None"]


class Fatal(Exception):
    """A problem that stops the command: printed as one line, exit with ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def make_parser(
    prog: str,
    description: str,
    *,
    account: bool = True,
    host: bool = True,
    epilog: str = "",
) -> argparse.ArgumentParser:
    """An argparse parser with the flags every btmm command shares."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=(epilog + "\n\n" if epilog else "") + EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="write JSON lines (default in a pipe)")
    out.add_argument("--pretty", action="store_true", help="render rich tables (default on a terminal)")
    parser.add_argument("-v", "--verbose", action="store_true", help="explain each step on stderr")
    if account:
        parser.add_argument(
            "--account",
            metavar="FILE",
            help="account file (default: $BTMM_ACCOUNT, then $XDG_CONFIG_HOME/btmm/account.json)",
        )
    if host:
        parser.add_argument(
            "--host",
            metavar="LABEL",
            help="this host's label inside the account domain (default: from the hostname)",
        )
        parser.add_argument(
            "--state-dir",
            metavar="DIR",
            help="host state directory holding the host identity "
            "(default: $BTMM_STATE_DIR, then $XDG_STATE_HOME/btmm)",
        )
    return parser


def subcommand_parent(*, account: bool = True, host: bool = False) -> argparse.ArgumentParser:
    """A parent parser so the shared flags also work after a subcommand (``cmd sub --json``)."""
    parent = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    parent.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    parent.add_argument("--pretty", action="store_true", help=argparse.SUPPRESS)
    parent.add_argument("-v", "--verbose", action="store_true", help=argparse.SUPPRESS)
    if account:
        parent.add_argument("--account", metavar="FILE", help=argparse.SUPPRESS)
    if host:
        parent.add_argument("--host", metavar="LABEL", help=argparse.SUPPRESS)
        parent.add_argument("--state-dir", metavar="DIR", help=argparse.SUPPRESS)
    return parent


def _stream_is_tty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (ValueError, AttributeError):
        return False


@dataclass
class Output:
    """Where a stage's records go: JSON lines, or rich renderings on a terminal."""

    stage: str
    json_mode: bool
    verbose: bool = False
    renderer: Renderer | None = None
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    out_console: Console | None = None
    _console: Console | None = None
    errors: int = 0
    emitted: int = 0
    _t0: float = field(default_factory=time.monotonic)

    @classmethod
    def from_args(
        cls, stage: str, args: argparse.Namespace, renderer: Renderer | None = None
    ) -> Output:
        if getattr(args, "json", False):
            json_mode = True
        elif getattr(args, "pretty", False):
            json_mode = False
        else:
            json_mode = not _stream_is_tty(sys.stdout)
        return cls(stage=stage, json_mode=json_mode, verbose=bool(getattr(args, "verbose", False)),
                   renderer=renderer)

    @property
    def console(self) -> Console:
        """The stderr console (log/explain/warn lines), created on first use."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False)
        return self._console

    def emit(self, record: Record) -> None:
        """Write one record (JSON line or rich rendering)."""
        self.emitted += 1
        if record.get("type") == "error":
            self.errors += 1
        if self.json_mode:
            self.stdout.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
            self.stdout.flush()
            return
        if self.out_console is None:
            from rich.console import Console

            self.out_console = Console(file=self.stdout, highlight=False)
        renderable = None
        if record.get("type") == "error":
            renderable = render_error(record)
        elif self.renderer is not None:
            renderable = self.renderer(record)
        self.out_console.print(renderable if renderable is not None else default_render(record))

    def log(self, message: str) -> None:
        """An informational line on stderr (always shown)."""
        self.console.print(f"[dim]{self.stage}:[/dim] {message}", markup=True, highlight=False)

    def explain(self, message: str) -> None:
        """A ``--verbose`` line on stderr, stamped with ms since start."""
        if self.verbose:
            ms = (time.monotonic() - self._t0) * 1000
            self.console.print(f"[dim]{self.stage} +{ms:8.1f} ms[/dim] {message}",
                               markup=True, highlight=False)

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]{self.stage}: warning:[/yellow] {message}",
                           markup=True, highlight=False)

    def exit_code(self) -> int:
        return EXIT_PARTIAL if self.errors else EXIT_OK


def default_render(record: Record) -> RenderableType:
    """A two-column table of a record's fields."""
    from rich.table import Table

    table = Table(title=str(record.get("type", "record")), show_header=False, title_justify="left")
    table.add_column("field", style="bold cyan")
    table.add_column("value")
    for key, value in record.items():
        if key in ("type", "v"):
            continue
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        table.add_row(key, text)
    return table


def render_error(record: Record) -> RenderableType:
    from rich.text import Text

    return Text.assemble(
        ("error", "bold red"), f" [{record.get('stage', '?')}] ", str(record.get("error", "")),
    )


def make_record(rtype: str, **fields: Any) -> Record:
    """A fresh record of ``rtype``."""
    rec: Record = {"type": rtype, "v": RECORD_VERSION}
    rec.update(fields)
    return rec


def derive(source: Record | None, rtype: str, **fields: Any) -> Record:
    """A new record of ``rtype``: fields of ``source`` it does not set are copied through.

    ``type``/``v`` come first, then the stage's own fields, then the copied context.
    """
    rec: Record = {"type": rtype, "v": RECORD_VERSION}
    rec.update(fields)
    if source:
        for key, value in source.items():
            if key not in rec:
                rec[key] = value
    return rec


def error_record(stage: str, error: str, input_record: Record | None = None, **extra: Any) -> Record:
    """The per-record failure record that later stages pass along."""
    rec = make_record("error", stage=stage, error=error)
    rec.update(extra)
    if input_record is not None:
        rec["input"] = input_record
    return rec


def read_records(stream: Iterable[str], stage: str) -> Iterator[Record]:
    """JSON-lines input: dicts, or error records for broken lines (never raises on content)."""
    for number, line in enumerate(stream, start=1):
        text = line.strip()
        if not text:
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            yield error_record(
                stage,
                f"input line {number} is not valid JSON ({exc.msg} at column {exc.colno}); "
                "each line must be one JSON object from a btmm stage",
                {"line": number, "text": text[:200]},
            )
            continue
        if not isinstance(value, dict):
            yield error_record(
                stage,
                f"input line {number} is JSON but not an object; each line must be one JSON object",
                {"line": number, "text": text[:200]},
            )
            continue
        yield value


def stdin_records_available() -> bool:
    """True when stdin is a pipe or file (not a terminal)."""
    return not _stream_is_tty(sys.stdin)


def die(message: str, code: int = EXIT_USAGE) -> NoReturn:
    raise Fatal(message, code)


def run(prog: str, body: Callable[[], int]) -> NoReturn:
    """Run a command body: one-line errors, documented exit codes, no tracebacks for users."""
    try:
        code = body()
    except Fatal as exc:
        _print_fatal(prog, exc.message)
        code = exc.code
    except KeyboardInterrupt:
        _print_fatal(prog, "interrupted")
        code = EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not an error of ours.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        code = EXIT_OK
    except Exception as exc:  # a bug, not a user mistake: still one line
        if os.environ.get("BTMM_DEBUG"):
            raise
        _print_fatal(
            prog,
            f"internal error (a bug in btmm): {type(exc).__name__}: {exc} "
            "— rerun with BTMM_DEBUG=1 for the traceback and report it",
        )
        code = 70
    sys.stdout.flush() if not sys.stdout.closed else None
    sys.exit(code)


def _print_fatal(prog: str, message: str) -> None:
    line = " ".join(message.split())
    try:
        sys.stderr.write(f"{prog}: error: {line}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
