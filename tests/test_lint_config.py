"""`make lint` (mypy --strict, run by .ci/run) covers every package, with a pinned mypy, and lets
only the libraries without stubs through unchecked."""
from __future__ import annotations

import os
import re
import tomllib
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pyproject() -> dict[str, Any]:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def test_mypy_checks_every_package_strictly() -> None:
    cfg = _pyproject()
    mypy = cfg["tool"]["mypy"]
    assert mypy["strict"] is True
    shipped = {p.rstrip("*") for p in cfg["tool"]["setuptools"]["packages"]["find"]["include"]}
    on_disk = {d for d in os.listdir(ROOT) if d != "tests" and os.path.isfile(os.path.join(ROOT, d, "__init__.py"))}
    assert shipped == on_disk, "pyproject's packages.find and the packages in the tree disagree"
    assert set(mypy["files"]) >= shipped, f"make lint leaves out {sorted(shipped - set(mypy['files']))}"


def test_only_libraries_without_stubs_skip_import_checking() -> None:
    mypy = _pyproject()["tool"]["mypy"]
    assert "ignore_missing_imports" not in mypy, "no blanket ignore: one override per library without stubs"
    for o in mypy.get("overrides", []):
        if o.get("ignore_missing_imports"):
            modules = [o["module"]] if isinstance(o["module"], str) else o["module"]
            # the libraries that ship neither stubs nor py.typed: hdrhistogram, sortedcontainers
            assert all(m.split(".")[0] in ("hdrh", "sortedcontainers") for m in modules), modules


def test_mypy_is_pinned_and_make_lint_runs_the_pinned_one() -> None:
    test_extra = _pyproject()["project"]["optional-dependencies"]["test"]
    assert any(re.fullmatch(r"mypy==[0-9.]+", r.replace(" ", "")) for r in test_extra), test_extra
    with open(os.path.join(ROOT, "Makefile")) as f:
        makefile = f.read()
    lint = re.search(r"^lint:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert lint, "no lint target in the Makefile"
    recipe = lint.group(1)
    assert "-m mypy" in recipe and "pip install" not in recipe, recipe
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        assert re.search(r"^make lint\b", f.read(), re.M), ".ci/run does not run make lint"
