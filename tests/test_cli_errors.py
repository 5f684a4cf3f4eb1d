"""Every `matchwire` subcommand given a bad argument, file or address answers in one line on stderr
(`matchwire COMMAND: ...`), exits non-zero and shows no traceback.

The table names bad invocations per subcommand; a test walks the real parser and fails when a
subcommand has no entry, so a new subcommand comes with its bad-input cases. `feed dump` and the
pcap tools are covered by their own tests.
"""
from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
from typing import Any, Callable

import pytest

from tools.cli import build_parser
from tools.demo import loopback_config, write_config

pytestmark = pytest.mark.timeout(600)

COVERED_ELSEWHERE = ("matchwire feed dump", "matchwire pcap",
                     "matchwire wireshark path")   # takes no input: nothing to get wrong

Files = dict[str, str]
# (subcommand, arguments built from the fixture's files)
CASES: list[tuple[str, Callable[[Files], list[str]]]] = [
    ("bench matching", lambda f: [f["missing"]]),
    ("bench matching", lambda f: [f["text"]]),
    ("bench matching", lambda f: [f["bad_flow"]]),
    ("bench matching", lambda f: []),
    ("bench matching", lambda f: [f["text"], "--runs", "3"]),
    ("bench matching", lambda f: [f["bad_flow"], "--runs", "2"]),       # fails in the fresh processes
    ("bench memory", lambda f: ["--orders", "many"]),
    ("bench snapshot", lambda f: ["--levels", "x"]),
    ("bench wal", lambda f: ["--batches", "x", "--seconds", "0.01", "--dir", f["scratch"]]),
    ("bench recovery", lambda f: ["--flow", f["missing"]]),
    ("bench crash", lambda f: ["--runs", "x"]),
    ("bench feed", lambda f: [f["missing"]]),
    ("bench feed", lambda f: [f["text"]]),
    ("bench subscriber", lambda f: [f["missing"]]),
    ("bench subscriber", lambda f: [f["text"]]),
    ("bench subscriber", lambda f: [f["bad_flow"]]),
    ("bench depth", lambda f: [f["missing"]]),
    ("bench instructions", lambda f: [f["missing"]]),
    ("bench instructions", lambda f: [f["text"]]),
    ("bench instructions", lambda f: [f["bad_flow"]]),
    ("bench instructions", lambda f: [f["flow"], "--commands", "0"]),
    ("bench instructions", lambda f: [f["flow"], "--against", "no-such-revision"]),
    ("bench depth", lambda f: [f["text"]]),
    ("bench depth", lambda f: [f["text"], "--levels", "0"]),
    ("bench ring", lambda f: ["--slots", "3", "--seconds", "0.1"]),
    ("bench wakeup", lambda f: ["--rounds", "0"]),
    ("bench wakeup", lambda f: ["--cpu-dma-latency", "-2"]),
    ("bench retransmit", lambda f: ["--messages", "x"]),
    ("bench pipeline", lambda f: [f["missing"]]),
    ("bench restart", lambda f: [f["text"]]),
    ("bench latency", lambda f: ["--rate", "x"]),
    ("bench latency", lambda f: ["--rate", "0"]),
    ("bench latency", lambda f: ["--client-on", "matcher", "--realtime"]),
    ("bench fix-state", lambda f: ["--small", "0"]),
    ("bench gateway", lambda f: ["--orders", "0"]),
    ("bench gateway", lambda f: ["--orders", "x"]),
    ("bench gateway", lambda f: ["--per-read", "0"]),
    ("bench gateway", lambda f: ["--profile", "-1"]),
    ("bench gateway", lambda f: ["--protocol", "itch"]),
    ("bench pcap", lambda f: [f["missing"]]),
    ("doctor", lambda f: ["--config", f["missing"]]),
    ("doctor", lambda f: ["--config", f["text"]]),
    ("config check", lambda f: [f["missing"]]),
    ("config check", lambda f: [f["text"]]),
    ("bench pcap", lambda f: [f["text"]]),
    ("wireshark install", lambda f: ["--dir", f["text"]]),   # a file where the folder should be
    ("bench day", lambda f: ["--date", "2026-13-45"]),
    ("replay", lambda f: [f["missing"]]),
    ("replay", lambda f: [f["text"]]),
    ("replay", lambda f: [f["dir"], "--until-seq", "x"]),
    ("audit export", lambda f: [f["missing"], "--format", "csv"]),
    ("audit export", lambda f: [f["dir"], "--format", "xml"]),
    ("retransmit serve", lambda f: ["--store", f["missing"], "--seconds", "1"]),
    ("retransmit serve", lambda f: ["--config", f["text"], "--seconds", "1"]),
    ("snapshot serve", lambda f: ["--config", f["missing"]]),
    ("run", lambda f: [f["missing"]]),
    ("run", lambda f: [f["text"]]),
    ("demo", lambda f: ["--orders", "x"]),
    ("admin kill-switch", lambda f: ["ALFA", "on", "--config", f["down"]]),
    ("admin kill-switch", lambda f: ["ALFA", "maybe"]),
    ("admin halt", lambda f: ["ALPH", "--config", f["down"]]),
    ("admin resume", lambda f: ["ALPH", "--config", f["down"]]),
    ("admin close", lambda f: ["all", "--config", f["down"]]),
    ("admin status", lambda f: ["--config", f["missing"]]),
    ("admin status", lambda f: ["--config", f["text"]]),
    ("order enter", lambda f: ["ALPH", "buy", "100", "150.00", "--config", f["down"]]),
    ("order enter", lambda f: ["ALPH", "hold", "100", "150.00"]),
    ("order enter", lambda f: ["ALPH", "buy", "100", "150.001", "--config", f["down"]]),
    ("order cancel", lambda f: ["7", "--config", f["missing"]]),
    ("order replace", lambda f: ["7", "100", "150.00", "--via", "fix", "--config", f["down"]]),
    ("order status", lambda f: ["7", "--config", f["text"]]),
    ("flow generate", lambda f: [f["missing"] + "/f", "--events", "10"]),
    ("flow generate", lambda f: [f["scratch"] + "-f", "--events", "0"]),
]


