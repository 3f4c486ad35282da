"""Shared by the exit-method tests: their own tiny backbones (constructing a method freezes its
backbone) and a fixed training batch per backbone; helpers are in support.py."""

from __future__ import annotations

import pytest
import torch
from support import _batch

from free_bench.models import Backbone, from_hf
from free_bench.models.tiny import build_tiny_blip2


# --- fixtures: own backbones (constructing a method freezes its backbone) --------------------------
@pytest.fixture(scope="module")
def opt_bb() -> Backbone:
    return from_hf(build_tiny_blip2("opt", seed=1))


@pytest.fixture(scope="module")
def t5_bb() -> Backbone:
    return from_hf(build_tiny_blip2("t5", seed=1))


@pytest.fixture(scope="module")
def opt_batch(opt_bb: Backbone) -> dict[str, torch.Tensor]:
    return _batch(opt_bb)


@pytest.fixture(scope="module")
def t5_batch(t5_bb: Backbone) -> dict[str, torch.Tensor]:
    return _batch(t5_bb)


