"""The `free-bench` command line: `app` holds the parser and `main`; one module per subcommand."""

from free_bench.cli.app import main

__all__ = ["main"]