def leaf_commands() -> list[str]:
    """Every runnable subcommand of the real parser ("bench matching", "replay", ...)."""
    out: list[str] = []

    def walk(p: Any) -> None:
        subs = [a for a in p._actions if a.__class__.__name__ == "_SubParsersAction"]
        if not subs:
            out.append(p.prog)
        for action in subs:
            for child in {id(c): c for c in action.choices.values()}.values():
                walk(child)
    walk(build_parser())
    return sorted(set(out))


def matchwire(args: list[str], cwd: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tools.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=dict(os.environ, MATCHWIRE_TRACEBACK=""))


def assert_one_line_error(r: subprocess.CompletedProcess[str], command: str) -> None:
    shown = f"stdout: {r.stdout!r}\nstderr: {r.stderr!r}"
    assert r.returncode != 0, shown
    assert "Traceback" not in r.stdout + r.stderr, shown
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"matchwire {command}"), shown
    assert r.stdout == "", shown


@pytest.fixture(scope="module")
def files(tmp_path_factory: Any) -> Files:
    root = tmp_path_factory.mktemp("cli")
    text = root / "notes.txt"
    text.write_text("not a flow, a pcap, a WAL or a config\n")
    bad_flow = root / "bad.bin"
    bad_flow.write_bytes(struct.pack("<BBHIii", 9, 0, 0, 1, 100, 10))    # record kind 9 does not exist
    flow = root / "flow.bin"
    flow.write_bytes(struct.pack("<BBHIii", 0, 0, 0, 1, 100, 10))        # one good order
    (root / "emptydir").mkdir()
    down = write_config(loopback_config(str(root)), str(root / "down.toml"))   # nothing listens on its ports
    return {"missing": str(root / "missing"), "text": str(text), "bad_flow": str(bad_flow),
            "flow": str(flow), "dir": str(root / "emptydir"), "scratch": str(root / "scratch"), "down": down, "root": str(root)}


def test_every_subcommand_has_bad_input_cases() -> None:
    named = {"matchwire " + c for c, _ in CASES}
    missing = [c for c in leaf_commands() if c not in named and not c.startswith(COVERED_ELSEWHERE)]
    assert not missing, f"subcommands without a bad-input case in CASES: {missing}"


@pytest.mark.parametrize("command,args", CASES, ids=[f"{c} {i}" for i, (c, _) in enumerate(CASES)])
def test_bad_input_is_one_line_and_a_non_zero_exit(command: str, args: Callable[[Files], list[str]],
                                                  files: Files) -> None:
    r = matchwire(command.split() + args(files), files["root"])
    assert_one_line_error(r, command)


def test_admin_without_config_and_nothing_listening_says_where_it_looked(files: Files) -> None:
    """No --config: the demo's admin port. Only run when nothing listens there (a running demo must
    not be halted by a test)."""
    from appliance.config import default
    a = default().admin
    with socket.socket() as s:
        s.settimeout(1)
        if s.connect_ex((a.bind, a.port)) == 0:
            pytest.skip(f"something listens on {a.bind}:{a.port}")
    r = matchwire(["admin", "halt", "ALPH"], files["root"])
    assert_one_line_error(r, "admin halt")
    assert f"no appliance answers at http://{a.bind}:{a.port}" in r.stderr and "--config" in r.stderr
    r = matchwire(["admin", "status", "--config", files["down"]], files["root"])
    assert_one_line_error(r, "admin status")
    assert files["down"] in r.stderr


def test_a_missing_file_is_named(files: Files) -> None:
    r = matchwire(["bench", "matching", files["missing"]], files["root"])
    assert r.stderr == f"matchwire bench matching: {files['missing']}: No such file or directory\n"
    assert r.returncode == 2
