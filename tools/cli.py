"""The `matchwire` console script: one entry point, one subcommand per tool module.

Each module listed in COMMAND_MODULES exposes `register(subparsers)`, which adds its subcommand(s)
and sets `func` on the parser to a callable taking the parsed arguments and returning an exit code.
Modules are imported lazily by name so that `matchwire --help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# (module, subcommand names it registers) — the single list of subcommands.
COMMAND_MODULES: tuple[str, ...] = (
    "tools.bench",
    "tools.replay",  # replay WALDIR, audit export WALDIR
    "tools.feed_dump",  # feed dump
    "tools.retransmit_cli",  # retransmit serve, snapshot serve
    "tools.run_cli",  # run CONFIG, demo, admin
    "tools.doctor",  # doctor
    "tools.config_cli",  # config check
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="matchwire",
        description="matchwire: a stock-exchange matching appliance (matching, WAL, ITCH 5.0 over MoldUDP64).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    rc = args.func(args)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
