"""Live sweeps warm every input shape before timing it: one-off work per shape (the graphs engine's
prompt-pass capture per prompt length) must not land in a single timed decode."""

from __future__ import annotations

import pytest
import torch

from free_bench.config import get_profile
from free_bench.data.scenes_dataset import load_scenes
from free_bench.evaluation import sweep_eval as S
from free_bench.methods.registry import get_method
from free_bench.models.embedded import build_model
from free_bench.models.hf import backbone_from_model
from free_bench.models.tokenizer import build_processor


@pytest.mark.parametrize(
    "shapes, warmup, want",
    [
        (["a", "a", "b", "a", "c", "b"], 1, [0, 2, 4]),  # the first, then the first of each new shape
        (["a", "b", "a", "c"], 3, [0, 1, 2, 3]),  # the first three, then c
        (["a", "b"], 5, [0, 1]),  # more warm-up than batches
        (["a", "b", "c"], 0, []),  # no warm-up asked: none
    ],
)
def test_warm_batches(shapes, warmup, want):
    assert S.warm_batches(shapes, warmup) == want


def test_a_shape_is_warmed_once_per_process():
    seen: set = set()
    assert S.warm_batches(["a", "b", "a", "c"], 1, seen) == [0, 1, 3]
    assert seen == {"a", "b", "c"}
    # the next threshold point: only its first batch (allocator, lazy init), and the shape new to it
    assert S.warm_batches(["c", "a", "d", "b"], 1, seen) == [0, 2]
    assert seen == {"a", "b", "c", "d"}


class _Method:
    def __init__(self, rule: str) -> None:
        self.rule = rule


def test_warmed_shapes_follow_the_decoders():
    bb, free, static = _Method("none"), _Method("max_prob"), _Method("static")
    eager = S.warmed_shapes(bb, free, "eager", "propagate", 0.5)
    assert S.warmed_shapes(bb, static, "eager", "full", 8) is eager  # kernels and allocator: the process's
    graphs = S.warmed_shapes(bb, free, "graphs", "propagate", 0.5)
    assert graphs is not eager and S.warmed_shapes(bb, free, "graphs", "propagate", 0.9) is graphs
    assert S.warmed_shapes(bb, free, "graphs", "full", 0.5) is not graphs  # another decoder
    assert S.warmed_shapes(bb, static, "graphs", "full", 8) is not S.warmed_shapes(
        bb, static, "graphs", "full", 12
    )
    # one method kept across a stage's sweeps: its speculative spans and compacted buckets are warmed anew
    spec = S.warmed_shapes(bb, free, "graphs", "propagate", 0.5, decode="speculative", draft_len=4)
    assert spec is not graphs and spec is not S.warmed_shapes(bb, free, "graphs", "propagate", 0.5,
                                                               decode="speculative", draft_len=2)  # fmt: skip
    assert S.warmed_shapes(bb, free, "graphs", "propagate", 0.5, compact=False) is not graphs
    assert S.warmed_shapes(bb, free, "graphs", "propagate", 0.5, draft_len=3) is graphs  # greedy: no drafts


def _smoke(tmp_path, n: int):
    """The smoke profile's randomly initialised backbone and the first `n` test rows of its scenes."""
    torch.manual_seed(0)
    prof = get_profile("smoke")
    proc = build_processor(prof.scenes.image_size, prof.backbone.num_query_tokens)
    bb = backbone_from_model(build_model("smoke", "opt", seed=0).eval(), tokenizer=proc.tokenizer,
                             processor=proc, spec="embedded:smoke")  # fmt: skip
    return bb, load_scenes("smoke", 0, root=tmp_path, progress=False)["test"].select(range(n))


def test_every_prompt_shape_runs_untimed_before_it_is_timed(tmp_path, monkeypatch):
    bb, rows = _smoke(tmp_path, 24)
    method = get_method("deebert")(bb, (2,)).eval()
    timed = {"now": False}
    seen: list[tuple[tuple[int, ...], bool]] = []  # (prompt shape, inside a timed call) per decode
    real_time, real_generate = S.time_region, S.generate

    def time_region(fn, **kw):
        timed["now"] = True
        try:
            return real_time(fn, **kw)
        finally:
            timed["now"] = False

    def generate(backbone, exits=None, **kw):
        seen.append((tuple(kw["input_ids"].shape), timed["now"]))
        return real_generate(backbone, exits, **kw)

    monkeypatch.setattr(S, "time_region", time_region)
    monkeypatch.setattr(S, "generate", generate)
    S.live_points(bb, method, rows, "vqa", 1, [0.5], "propagate", warmup=1, repeats=1)
    shapes = {shape for shape, _ in seen}
    assert len(shapes) > 2  # the rows' questions differ in length, or this test shows nothing
    for shape in shapes:
        first = next(t for s, t in seen if s == shape)
        assert not first, f"prompt shape {shape} first decoded inside a timed call"
    # the next threshold point on the same backbone: its first batch is warmed, the shapes are not again
    seen.clear()
    S.live_points(bb, method, rows, "vqa", 1, [0.6], "propagate", warmup=1, repeats=1)
    untimed = [shape for shape, t in seen if not t]
    assert len(untimed) == 2  # the first batch only: its full-model and early-exit decodes
    assert len(seen) == len(untimed) + 2 * len(rows)


def test_thresholds_decoded_together_share_the_references_and_decode_as_alone(tmp_path, monkeypatch):
    """A sweep's thresholds are decoded batch by batch with the full model timed once per batch for
    all of them: the same outputs as one threshold at a time, a third of the full-model decodes."""
    bb, rows = _smoke(tmp_path, 6)
    method = get_method("deebert")(bb, (1, 2)).eval()
    calls = {"full": 0, "early": 0}
    real_generate = S.generate

    def generate(backbone, exits=None, **kw):
        calls["early" if exits is not None else "full"] += 1
        return real_generate(backbone, exits, **kw)

    monkeypatch.setattr(S, "generate", generate)
    thresholds = [0.1, 3.0, 100.0]  # entropy: no exit, some, every token at the first exit
    points, full, times = S.live_points(bb, method, rows, "vqa", 2, thresholds, "propagate", warmup=0,
                                        repeats=1, hf=False)  # fmt: skip
    assert calls == {"full": 3, "early": 9}  # 3 batches: one full decode each, one per threshold
    assert len(full.texts) == len(rows) and full.rows["engine_ms"] == points[3.0].rows["engine_ms"]
    for t in thresholds:
        alone, alone_full, _ = S.live_points(bb, method, rows, "vqa", 2, [t], "propagate", warmup=0, repeats=1,
                                             hf=False)  # fmt: skip
        assert points[t].texts == alone[t].texts and points[t].exit_layers == alone[t].exit_layers
        assert points[t].spent == alone[t].spent and alone_full.texts == full.texts
    assert len({tuple(points[t].exit_layers) for t in thresholds}) > 1  # the thresholds differ, or this shows nothing
    assert times["engine_ms"] > 0 and times["hf_ms"] != times["hf_ms"]  # hf off: NaN
