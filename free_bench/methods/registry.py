"""Method registry: names the CLI and configs use -> `MethodSpec`s (each one method file's spec).

Method files register their spec on import; importing `free_bench.methods` imports them all. The
order is the paper's, `free_bench.config.METHODS`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from free_bench.config import METHODS as ORDER
from free_bench.core.errors import check_choice
from free_bench.methods.spec import MethodSpec

if TYPE_CHECKING:
    from free_bench.methods.protocol import ExitMethod
    from free_bench.models.base import Backbone

_METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Make `spec` available under `spec.name` (which must be one of config.METHODS)."""
    if spec.name not in ORDER:
        raise ValueError(f"method name {spec.name!r} missing from free_bench.config.METHODS")
    _METHODS[spec.name] = spec
    return spec


def available() -> list[str]:
    """Registered method names, in the paper's order (FREE, baselines, reference points)."""
    return [name for name in ORDER if name in _METHODS]


def get_method(name: str) -> MethodSpec:
    """The spec registered as `name` (call it to build); FreeBenchError listing the valid names otherwise."""
    check_choice("exit method", name, available())
    return _METHODS[name]


def build_method(name: str, backbone: Backbone, layers: Any, **options: Any) -> ExitMethod:
    """`get_method(name)(backbone, layers, **options)`."""
    return get_method(name)(backbone, layers, **options)
