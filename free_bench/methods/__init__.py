"""Early-exit methods: exit modules, their training losses and exit rules (no training loop here).

`available()` lists the method names; `get_method(name)(backbone, placement, **options)` (or
`build_method`) builds one, an `Exits` satisfying the `ExitMethod` protocol; `save_method(method,
folder)` writes it and `load_exits(folder, backbone)` restores it.

Structure: one file per method (free, deebert, pabee, distill, static, oracle, mue) defines its
`MethodSpec` (name, rule, defaults, flags, builder, loss functions) and registers it; `exits.Exits`
is the one module class, composed of the parts in `heads` (LightHeads, Generators, Discriminators);
`losses` and `rules` hold the shared tensor functions; `storage` saves and loads.
"""

from free_bench.methods import deebert, distill, free, mue, oracle, pabee, static  # noqa: F401 (register)
from free_bench.methods.exits import Exits
from free_bench.methods.options import parse_placement
from free_bench.methods.protocol import ExitMethod, is_exit_method
from free_bench.methods.registry import available, build_method, get_method
from free_bench.methods.spec import MethodSpec
from free_bench.methods.storage import load_exits, save_method

ExitSet = ExitMethod  # one method object holds all of its exits; no separate container needed

__all__ = [
    "ExitMethod",
    "ExitSet",
    "Exits",
    "MethodSpec",
    "available",
    "build_method",
    "get_method",
    "is_exit_method",
    "load_exits",
    "parse_placement",
    "save_method",
]
