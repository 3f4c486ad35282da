"""Method registry: names the CLI and configs use -> `ExitMethod` subclasses.

Methods register themselves on import (`@register`); importing `free_bench.methods` imports them all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from free_bench.errors import check_choice

if TYPE_CHECKING:
    from free_bench.backbone.base import Backbone
    from free_bench.methods.base import ExitMethod

ORDER = ("free", "deebert", "pabee", "distill", "static", "oracle", "mue")
_METHODS: dict[str, type[ExitMethod]] = {}


def register(cls: type[ExitMethod]) -> type[ExitMethod]:
    """Class decorator: make `cls` available under `cls.name`."""
    if cls.name not in ORDER:
        raise ValueError(f"method name {cls.name!r} missing from registry.ORDER")
    _METHODS[cls.name] = cls
    return cls


def available() -> list[str]:
    """Registered method names, in the paper's order (FREE, baselines, reference points)."""
    return [name for name in ORDER if name in _METHODS]


def get_method(name: str) -> type[ExitMethod]:
    """The class registered as `name`; FreeBenchError listing the valid names otherwise."""
    check_choice("exit method", name, available())
    return _METHODS[name]


def build_method(name: str, backbone: Backbone, layers: Any, **options: Any) -> ExitMethod:
    """`get_method(name)(backbone, layers, **options)`."""
    return get_method(name)(backbone, layers, **options)
