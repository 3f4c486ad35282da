"""The slowdown attack on tiny random BLIP-2s: its objective is the engine's exit scores, the perturbation
stays in its budget, it lowers the rule's objective, and a seed fixes it and its tables."""

from __future__ import annotations

import json
import math
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from free_bench.config import ReproduceConfig
from free_bench.core.errors import FreeBenchError
from free_bench.core.records import Manifest
from free_bench.data.inputs import pixel_values, prompt_batch
from free_bench.engine.simulate import exit_scores
from free_bench.evaluation import sweep_eval as S
from free_bench.evaluation.attack import (
    TIMED,
    AttackSettings,
    attack_pixels,
    attack_run,
    clean_answers,
    default_threshold,
    exit_objective,
    speedup_taken,
)
from free_bench.methods import build_method, get_method, save_method
from free_bench.methods.rules import thresholds_for
from free_bench.models import load_backbone
from free_bench.models.random_checkpoint import save_random_blip2
from free_bench.training.batches import teacher_force

pytestmark = pytest.mark.usefixtures("single_thread")
QUESTIONS = ["what color is it?", "how many are there?", "is it red?", "what shape?", "where is it?", "is it big?"]


def _images(bb, n: int) -> list[Image.Image]:
    size = bb.processor.image_processor.size
    side = size.get("height", size.get("shortest_edge", 32))
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)) for _ in range(n)]


