"""btmm command-line tools: argument parsing, process lifecycle, JSON lines, rich output.

Every command is a small module with a ``main()`` that builds its parser with
:func:`tools.cli.make_parser` and runs under :func:`tools.cli.run`, so all commands share
flags, exit codes, the JSON-lines contract and error rendering (see ``tools/cli.py``).
"""
