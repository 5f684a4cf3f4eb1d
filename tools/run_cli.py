"""`matchwire run CONFIG`, `matchwire demo`, `matchwire admin ...`: running the appliance.

    matchwire run CONFIG [--state-dir var/state] [--no-realtime]
    matchwire demo [--orders 3000] [--firms 3] [--no-live-view] [--keep DIR]
    matchwire admin kill-switch FIRM on|off [--config CONFIG]
    matchwire admin status [--config CONFIG]
    matchwire admin halt|resume|close SYMBOL|all [--config CONFIG]

docs/operations.md describes the processes, the state directory and the admin interface.
"""
from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from typing import Any

from tools import jsonio


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="start the appliance: partitions, gateways, feeds, servers")
    p.add_argument("config", help="the TOML configuration (docs/config.md)")
    p.add_argument("--state-dir", default="var/state",
                   help="feed stores, gateway journals and FIX state, run files (default var/state)")
    p.add_argument("--no-realtime", action="store_true",
                   help="do not ask for SCHED_FIFO and mlockall (laptops, tests, CI)")
    p.add_argument("--transport", default="udp", choices=("udp", "pcap", "null"),
                   help="market data: udp (default) the network, each channel by its configured transport "
                        "(udp, sendmmsg or afxdp: market_data.transport); pcap a file; null nowhere")
    p.set_defaults(func=_run)

    d = sub.add_parser("demo", help="the appliance on loopback, a load generator, a live book from the feed")
    d.add_argument("--orders", type=int, default=3000, help="orders to send (default 3000)")
    d.add_argument("--no-live-view", action="store_true", help="print progress only, no live ladder")
    d.add_argument("--keep", metavar="DIR", help="state directory to use and keep (default: a temp dir)")
    d.add_argument("--json", action="store_true", help="print the summary as one JSON line too")
    d.set_defaults(func=_demo)

    a = sub.add_parser("admin", help="talk to a running appliance's admin interface")
    asub = a.add_subparsers(dest="admin", metavar="REQUEST")
    asub.required = True
    k = asub.add_parser("kill-switch", help="turn a firm's kill switch on (mass cancel) or off")
    k.add_argument("firm")
    k.add_argument("state", choices=("on", "off"))
    k.add_argument("--config", default=None, help="config (admin bind, port, token); default: the built-in default config")
    k.set_defaults(func=_admin)
    for action, text in (("halt", "halt trading (orders are collected for the reopening auction)"),
                         ("resume", "end a halt or pause: reopening auction, or the schedule's phase"),
                         ("close", "close now (the closing auction uncrosses; DAY orders expire)")):
        h = asub.add_parser(action, help=f"{text}: one instrument, or all")
        h.add_argument("symbol", help="the instrument's symbol, or 'all'")
        h.add_argument("--config", default=None)
        h.set_defaults(func=_admin)
    s = asub.add_parser("status", help="sessions, kill switches, positions, counters; "
                                       "each process's pid, CPU, memory, placement")
    s.add_argument("--config", default=None)
    s.set_defaults(func=_admin)


def _run(args: argparse.Namespace) -> int:
    from appliance.config import ConfigError
    from appliance.run import run
    try:
        return run(args.config, args.state_dir, realtime=not args.no_realtime, transport=args.transport)
    except (ConfigError, OSError) as e:
        print(f"matchwire run: {e}", file=sys.stderr)
        return 78


def _demo(args: argparse.Namespace) -> int:
    from tools.demo import demo
    return demo(orders=args.orders, live_view=not args.no_live_view, keep=args.keep, as_json=args.json)


def admin_request(config_path: str | None, method: str, path: str) -> dict[str, Any]:
    """One request to the admin interface of the appliance that `config_path` (default: the built-in
    default config, appliance.config.DEFAULT) describes; an appliance that does not answer is a UsageError naming the address."""
    from appliance.config import default, load
    from tools.usage import UsageError
    cfg = load(config_path) if config_path else default()
    a = cfg.admin
    url = f"http://{a.bind}:{a.port}"
    req = urllib.request.Request(url + path, method=method, headers={"Authorization": f"Bearer {a.token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return dict(jsonio.loads(r.read()))
    except urllib.error.HTTPError as e:
        try:
            return dict(jsonio.loads(e.read() or b"{}"), http_status=e.code)
        except ValueError:
            raise UsageError(f"{url} answered HTTP {e.code} without a matchwire answer "
                             f"(is it the admin port of a matchwire appliance?)") from None
    except (urllib.error.URLError, OSError) as e:
        why = getattr(e, "reason", e)
        which = f"the admin port of {config_path}" if config_path else \
            "the default config's admin port; give --config CONFIG, e.g. the one `matchwire demo` prints"
        raise UsageError(f"no appliance answers at {url}: {getattr(why, 'strerror', None) or why} ({which})") from None


def _admin(args: argparse.Namespace) -> int:
    if args.admin == "kill-switch":
        ans = admin_request(args.config, "POST", f"/kill-switch/{args.firm}/{args.state}")
    elif args.admin in ("halt", "resume", "close"):
        ans = admin_request(args.config, "POST", f"/trading/{args.admin}/{args.symbol}")
    else:
        ans = admin_request(args.config, "GET", "/status")
    print(jsonio.dumps(ans, indent=1, sort_keys=True))
    return 0 if ans.get("ok") else 1
