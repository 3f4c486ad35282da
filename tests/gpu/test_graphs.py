"""Captured CUDA graphs replay the graphs engine's fixed-shape decode exactly (tiny OPT, fp32, no TF32):
same tokens and exits as the uncaptured path, the eager engine and HF `generate()`."""

from __future__ import annotations

import pytest
import torch

from free_bench.engine import generate
from free_bench.engine.generate import GRAPHS_ENGINE, special_tokens
from free_bench.engine.graphs.decoder import GraphDecoder
from free_bench.methods import get_method
from free_bench.models import Backbone, from_hf, runner
from free_bench.models.tiny import build_tiny_blip2, tiny_inputs

N_NEW = 8
NEVER = {"max_prob": 1.0, "entropy": 0.0, "patience": 9, "cosine": 1.0}


@pytest.fixture(scope="module")
def bb() -> Backbone:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    backbone = from_hf(build_tiny_blip2("opt", seed=2, device="cuda"))
    backbone.language_model.generation_config.eos_token_id = backbone.lm_config.eos_token_id = None
    return backbone


def _inputs(bb: Backbone, seed: int = 5, text_len: int = 4) -> dict:
    return {k: v.cuda() for k, v in tiny_inputs(bb.model, 1, seed=seed, text_len=text_len).items()}


def _method(bb: Backbone, name: str):
    m = get_method(name)(bb, "all")
    gen = torch.Generator(device="cuda").manual_seed(7)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen, device="cuda"))
    return m.eval()


def _uncaptured(bb, m, policy, inputs, t) -> dict:
    eos, _ = special_tokens(bb)
    static = int(t) if m is not None and m.rule == "static" else None
    decoder = GraphDecoder(bb, m, kv_policy=policy, capture=False, static_layer=static, **GRAPHS_ENGINE)
    return decoder.decode(inputs["pixel_values"], inputs["input_ids"], inputs.get("attention_mask"),
                          max_new_tokens=N_NEW, threshold=t, eos_ids=eos)  # fmt: skip


@pytest.mark.parametrize("policy", ["propagate", "full"])
def test_captured_replays_equal_the_uncaptured_decode_and_the_eager_engine(bb: Backbone, policy: str) -> None:
    inputs = _inputs(bb)
    hf = bb.model.generate(**inputs, do_sample=False, max_new_tokens=N_NEW)[:, inputs["input_ids"].shape[1] :]
    assert torch.equal(generate(bb, **inputs, max_new_tokens=N_NEW, engine="graphs").tokens, hf)
    for name in ("free", "deebert", "pabee", "distill", "static", "mue"):
        m = _method(bb, name)
        if m.rule == "static":
            thresholds = [float(k) for k in m.layers if k < bb.num_layers]
        elif m.rule == "patience":
            thresholds = [1.0, 2.0]
        else:
            seen = generate(bb, m, **inputs, max_new_tokens=N_NEW, threshold=NEVER[m.rule]).confidences
            thresholds = torch.quantile(
                seen.flatten().float(), torch.tensor([0.25, 0.5, 0.75], device="cuda")
            ).tolist()
        for t in thresholds:
            captured = generate(
                bb, m, **inputs, max_new_tokens=N_NEW, threshold=t, kv_policy=policy, engine="graphs"
            )
            plain = _uncaptured(bb, m, policy, inputs, t)
            eager = generate(bb, m, **inputs, max_new_tokens=N_NEW, threshold=t, kv_policy=policy)
            assert torch.equal(captured.tokens, plain["tokens"]), (name, t)
            assert torch.equal(captured.exit_layers, plain["exit_layers"]), (name, t)
            assert torch.equal(captured.tokens, eager.tokens), (name, t)
            assert torch.equal(captured.exit_layers, eager.exit_layers), (name, t)
            assert captured.cost_layers == pytest.approx(eager.cost_layers), (name, t)


def test_one_captured_decoder_serves_prompts_of_any_length(bb: Backbone) -> None:
    m = _method(bb, "free")
    a, b = _inputs(bb, seed=1, text_len=9), _inputs(bb, seed=3, text_len=3)
    first = generate(bb, m, **a, max_new_tokens=N_NEW, threshold=0.5, engine="graphs")
    generate(bb, m, **b, max_new_tokens=N_NEW, threshold=0.5, engine="graphs")
    again = generate(bb, m, **a, max_new_tokens=N_NEW, threshold=0.5, engine="graphs")
    assert torch.equal(first.tokens, again.tokens) and torch.equal(first.exit_layers, again.exit_layers)
    assert len(m.__dict__["_graph_decoders"]) == 1  # captured once


