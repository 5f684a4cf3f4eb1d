"""appliance.fsutil.atomic_write: a reader finds the old content or the new, whole, never a mix.

A writer process killed (SIGKILL) at random points while it replaces a file over and over: the
file is always one of the versions, whole. A write the kernel refuses half way (RLIMIT_FSIZE, a
real EFBIG): the old file is untouched and no temp file is left. And one place writes files
atomically: no other module renames or replaces a file by hand.
"""
from __future__ import annotations

import ast
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.fsutil import atomic_write

ROOT = Path(__file__).resolve().parents[1]
SIZE = 1 << 20     # large enough that a write takes several system calls' time


def version(i: int) -> bytes:
    return bytes([65 + i % 26]) * SIZE


def test_replaces_content_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    atomic_write(str(path), b"old")
    atomic_write(str(path), b"new", durable=False)
    assert path.read_bytes() == b"new"
    atomic_write(str(path), b"newer")
    assert path.read_bytes() == b"newer"
    atomic_write(str(tmp_path / "journal"), b"x", mode=0o600)
    assert stat.S_IMODE(os.stat(tmp_path / "journal").st_mode) == 0o600 & ~current_umask()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal", "state.json"]


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


WRITER = """
import sys
from appliance.fsutil import atomic_write
path, durable, size = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
print("ready", flush=True)
i = 1
while True:
    atomic_write(path, bytes([65 + i % 26]) * size, durable=durable)
    i += 1
"""


@pytest.mark.parametrize("durable", [True, False])
def test_a_writer_killed_mid_write_leaves_one_whole_version(tmp_path: Path, durable: bool) -> None:
    path = tmp_path / "file"
    atomic_write(str(path), version(0))
    rnd = random.Random(7)
    for _ in range(8):
        p = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "1" if durable else "0", str(SIZE)],
                             cwd=ROOT, stdout=subprocess.PIPE, text=True)
        try:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
            time.sleep(rnd.uniform(0.01, 0.3))
        finally:
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=60)
            if p.stdout is not None:
                p.stdout.close()
        data = path.read_bytes()
        assert len(data) == SIZE and data == data[:1] * SIZE, "a torn or mixed file"
    # A kill between the temp file's creation and the rename leaves it; the next write reuses it.
    atomic_write(str(path), b"after")
    assert path.read_bytes() == b"after" and not (tmp_path / "file.tmp").exists()


FAILING = """
import resource, signal, sys
from appliance.fsutil import atomic_write
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)      # EFBIG as an error, not a signal
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    atomic_write(sys.argv[1], b"n" * 100_000, durable=sys.argv[2] == "1")
except OSError as e:
    print(e.errno)
    sys.exit(0)
sys.exit("the write did not fail")
"""


@pytest.mark.parametrize("durable", [True, False])
def test_a_write_that_fails_leaves_the_old_file_and_no_temp(tmp_path: Path, durable: bool) -> None:
    path = tmp_path / "CHECKPOINT.json"
    path.write_bytes(b"old content")
    r = subprocess.run([sys.executable, "-c", FAILING, str(path), "1" if durable else "0"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == 27                      # EFBIG: the kernel refused the write half way
    assert path.read_bytes() == b"old content"
    assert [p.name for p in tmp_path.iterdir()] == ["CHECKPOINT.json"]


def test_no_other_module_replaces_a_file_by_hand() -> None:
    """os.replace / os.rename only in appliance/fsutil.py."""
    allowed = {"appliance/fsutil.py"}
    found = []
    for pkg in ("appliance", "feeds", "retransmit", "tools"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            for node in ast.walk(ast.parse(path.read_text(), rel)):
                if isinstance(node, ast.Attribute) and node.attr in ("replace", "rename") and \
                        isinstance(node.value, ast.Name) and node.value.id == "os" and rel not in allowed:
                    found.append(f"{rel}:{node.lineno}")
    assert not found, found
