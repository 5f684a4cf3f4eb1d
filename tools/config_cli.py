"""`matchwire config check CONFIG`: load a config as the appliance does and say whether it is valid.

Prints each warning (`warning: ...`) and `ok: N instruments, N partitions, N gateways, N firms` on
stdout, exit 0; an invalid config is one line on stderr naming the key, exit 78 (EX_CONFIG).
Deployment tools run it before installing a rendered config (ansible/, `validate`).
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

EXIT_CONFIG = 78


def register(sub: Any) -> None:
    c = sub.add_parser("config", help="configuration tools")
    csub = c.add_subparsers(dest="config_command", metavar="REQUEST")
    csub.required = True
    k = csub.add_parser("check", help="load a TOML config as the appliance does: warnings, or the first error")
    k.add_argument("config", help="the TOML configuration (docs/config.md)")
    k.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    from appliance.config import ConfigError, load
    try:
        cfg = load(args.config)
    except (ConfigError, OSError) as e:
        print(f"matchwire config check: {e}", file=sys.stderr)
        return EXIT_CONFIG
    for w in cfg.warnings:
        print(f"warning: {w}")
    print(f"ok: {len(cfg.instruments)} instruments, {len(cfg.partitions)} partitions, "
          f"{len(cfg.gateways)} gateways, {len(cfg.firms)} firms")
    return 0
