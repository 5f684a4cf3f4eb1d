"""One direction through the house: the import-linter contracts of pyproject.toml hold, can break,
and cover every module (README "Layers").

The contracts: a layers contract (tools > processes > retransmission > codecs and feeds > catalogue,
model, reasons, matching), no import circles among the modules of a package, a ground layer that
imports no clock, randomness or I/O, and no subcommand module importing tools.cli (which loads them
by name, an edge the circle check cannot see). ``lint-imports`` runs as a subprocess, as CI would.
"""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("appliance", "feeds", "retransmit", "tools")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    assert LINT_IMPORTS.exists(), f"{LINT_IMPORTS}: install the test extra (import-linter)"
    env = dict(os.environ, PYTHONPATH=str(cwd), NO_COLOR="1", COLUMNS="200")
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=240)


def contracts() -> list[dict[str, object]]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return list(tomllib.load(f)["tool"]["importlinter"]["contracts"])


def layers() -> list[list[str]]:
    """The layers contract, top first: each layer the list of its modules."""
    (layered,) = [c for c in contracts() if c["type"] == "layers"]
    found = layered["layers"]
    assert isinstance(found, list)
    return [[m.strip() for m in re.split(r"[:|]", str(layer)) if m.strip()] for layer in found]


def modules() -> list[str]:
    out = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out.append(".".join(parts))
    return out


def test_the_contracts_hold() -> None:
    r = lint_imports(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"Contracts: {len(contracts())} kept, 0 broken." in r.stdout, r.stdout


def test_the_contracts_can_break(tmp_path: Path) -> None:
    """A copy of the tree with one upward import, one circle, a clock read in the matching core and
    a subcommand importing tools.cli back: lint-imports names each of them (so the check above is
    not one that cannot fail)."""
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")

    def append(rel: str, line: str) -> None:
        with open(tmp_path / rel, "a") as f:
            f.write("\n" + line + "\n")

    append("feeds/books.py", "from tools.usage import UsageError  # upward: feeds -> tools")
    append("retransmit/quota.py", "def _f() -> None:\n    from appliance.daemon import choose_cpu  # upward, inside a function")
    append("feeds/layout.py", "from feeds import itch  # a circle: itch imports layout")
    append("appliance/matching/rules.py", "import time  # the matching core must not read a clock")
    append("tools/order_cli.py", "from tools.cli import UsageError  # the circle tools.cli loads by name")
    r = lint_imports(tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert f"Contracts: 0 kept, {len(contracts())} broken." in r.stdout, out
    assert "feeds.books -> tools.usage" in out, out
    assert "retransmit.quota -> appliance.daemon" in out, out
    assert "No cycles are allowed in feeds." in out, out
    assert "appliance.matching.rules -> time" in out, out
    assert "tools.order_cli -> tools.cli" in out, out


def test_every_subcommand_module_is_forbidden_tools_cli() -> None:
    """The contract that keeps the subcommand modules from importing tools.cli lists exactly the
    modules tools.cli loads by name: a new subcommand module is covered the day it is added."""
    from tools.cli import COMMAND_MODULES
    (contract,) = [c for c in contracts() if c["id"] == "cli-loads-subcommands"]
    assert contract["forbidden_modules"] == ["tools.cli"]
    sources = contract["source_modules"]
    assert isinstance(sources, list) and sorted(sources) == sorted(COMMAND_MODULES)


def test_every_module_is_in_a_layer() -> None:
    """The layers contract lists modules, so a new module outside every layer would go unchecked."""
    listed = [m for layer in layers() for m in layer]
    missing = [m for m in modules() if m != "appliance" and not any(m == l or m.startswith(l + ".") for l in listed)]
    assert not missing, f"modules in no layer of pyproject.toml [tool.importlinter]: {missing}"
    assert [layer[0] for layer in layers()][0] == "tools"
    assert "appliance.catalogue" in layers()[-1]


@pytest.mark.parametrize("pkg", ["appliance", "feeds", "retransmit"])
def test_no_lower_layer_starts_a_tool_by_name(pkg: str) -> None:
    """An import by name (importlib, ``python -m``) escapes lint-imports: no string names a tools module."""
    named = []
    for path in sorted((ROOT / pkg).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                    re.fullmatch(r"tools(\.\w+)*", node.value):
                named.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not named, named
