"""The `matchwire` console script: one entry point, one subcommand per tool module.

Each module listed in COMMAND_MODULES exposes `register(subparsers)`, which adds its subcommand(s)
and sets `func` on the parser to a callable taking the parsed arguments and returning an exit code.
Modules are imported lazily by name so that `matchwire --help` stays fast. Loaded by name, they
must not import this module back (a circle lint-imports cannot see): what they share with it is in
tools/usage.py (UsageError), and the contract "cli-loads-subcommands" of [tool.importlinter]
forbids them tools.cli.

Bad input (a missing or unreadable file, a file of the wrong kind, an address nobody answers on, an
argument argparse refuses) ends in one line on stderr, `matchwire COMMAND: what went wrong`, and a
non-zero exit: 2 for a usage or input error, 130 for Ctrl-C. MATCHWIRE_TRACEBACK=1 shows the
traceback of an input error instead (to debug matchwire itself).
"""
from __future__ import annotations

import argparse
import importlib
import os
import struct
import sys
from typing import NoReturn, Sequence

from tools.usage import UsageError

# (module, subcommand names it registers) — the single list of subcommands.
COMMAND_MODULES: tuple[str, ...] = (
    "tools.bench",
    "tools.replay",  # replay WALDIR
    "tools.audit",  # audit export WALDIR
    "tools.feed_dump",  # feed dump
    "tools.pcap_cli",  # pcap gap-check, stats, latency, book
    "tools.wireshark_cli",  # wireshark path, install
    "tools.retransmit_cli",  # retransmit serve, snapshot serve
    "tools.run_cli",  # run CONFIG, demo, admin
    "tools.order_cli",  # order enter|cancel|replace|status
    "tools.flowgen",  # flow generate
    "tools.doctor",  # doctor
    "tools.config_cli",  # config check
)

EXIT_USAGE = 2          # bad argument, file or address (argparse's own code for a usage error)
EXIT_INTERRUPTED = 130


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error in one line (the subcommand's parsers are of this class too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="matchwire",
        description="matchwire: a stock-exchange matching appliance (matching, WAL, ITCH 5.0 over MoldUDP64).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    _name_leaves(parser)
    return parser


def _name_leaves(parser: argparse.ArgumentParser) -> None:
    """Every leaf parser records its own prog ("matchwire bench matching"), for one-line errors."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        parser.set_defaults(_prog=parser.prog)
    for action in subs:
        for child in set(action.choices.values()):
            _name_leaves(child)


def describe(exc: BaseException) -> str:
    """One line for an input error: an OSError names its file, everything else its message."""
    if isinstance(exc, OSError) and exc.strerror:
        where = exc.filename if exc.filename is not None else ""
        return f"{where}: {exc.strerror}" if where else exc.strerror
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = getattr(args, "_prog", parser.prog)
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (UsageError, OSError, ValueError, EOFError, struct.error, UnicodeError) as e:
        if os.environ.get("MATCHWIRE_TRACEBACK"):
            raise
        print(f"{prog}: {describe(e)}", file=sys.stderr)
        return EXIT_USAGE
    return int(rc or 0)


if __name__ == "__main__":   # python -m tools.cli: the tools import this module's classes, not __main__'s
    from tools.cli import main as _main
    sys.exit(_main())
