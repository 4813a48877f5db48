"""The `hearth` command line (the console script `hearth = hearth.cli:main`); see hearth/cli/main.py."""

from hearth.cli.main import app, main

__all__ = ["app", "main"]