def test_captured_prefix_follows_the_image(bb: Backbone) -> None:
    """The image side of the prefix is replayed from a buffer: each image gets its own features, equal
    to the uncaptured runner's, and the prompt pass is captured per prompt length."""
    decoder = GraphDecoder(bb, None, kv_policy="full")
    for seed in (1, 2, 1):
        inputs = _inputs(bb, seed=seed, text_len=3 + seed)
        got = decoder.image_features(inputs["pixel_values"]).clone()
        want = runner.image_features(bb, inputs["pixel_values"])
        assert torch.equal(got, want), seed
        eos, _ = special_tokens(bb)
        out = decoder.decode(inputs["pixel_values"], inputs["input_ids"], inputs.get("attention_mask"),
                             max_new_tokens=N_NEW, threshold=None, eos_ids=eos)  # fmt: skip
        assert torch.equal(out["tokens"], generate(bb, **inputs, max_new_tokens=N_NEW).tokens), seed
    assert len(decoder.images) == 1 and all(p.captured for p in decoder.prompts.values())
    assert len(decoder.prompts) == 2


@pytest.mark.parametrize("compiled", [False, True, "layers"])
@pytest.mark.parametrize("name", ["free", "deebert", "static"])
def test_fused_layers_captured_decode_as_the_eager_engine(bb: Backbone, name: str, compiled) -> None:
    """`fuse=True` (q/k/v in one product, runner_fused): captured replays equal its uncaptured decode,
    and the tokens and exits of the eager engine (fp32, no TF32); `compiled`: each segment through
    inductor first, as `engine="graphs"` runs it; "layers": one compiled layer function for every
    layer instead (`compile_layers`)."""
    inputs, m = _inputs(bb), _method(bb, name)
    t = float(m.layers[0]) if m.rule == "static" else 0.5
    static = int(t) if m.rule == "static" else None
    eos, _ = special_tokens(bb)
    outs = []
    for capture in (True, False):
        options = {"compile_layers": True} if compiled == "layers" else {"compile_segments": compiled}
        decoder = GraphDecoder(bb, m, kv_policy="propagate", capture=capture, static_layer=static, fuse=True,
                               **options)  # fmt: skip
        outs.append(decoder.decode(inputs["pixel_values"], inputs["input_ids"], inputs.get("attention_mask"),
                                   max_new_tokens=N_NEW, threshold=t, eos_ids=eos))  # fmt: skip
    eager = generate(bb, m, **inputs, max_new_tokens=N_NEW, threshold=t)
    for out in outs:
        assert torch.equal(out["tokens"], eager.tokens) and torch.equal(out["exit_layers"], eager.exit_layers)


