"""free-bench: early-exit vision-language models, measured on the clock."""

from free_bench.errors import FreeBenchError

__version__ = "0.1.0"

__all__ = ["FreeBenchError", "__version__"]
