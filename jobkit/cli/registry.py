"""Each ``jobkit`` command registers itself, with its arguments, where it is defined.

A command is one coroutine taking the parsed arguments and returning an exit code; the
:func:`command` decorator records it with its help line and a function adding its own
arguments, so adding a command is one edit beside its code::

    def _arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("job_id", metavar="ID", help=ID_HELP)

    @command("show", "everything about one job", _arguments)
    async def cmd_show(args: argparse.Namespace) -> int:
        ...

:func:`build_parser` adds the commands in the order they were registered (the order of the
imports in :mod:`jobkit.cli`, then of the definitions in each module): that is the order of
``jobkit --help``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, NoReturn

EXIT_USAGE = 2  # bad usage; the other exit codes are in cli/common.py
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

Run = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]
Arguments = Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True)
class Command:
    """A registered command: its name, help line, arguments and coroutine."""

    name: str
    help: str
    run: Run
    arguments: Arguments | None = None
    db: bool = True
    json_out: bool = True


#: Every command, in registration order (the order of ``jobkit --help``).
COMMANDS: dict[str, Command] = {}


def command(name: str, help_text: str, arguments: Arguments | None = None, *,
            db: bool = True, json_out: bool = True) -> Callable[[Run], Run]:
    """Register the decorated coroutine as ``jobkit NAME``.

    Args:
        help_text: its line in ``jobkit --help`` (and the description of ``jobkit NAME --help``).
        arguments: adds the command's own arguments to its parser.
        db: give it ``--database-url``.
        json_out: give it ``--json``.
    """

    def register(run: Run) -> Run:
        if name in COMMANDS:
            raise ValueError(f"jobkit command {name!r} is registered twice")
        COMMANDS[name] = Command(name, help_text, run, arguments, db, json_out)
        return run

    return register


class Parser(argparse.ArgumentParser):
    """Bad usage prints one line (no usage dump) and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def _log_options(p: argparse.ArgumentParser, *, top: bool) -> None:
    """On the top parser with real defaults; on each command with none (SUPPRESS), so
    `jobkit --log-format json work` and `jobkit work --log-format json` both work."""
    suppress: Any = argparse.SUPPRESS
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors",
                   default=False if top else suppress)
    p.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS,
                   help="logging level (default INFO; `demo` shows only warnings)",
                   default=None if top else suppress)
    p.add_argument("--log-format", choices=("text", "json"),
                   help="log lines as text, or one JSON object per line (default text)",
                   default="text" if top else suppress)


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The ``jobkit`` parser of every registered command (``args.func`` is its coroutine)."""
    parser = Parser(prog="jobkit", description=description,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    _log_options(parser, top=True)
    from ..version import __version__

    parser.add_argument("--version", action="version", version=f"jobkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        if cmd.db:
            p.add_argument("--database-url", default=None,
                           help="database URL (default: $JOBKIT_DATABASE_URL or ./jobkit.db)")
        if cmd.json_out:
            p.add_argument("--json", action="store_true", help="print JSON instead of text")
        _log_options(p, top=False)
        if cmd.arguments is not None:
            cmd.arguments(p)
        p.set_defaults(func=cmd.run)
    return parser