def test_thresholds_evaluate_alike_on_the_host(bb: Backbone) -> None:
    """`record` hands its scores to the host (`ExitScores.cpu`: a threshold is then a few CPU ops, no GPU
    sync); each threshold's choices and costs equal those computed from scores left on the GPU."""
    from free_bench.engine.cost import cost_model
    from free_bench.engine.simulate import choose
    from free_bench.evaluation import sweep_eval as S

    m = _method(bb, "deebert")
    scores = torch.rand(len(m.layers), 40, device="cuda")
    assert scores.is_cuda
    rec = S.Recorded(S.ExitScores(tuple(m.layers), (scores * 100).long(), scores, 1 - scores, None,
                                  (scores[0] * 100).long(), scores[0], bb.num_layers),
                     torch.arange(40, device="cuda") // 4, torch.arange(40, device="cuda") % 4)  # fmt: skip
    host = S.Recorded(rec.scores.cpu(), rec.row.cpu(), rec.step.cpu())
    assert not host.scores.tokens.is_cuda and not host.scores.max_prob.is_cuda
    cost = cost_model(bb, m)
    for t in (0.2, 0.5, 0.9):
        a = choose(m, rec.scores, t)
        b = choose(m, host.scores, t)
        assert torch.equal(a.tokens.cpu(), b.tokens) and torch.equal(a.exit_layers.cpu(), b.exit_layers)
        on_gpu = float(S.step_costs(cost, m, rec, a.index, "propagate").sum())
        assert on_gpu == pytest.approx(float(S.step_costs(cost, m, host, b.index, "propagate").sum()))


def _thresholds(bb: Backbone, m, inputs: dict) -> list[float]:
    if m.rule == "static":
        return [float(m.layers[0])]
    if m.rule == "patience":
        return [1.0, 2.0]
    seen = generate(bb, m, **inputs, max_new_tokens=N_NEW, threshold=NEVER[m.rule]).confidences
    return torch.quantile(seen[seen == seen].float(), torch.tensor([0.3, 0.6], device="cuda")).tolist()


@pytest.mark.parametrize("compact", [True, False])
def test_captured_buckets_decode_a_batch_as_the_eager_engine(compact: bool) -> None:
    """Five left-padded rows (bucket 8; EOS set to a token some rows emit, so rows finish at different
    steps and, with `compact`, move into buckets 4, 2, 1): each row's tokens and exits are the eager
    engine's batch, and its per-row and batch costs too."""
    torch.backends.cuda.matmul.allow_tf32 = False
    backbone = from_hf(build_tiny_blip2("opt", seed=2, device="cuda"))
    inputs = {k: v.cuda() for k, v in tiny_inputs(backbone.model, 5, padded=True, seed=11).items()}
    first = generate(backbone, **inputs, max_new_tokens=N_NEW).tokens
    backbone.language_model.generation_config.eos_token_id = int(torch.bincount(first[:, :3].flatten()).argmax())
    for name in ("free", "deebert", "pabee", "static"):
        m = _method(backbone, name)
        for t in _thresholds(backbone, m, inputs):
            got = generate(backbone, m, **inputs, max_new_tokens=N_NEW, threshold=t, engine="graphs", compact=compact)
            want = generate(backbone, m, **inputs, max_new_tokens=N_NEW, threshold=t)
            assert torch.equal(got.tokens, want.tokens), (name, t)
            assert torch.equal(got.exit_layers, want.exit_layers), (name, t)
            assert got.cost_layers == pytest.approx(want.cost_layers), (name, t)
            assert got.batch_cost_layers == pytest.approx(want.batch_cost_layers), (name, t)
    buckets = {key[-1] for key in m.__dict__["_graph_decoders"]}  # the static method's decoders
    assert (len(buckets) > 1 and 8 in buckets) if compact else buckets == {8}


def test_captured_speculative_is_the_full_models(bb: Backbone) -> None:
    inputs = _inputs(bb)
    want = bb.model.generate(**inputs, do_sample=False, max_new_tokens=N_NEW)[:, inputs["input_ids"].shape[1] :]
    for name in ("free", "deebert", "pabee", "static"):
        m = _method(bb, name)
        for t in _thresholds(bb, m, inputs):
            for k in (1, 4):
                got = generate(bb, m, **inputs, max_new_tokens=N_NEW, threshold=t, engine="graphs",
                               decode="speculative", draft_len=k)  # fmt: skip
                eager = generate(bb, m, **inputs, max_new_tokens=N_NEW, threshold=t, decode="speculative",
                                 draft_len=k)  # fmt: skip
                assert torch.equal(got.tokens, want), (name, t, k)
                assert got.speculative["verify_passes"] >= 1, (name, t, k)
                assert got.speculative == eager.speculative, (name, t, k)


@pytest.mark.parametrize("options", [{"compile_segments": True}, {"compile_layers": True}])
def test_tuned_matrix_vector_products_decode_as_the_eager_engine(bb: Backbone, options: dict) -> None:
    """`tune` (coordinate-descent tuning: one-row products as tuned reductions) changes how inductor
    computes the layers, not what: captured, the tokens and exits of the eager engine (fp32)."""
    inputs = _inputs(bb)
    eos, _ = special_tokens(bb)
    for name in ("free", "deebert"):
        m = _method(bb, name)
        decoder = GraphDecoder(bb, m, kv_policy="propagate", fuse=True, tune=True, **options)
        out = decoder.decode(inputs["pixel_values"], inputs["input_ids"], inputs.get("attention_mask"),
                             max_new_tokens=N_NEW, threshold=0.5, eos_ids=eos)  # fmt: skip
        eager = generate(bb, m, **inputs, max_new_tokens=N_NEW, threshold=0.5)
        assert torch.equal(out["tokens"], eager.tokens) and torch.equal(out["exit_layers"], eager.exit_layers)
