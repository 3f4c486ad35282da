"""The package's shape: no import cycles, and the CLI parses without torch (layers: `nox -s lint`)."""

from __future__ import annotations

import subprocess
import sys

import grimp
import pytest


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("free_bench", "analyses")


def test_no_import_cycles(graph: grimp.ImportGraph) -> None:
    """A module never imports, directly or through others, a module that imports it (lazy imports too:
    a cycle hidden in a function is still a cycle)."""
    cycles = set()
    for importer in graph.modules:
        for imported in graph.find_modules_directly_imported_by(importer):
            if imported == importer or importer.startswith(imported + "."):
                continue  # a module importing its own package: not a loop between two modules
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back is not None:
                cycles.add(" -> ".join((importer, *back)))
    assert not cycles, "import cycles:\n" + "\n".join(sorted(cycles))


def test_the_cli_parses_without_torch() -> None:
    """`--help` and flag checking import neither torch nor datasets: that is what keeps them fast."""
    code = (
        "import sys\n"
        "from free_bench.cli.app import build_parser, load_commands\n"
        "load_commands()\n"
        "build_parser()\n"
        "heavy = sorted(m for m in ('torch', 'datasets', 'transformers', 'pandas') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "", f"parsing the CLI imported {res.stdout.strip()}"
