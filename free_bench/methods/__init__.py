"""Early-exit methods: exit modules, their training losses and exit rules (no training loop here).

`available()` lists the method names; `get_method(name)(backbone, placement, **options)` builds one;
`load_exits(folder, backbone)` restores saved exits.
"""

from free_bench.methods import deebert, distill, free, mue, oracle, pabee, static  # noqa: F401 (register)
from free_bench.methods.base import ExitMethod, parse_placement
from free_bench.methods.registry import available, build_method, get_method
from free_bench.methods.storage import load_exits

ExitSet = ExitMethod  # one method object holds all of its exits; no separate container needed

__all__ = [
    "ExitMethod",
    "ExitSet",
    "available",
    "build_method",
    "get_method",
    "load_exits",
    "parse_placement",
]
