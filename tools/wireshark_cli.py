"""`matchwire wireshark path|install`: the Lua dissector shipped in the package (feeds/matchwire.lua,
generated from the layouts by feeds.wireshark).

    matchwire wireshark path                 print where it is (tshark -X lua_script:$(...))
    matchwire wireshark install [--dir D]    copy it to Wireshark's personal Lua plugins folder
                                             (default ~/.local/lib/wireshark/plugins); print the copy
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from feeds.wireshark import LUA_PATH


def cmd_path(args: argparse.Namespace) -> int:
    print(LUA_PATH)
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    target_dir = Path(args.dir) if args.dir else Path.home() / ".local" / "lib" / "wireshark" / "plugins"
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / LUA_PATH.name
        shutil.copyfile(LUA_PATH, target)
    except OSError as e:
        print(f"matchwire wireshark install: {target_dir}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(f"installed {target}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("wireshark", help="the Wireshark Lua dissector of our feeds and order entry")
    wsub = p.add_subparsers(dest="wireshark_command", metavar="WIRESHARKCOMMAND")
    wsub.required = True
    wsub.add_parser("path", help="print the path of the dissector").set_defaults(func=cmd_path)
    i = wsub.add_parser("install", help="copy the dissector to Wireshark's personal plugins folder")
    i.add_argument("--dir", help="plugins folder (default ~/.local/lib/wireshark/plugins)")
    i.set_defaults(func=cmd_install)
