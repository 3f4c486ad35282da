"""Streamed teacher forcing: with no memory budget at most one batch of all-layer hidden states is
alive, and training on streamed batches gives the weights training on kept batches gives."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from free_bench.config import get_profile
from free_bench.data.scenes_dataset import load_scenes
from free_bench.methods.registry import get_method
from free_bench.models.embedded import build_model
from free_bench.models.hf import backbone_from_model
from free_bench.models.tokenizer import build_processor
from free_bench.training import ExitTrainConfig, teacher_forced_batches, train_exits
from free_bench.training import batches as batches_mod


@pytest.fixture(scope="module")
def smoke():
    prof = get_profile("smoke")
    proc = build_processor(prof.scenes.image_size, prof.backbone.num_query_tokens)
    bb = backbone_from_model(build_model("smoke", "opt", seed=0).eval(), tokenizer=proc.tokenizer,
                             processor=proc, spec="embedded:smoke")  # fmt: skip
    return bb, load_scenes("smoke", 0, progress=False)["exit_train"]


def test_streamed_batches_keep_at_most_one_alive(smoke, monkeypatch):
    bb, rows = smoke
    alive: list[weakref.ref] = []
    made = batches_mod.teacher_forced_batch

    def tracked(*args, **kw):
        batch = made(*args, **kw)
        alive.append(weakref.ref(batch.hidden))
        gc.collect()
        assert sum(r() is not None for r in alive) <= 2  # the one being made, and at most one before it
        return batch

    monkeypatch.setattr(batches_mod, "teacher_forced_batch", tracked)
    seq = teacher_forced_batches(bb, rows, "semi", 8, max_rows=32, tasks=("vqa",), progress=False, keep_mib=0)
    assert seq.streamed and len(seq) == 4
    for i in [0, 1, 2, 3, 1, 0]:
        assert seq[i].hidden.shape[1] == 8
    gc.collect()
    assert sum(r() is not None for r in alive) <= 1
    assert seq.passes == 6  # every visit of another batch recomputes it


def test_a_budget_keeps_what_fits(smoke):
    bb, rows = smoke
    seq = teacher_forced_batches(bb, rows, "semi", 8, max_rows=32, tasks=("vqa",), progress=False, keep_mib=None)
    assert not seq.streamed and seq.passes == 4
    one = seq.batch_mib
    part = teacher_forced_batches(bb, rows, "semi", 8, max_rows=32, tasks=("vqa",), progress=False,
                                  keep_mib=2.5 * one)  # fmt: skip
    assert part.streamed  # the whole split would not fit: nothing is kept up front


def test_streamed_and_kept_training_give_the_same_exits(smoke, tmp_path):
    bb, rows = smoke
    cfg = ExitTrainConfig(steps=6, batch_size=8, checkpoint_every=100)
    weights = []
    for keep, folder in ((None, "kept"), (0, "streamed")):
        torch.manual_seed(0)
        method = get_method("deebert")(bb, (2, 4))
        seq = teacher_forced_batches(bb, rows, "semi", 8, max_rows=24, tasks=("vqa",), progress=False, keep_mib=keep)
        train_exits(method, seq, cfg, "semi", tmp_path / folder, seed=0, progress=False)
        weights.append({k: v.clone() for k, v in method.state_dict().items()})
    assert weights[0].keys() == weights[1].keys()
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]), k
