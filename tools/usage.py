"""The one error every subcommand raises for bad input, below the `matchwire` entry point.

tools/cli.py loads the subcommand modules by name (importlib, so `matchwire --help` stays fast) and
turns a UsageError into one line on stderr and exit 2. The subcommands import UsageError from here,
never from tools.cli: an import back would be a circle that lint-imports cannot see (it sees no
edge from tools.cli to a module it loads by name). The contract "cli-loads-subcommands" of
[tool.importlinter] keeps it so.
"""
from __future__ import annotations


class UsageError(ValueError):
    """An input error a tool reports in one line (its message says what and where)."""
