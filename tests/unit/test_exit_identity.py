"""Exits remember which backbone they were trained on, an embedded backbone's pretraining seed included:
exits trained on `--backbone-seed 1` load (and so sweep and evaluate) onto that backbone again."""

from __future__ import annotations

import dataclasses
import json

import pytest

from free_bench.core.errors import FreeBenchError
from free_bench.methods import build_method, load_exits
from free_bench.methods.storage import save_method


def test_the_pretraining_seed_is_part_of_the_identity(tiny_opt_backbone, tmp_path, monkeypatch) -> None:
    from free_bench.models import load as L

    seeded = dataclasses.replace(tiny_opt_backbone, spec="embedded:smoke", seed=1)
    save_method(build_method("deebert", seeded, [2, 4]), tmp_path / "exits")
    saved = json.loads((tmp_path / "exits" / "config.json").read_text())["backbone"]
    assert saved["spec"] == "embedded:smoke" and saved["seed"] == 1
    asked = []
    monkeypatch.setattr(L, "load_backbone", lambda spec, **kw: asked.append((spec, kw)) or seeded)
    method = load_exits(tmp_path / "exits")
    assert asked == [("embedded:smoke", {"seed": 1})] and method.layers == (2, 4)


def test_a_mismatch_names_both_seeds(tiny_opt_backbone, tmp_path) -> None:
    from free_bench.models import from_hf
    from free_bench.models.tiny import build_tiny_blip2

    one = dataclasses.replace(tiny_opt_backbone, spec="embedded:smoke", seed=1)
    save_method(build_method("deebert", one, [2, 4]), tmp_path / "exits")
    other = dataclasses.replace(from_hf(build_tiny_blip2("opt", seed=7)), spec="embedded:smoke", seed=0)
    with pytest.raises(FreeBenchError, match=r"'embedded:smoke' \(seed 1\).*'embedded:smoke' \(seed 0\)"):
        load_exits(tmp_path / "exits", other)
