"""Subcommands of the CLI, one module each; importing this package registers them."""

from free_bench.commands import (
    data,  # noqa: F401
    eval_exits,  # noqa: F401
    pretrain,  # noqa: F401
    regress,  # noqa: F401
    reproduce,  # noqa: F401
    score,  # noqa: F401
    sweep,  # noqa: F401
    train_exits,  # noqa: F401
)
