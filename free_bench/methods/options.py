"""What a method is built with: its placement (the exit layers) and its options, validated.

Shared by every method's spec, so a bad placement or option reads the same whatever the method.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Any

from free_bench.core.errors import FreeBenchError, check_choice
from free_bench.methods import rules

INIT_LAYERS = ("same", "next", "last")


def parse_placement(spec: str | list[int] | tuple[int, ...], num_layers: int) -> tuple[int, ...]:
    """Exit layers (1-based, ascending) from [4, 8], "4,8", "every:4" (4, 8, ... <= L) or "all".

    The last layer is not added implicitly: "every:3" on 8 layers is (3, 6).
    """
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text == "all":
            return tuple(range(1, num_layers + 1))
        if text.startswith("every:"):
            step = text.split(":", 1)[1].strip()
            if not step.lstrip("-").isdigit() or int(step) < 1:
                raise FreeBenchError(f"placement {spec!r}: 'every:k' needs an integer k >= 1, got {step!r}")
            values: list[Any] = list(range(int(step), num_layers + 1, int(step)))
            if not values:
                raise FreeBenchError(f"placement {spec!r} is empty: k={step} > {num_layers} layers")
        else:
            parts = [p.strip() for p in text.split(",") if p.strip()]
            bad = [p for p in parts if not p.lstrip("-").isdigit()]
            if bad:
                raise FreeBenchError(
                    f"placement {spec!r}: {bad[0]!r} is not a layer index; use e.g. '4,8', 'every:4' or 'all'"
                )
            values = [int(p) for p in parts]
    elif isinstance(spec, (list, tuple)):
        values = [_as_int(v) for v in spec]
    else:
        raise FreeBenchError(f"placement must be a list of layer indices or a string, got {spec!r}")
    if not values:
        raise FreeBenchError(f"placement {spec!r} is empty: give at least one exit layer in 1..{num_layers}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= num_layers:
            raise FreeBenchError(f"placement {spec!r}: layer {v!r} is outside 1..{num_layers}")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise FreeBenchError(f"placement {spec!r}: layer(s) {repeated} repeated")
    return tuple(sorted(values))


def _as_int(value: Any) -> Any:
    """Integer-like values (numpy/torch ints) as int; anything else unchanged, for the range check."""
    if isinstance(value, bool):
        return value
    try:
        return operator.index(value)
    except TypeError:
        return value


def check_option(method: str, key: str, value: Any) -> Any:
    """Validate one option value by its name's convention; returns the normalised value."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if key == "patience":
        return rules.check_patience(value)
    if key == "temperature" and not (number and value > 0):
        raise FreeBenchError(f"{method}: temperature must be a number > 0, got {value!r}")
    if key.startswith("w_") and not (number and value >= 0):
        raise FreeBenchError(f"{method}: loss weight {key} must be a number >= 0, got {value!r}")
    if key == "own_head" and not isinstance(value, bool):
        raise FreeBenchError(f"{method}: own_head must be true or false, got {value!r}")
    if key == "init_layer":
        check_choice("init_layer", value, INIT_LAYERS)
    if key == "disc_hidden" and value is not None and (not number or value != int(value) or value < 1):
        raise FreeBenchError(f"{method}: disc_hidden must be an integer >= 1, got {value!r}")
    return float(value) if key == "temperature" or key.startswith("w_") else value


def resolve_options(method: str, defaults: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """The method's defaults updated by `options` (in the defaults' order), each value checked."""
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        valid = ", ".join(sorted(defaults)) or "none"
        raise FreeBenchError(f"{method}: unknown option(s) {unknown}; valid options: {valid}")
    merged = {**defaults, **options}
    return {k: check_option(method, k, v) for k, v in merged.items()}
