"""Which build of the hot path is running: the pure-Python reference, or the same source compiled by mypyc.

``make compiled`` compiles COMPILED_MODULES in place (an extension module beside each source file;
Python's import system prefers the extension), ``make pure`` removes them. Every process says which
build it runs (the partition's start-up log, every benchmark's JSON): ``build_kind()``.

    python -m appliance.build modules     the source files mypyc compiles (the Makefile reads them)
    python -m appliance.build kind        "mypyc" or "cpython" for this interpreter and tree
"""
from __future__ import annotations

import importlib
import sys
from typing import Final

# The hot path: the catalogue, the model, the matching core; the ring, its codec and the WAL codec;
# the sequencer, the partition's duty cycle and the gateways' record encoder; the L2/L1 encoders and
# the publisher; the gateway's sans-IO sessions (OUCH, FIX and its codec), pre-trade risk, its journal
# and message stores (and feeds/store.py, their base). Left interpreted: the modules that declare wire
# layouts as annotated NamedTuples (feeds/itch.py, feeds/moldudp64.py, feeds/depth_layout.py,
# feeds/ouch_layout.py, feeds/soupbintcp.py; feeds/layout.py reads the annotations, which a compiled
# class does not keep), the code the WAL and ITCH codecs generate at import, and the gateway's
# asyncio shell (appliance/gateway/server.py).
COMPILED_MODULES: Final = (
    "appliance/model.py",
    "appliance/reasons.py",
    "appliance/catalogue.py",
    "appliance/matching/book.py",
    "appliance/matching/engine.py",
    "appliance/matching/phases.py",
    "appliance/matching/statehash.py",
    "appliance/ring.py",
    "appliance/codec_ring.py",
    "appliance/walcodec.py",
    "appliance/eventcodec.py",
    "appliance/sequencer.py",
    "appliance/partition.py",
    "feeds/channels.py",
    "feeds/publisher.py",
    "appliance/risk.py",
    "appliance/gateway/events.py",
    "appliance/gateway/budget.py",
    "appliance/gateway/ouch.py",
    "appliance/gateway/fixcodec.py",
    "appliance/gateway/fix.py",
    "appliance/gateway/journal.py",
    "feeds/store.py",
    "appliance/gateway/store.py",
)


def _module_name(path: str) -> str:
    return path[:-3].replace("/", ".")


def compiled_modules() -> list[str]:
    """The hot-path modules that are loaded from a compiled extension in this process."""
    out = []
    for path in COMPILED_MODULES:
        mod = importlib.import_module(_module_name(path))
        if not (getattr(mod, "__file__", "") or "").endswith(".py"):
            out.append(_module_name(path))
    return out


def build_kind() -> str:
    """"mypyc" when every hot-path module is compiled, "cpython" when none is, else "mixed"."""
    n = len(compiled_modules())
    if n == len(COMPILED_MODULES):
        return "mypyc"
    return "mixed" if n else "cpython"


def main(argv: list[str]) -> int:
    if argv == ["modules"]:
        print(" ".join(COMPILED_MODULES))
        return 0
    if argv == ["kind"]:
        print(build_kind())
        return 0
    sys.stderr.write("usage: python -m appliance.build modules|kind\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
