"""free-bench: early-exit vision-language models, measured on the clock."""

from typing import Any

from free_bench.core.errors import FreeBenchError

__version__ = "0.1.0"

__all__ = ["FreeBenchError", "__version__", "load_backbone", "load_exits"]


def __getattr__(name: str) -> Any:
    # Lazy: `import free_bench` (e.g. from analyses/) must not import torch.
    if name == "load_backbone":
        from free_bench.models import load_backbone

        return load_backbone
    if name == "load_exits":
        from free_bench.methods import load_exits

        return load_exits
    raise AttributeError(f"module 'free_bench' has no attribute {name!r}")