def _seeing_checkpoint(folder: Path, size: str) -> Path:
    """A random BLIP-2 whose answers depend on its image: HF initialises the vision tower at std 1e-10,
    under which every image gives the LM the same features (and an attack no gradient)."""
    from transformers import Blip2ForConditionalGeneration

    save_random_blip2(folder, size)
    model = Blip2ForConditionalGeneration.from_pretrained(folder)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in (w for w in model.vision_model.parameters() if w.dim() > 1):
            weight.copy_(0.2 * torch.randn(weight.shape, generator=gen))
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def backbones(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("attack-bb")
    return {size: load_backbone(str(_seeing_checkpoint(root / size, size)), device="cpu")
            for size in ("tiny-opt", "tiny-t5")}  # fmt: skip


@pytest.fixture(scope="module")
def run_inputs(tmp_path_factory, backbones) -> dict:
    """A `free-bench data`-style folder of six VQA rows and saved (untrained) exits beside it."""
    bb, root = backbones["tiny-opt"], tmp_path_factory.mktemp("attack-run")
    rows = datasets.Dataset.from_dict({"question_id": list(range(6)), "question": QUESTIONS,
                                       "image": _images(bb, 6), "answers": [["red"] * 10] * 6})  # fmt: skip
    datasets.DatasetDict({"test": rows}).save_to_disk(str(root / "data"))
    (root / "data" / "manifest.json").write_text(json.dumps({"command": "data", "dataset_hash": "six-rows"}))
    exits = {}
    for name in ("free", "deebert", "static"):
        record = Manifest("train-exits", {"regime": "semi", "data": {"folder": str(root / "data")}}, seeds=[0])
        exits[name] = save_method(build_method(name, bb, [1, 2, 3]), root / name, record)
    return {"root": root, "exits": exits, "rows": rows}


def _batch(bb, n: int = 3):
    pv = pixel_values(bb, _images(bb, n))
    prompts = prompt_batch(bb, S.prompts_for(bb, datasets.Dataset.from_dict({"question": QUESTIONS[:n]}), "vqa"))
    return pv, prompts, clean_answers(bb, pv, prompts)


@pytest.mark.parametrize("size", ["tiny-opt", "tiny-t5"])
@pytest.mark.parametrize(("name", "field", "sign"), [("free", "max_prob", 1), ("deebert", "entropy", -1),
                                                     ("mue", "similarity", 1)])  # fmt: skip
def test_the_objective_is_the_engines_exit_score(backbones, size, name, field, sign) -> None:
    """The grad-enabled pass scores each row as the engine's teacher-forced `exit_scores` do."""
    bb = backbones[size]
    method = build_method(name, bb, [1, 2, bb.num_layers]).eval()
    pv, prompts, answers = _batch(bb)
    with torch.no_grad():
        ours = exit_objective(method, pv, prompts, answers)  # (B,)
    tf = teacher_force(bb, pv, prompts, answers, with_targets=False)
    pos = tf.loss_mask.nonzero()
    scores = getattr(exit_scores(method, tf.hidden, tf.mask, pos, tf.encoder), field)  # (E, N), E = 2 consulted
    assert scores.shape[0] == 2
    per_row = torch.stack([scores[:, pos[:, 0] == r].mean() for r in range(len(answers))])
    torch.testing.assert_close(ours, sign * per_row, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["free", "deebert"])
def test_the_attack_stays_in_budget_and_lowers_the_rules_objective(backbones, name) -> None:
    bb = backbones["tiny-opt"]
    method = build_method(name, bb, [1, 2, 3]).eval()
    pv, prompts, answers = _batch(bb)
    settings = AttackSettings(eps=16 / 255, steps=4, step_size=4 / 255, seed=0)
    adv, linf = attack_pixels(method, pv, prompts, answers, settings, range(3))
    mean = torch.tensor(bb.processor.image_processor.image_mean).view(1, -1, 1, 1)
    std = torch.tensor(bb.processor.image_processor.image_std).view(1, -1, 1, 1)
    x, clean = adv * std + mean, pv * std + mean
    assert (linf <= settings.eps + 1e-6).all() and (linf > settings.eps / 2).all()
    assert (x - clean).abs().amax() <= settings.eps + 1e-5 and x.min() >= -1e-6 and x.max() <= 1 + 1e-6
    assert not torch.equal(adv, pv)
    with torch.no_grad():
        before, after = exit_objective(method, pv, prompts, answers), exit_objective(method, adv, prompts, answers)
    assert (after < before).all(), (before, after)  # max prob down (free), entropy up (deebert), every row
    assert not any(p.requires_grad for p in bb.model.parameters())


def test_a_seed_fixes_the_perturbation(backbones) -> None:
    bb = backbones["tiny-opt"]
    method = build_method("free", bb, [1, 2, 3]).eval()
    pv, prompts, answers = _batch(bb)
    runs = [attack_pixels(method, pv, prompts, answers, AttackSettings(8 / 255, 2, 2 / 255, seed), range(3))[0]
            for seed in (0, 0, 1)]  # fmt: skip
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    # each row's start is its own: rows 1..2 alone start where they did in the batch of three
    one = attack_pixels(method, pv[1:], {k: v[1:] for k, v in prompts.items()}, answers[1:],
                        AttackSettings(8 / 255, 1, 1e-9, 0), range(1, 3))[0]  # fmt: skip
    three = attack_pixels(method, pv, prompts, answers, AttackSettings(8 / 255, 1, 1e-9, 0), range(3))[0]
    torch.testing.assert_close(one, three[1:], atol=1e-6, rtol=0)


def test_attack_run_writes_its_tables_and_a_seed_repeats_them(run_inputs, tmp_path) -> None:
    exits = run_inputs["exits"]["deebert"]
    kw = dict(method="deebert", max_rows=4, eps=8 / 255, steps=2, seed=3, batch_size=2, device="cpu")
    tables = []
    for out in (tmp_path / "a", tmp_path / "b"):
        assert attack_run(exits, out, **kw) == out
        assert sorted(p.name for p in out.iterdir()) == ["attack.parquet", "attack_samples.parquet", "manifest.json"]
        tables.append((pd.read_parquet(out / "attack.parquet"), pd.read_parquet(out / "attack_samples.parquet")))
    (table, samples), (table2, samples2) = tables
    assert list(table["condition"]) == ["clean", "attacked"] and (table["n_samples"] == 4).all()
    assert set(table["timer"]) == {"cpu_wall"} and (table["measured_speedup"] > 0).all()
    assert table["threshold"].iloc[0] == 2.5 and table["step_size"].iloc[0] == pytest.approx(2.5 * (8 / 255) / 2)
    assert table.loc[0, "speedup_taken"] == 0 or math.isnan(table.loc[0, "speedup_taken"])
    want = {"sample_id", "condition", "exit_layer_mean", "cost_layers", "full_cost_layers", "latency_ms",
            "full_latency_ms", "value", "linf", "method", "regime", "eps", "seed"}  # fmt: skip
    assert want <= set(samples.columns) and len(samples) == 8
    assert (samples.loc[samples.condition == "clean", "linf"] == 0).all()
    assert (samples.loc[samples.condition == "attacked", "linf"] <= 8 / 255 + 1e-6).all()
    by = samples.groupby("condition", sort=False)
    expected = (by["full_cost_layers"].sum() / by["cost_layers"].sum()).to_numpy()
    np.testing.assert_allclose(table["expected_speedup"].to_numpy(), expected)
    keep = lambda df: df.drop(columns=[c for c in TIMED if c in df.columns])  # noqa: E731 (clock readings differ)
    pd.testing.assert_frame_equal(keep(table), keep(table2))
    pd.testing.assert_frame_equal(keep(samples), keep(samples2))
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["command"] == "attack" and manifest["config"]["seed"] == 3 and manifest["config"]["steps"] == 2
    with pytest.raises(FreeBenchError, match="not empty"):  # an existing run is not replaced without asking
        attack_run(exits, tmp_path / "a", **kw)


def test_speedup_taken_arithmetic() -> None:
    assert speedup_taken(2.0, 1.5) == 0.5 and speedup_taken(2.0, 1.0) == 1.0 and speedup_taken(3.0, 3.0) == 0
    assert speedup_taken(2.0, 2.5) == -0.5  # an "attack" that sped decoding up
    assert math.isnan(speedup_taken(1.0, 0.9)) and math.isnan(speedup_taken(0.8, 0.5))


def test_default_thresholds_are_the_middle_of_the_sweep_grids() -> None:
    assert thresholds_for("max_prob", [1], ReproduceConfig().grid)[50] == 0.5  # the grid of 101 points
    expected = {"free": 0.5, "distill": 0.5, "mue": 0.5, "deebert": 2.5}
    for name, value in expected.items():
        assert default_threshold(get_method(name).rule, (1, 2, 3)) == value
    assert [default_threshold("patience", tuple(range(1, n + 1))) for n in (1, 2, 3, 4, 5)] == [1, 1, 2, 2, 3]


def test_bad_input_is_refused_before_anything_is_written(run_inputs, tmp_path) -> None:
    exits, out = run_inputs["exits"], tmp_path / "out"
    cases = [
        (exits["static"], dict(method="static"), "static rule reads no confidence"),
        (exits["free"], dict(method="deebert"), "--method deebert but .* holds free exits"),
        (exits["free"], dict(method="free", eps=0.0), "0 < eps <= 1"),
        (exits["free"], dict(method="free", eps=1.5), "0 < eps <= 1"),
        (exits["free"], dict(method="free", steps=0), "steps >= 1"),
        (tmp_path / "nothing", dict(method="free"), "holds no trained exits"),
    ]  # fmt: skip
    for folder, kw, match in cases:
        with pytest.raises(FreeBenchError, match=match):
            attack_run(folder, out, device="cpu", **kw)
        assert not out.exists() and not Path(f"{out}.lock").exists()
