"""The early-exit engine's invariants on tiny random BLIP-2s (OPT and T5), every KV policy."""

from __future__ import annotations

import pytest
import torch

from free_bench.core.errors import FreeBenchError
from free_bench.engine import KV_POLICIES, generate
from free_bench.engine.exit_runtime import Check, ExitRuntime
from free_bench.engine.simulate import ExitScores, choose, exit_scores
from free_bench.methods import ExitMethod, get_method
from free_bench.models import Backbone, from_hf
from free_bench.models.runner import teacher_forced_hidden_states
from free_bench.models.tiny import build_tiny_blip2, tiny_inputs

pytestmark = pytest.mark.usefixtures("single_thread")
N_NEW = 8
METHODS = {
    "opt": ("free", "deebert", "pabee", "distill", "static", "mue"),
    "t5": ("free", "deebert", "pabee", "distill", "static", "mue"),
}
NEVER = {"max_prob": 1.0, "entropy": 0.0, "patience": 9, "cosine": 1.0}  # thresholds that cannot fire
ALWAYS = {"max_prob": 0.0, "entropy": 1e9, "cosine": -1.0}
# Distance (a fraction of the threshold) every score keeps from a mid threshold: a live score and its
# teacher-forced one differ by at most 1.1e-4 of it (any exit and position; T5 entropy, measured with
# ATEN_CPU_CAPABILITY=default, avx2 and avx512), about 10x less.
TIE_MARGIN = 1e-3


@pytest.fixture(scope="module", params=["opt", "t5"])
def bb(request: pytest.FixtureRequest) -> Backbone:
    """A backbone of its own: building methods freezes it. EOS disabled so rows run N_NEW tokens."""
    backbone = from_hf(build_tiny_blip2(request.param, seed=2))
    return backbone


def _method(bb: Backbone, name: str, layers: str = "all") -> ExitMethod:
    m = get_method(name)(bb, layers)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():  # off the init, so exits disagree with the logit lens and each other
        for p in m.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
        if m.generators is not None and bb.lm_type == "t5":
            # the tiny T5's head saturates (max prob exactly 1.0 in float32 at some positions) one block
            # deeper than the exit; a smaller residual update keeps the exits' scores clear of 1.0,
            # where "max-prob >= 1.0" (a threshold that should never fire) would fire
            for n, p in m.generators.named_parameters():
                if n.endswith((".o.weight", ".wo.weight")):
                    p.mul_(0.3)
    return m.eval()


def _inputs(bb: Backbone, batch: int = 3) -> dict:
    return tiny_inputs(bb.model, batch, padded=batch > 1, seed=5)


def _methods(bb: Backbone) -> list[str]:
    return list(METHODS[bb.lm_type])


def _simulated(m: ExitMethod, inputs: dict, out, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-force the generated tokens; the rule's choices and exit layers at each real position
    (each score clear of the threshold, or equality would be up to rounding)."""
    bb = m.backbone
    real = out.exit_layers > 0  # (B, T)
    with torch.no_grad():
        tf = teacher_forced_hidden_states(
            bb, **inputs, target_ids=out.tokens, target_attention_mask=real.long()
        )
    cols = torch.arange(tf.target_slice.start, tf.target_slice.stop)  # (T,)
    rows, t = real.nonzero(as_tuple=True)
    scores = exit_scores(m, tf.hidden_states, tf.attention_mask, torch.stack([rows, cols[t]], 1), tf.encoder)
    _assert_clear_of(m, scores, threshold)
    choice = choose(m, scores, threshold)
    return choice.tokens, choice.exit_layers


def _rule_scores(m: ExitMethod, s: ExitScores) -> torch.Tensor:
    """(E, N) the score the method's threshold is compared with."""
    return {"cosine": s.similarity, "max_prob": s.max_prob, "entropy": s.entropy}[m.rule]


def _mid_threshold(m: ExitMethod, inputs: dict) -> float:
    """A threshold that lets some tokens out early and keeps others (from the full model's scores).

    The midpoint of the widest gap between the first exit's scores in their middle half, not a
    score itself (a median is one): a score on the threshold fires or not by the CPU's rounding."""
    if m.rule == "patience":
        return 1
    if m.rule == "static":
        return 2
    full = generate(m.backbone, **inputs, max_new_tokens=N_NEW)
    with torch.no_grad():
        tf = teacher_forced_hidden_states(m.backbone, **inputs, target_ids=full.tokens)
    n = full.tokens.numel()
    pos = torch.stack(
        [
            torch.arange(n) // full.tokens.shape[1],
            torch.arange(n) % full.tokens.shape[1] + tf.target_slice.start,
        ],
        1,
    )
    first = _rule_scores(m, exit_scores(m, tf.hidden_states, tf.attention_mask, pos, tf.encoder))[0].sort().values
    mid = first[n // 4 : n - n // 4]
    i = int(((mid[1:] - mid[:-1]) / mid[1:].abs()).argmax())  # widest relative gap
    return float((mid[i] + mid[i + 1]) / 2)


def _assert_clear_of(m: ExitMethod, scores: ExitScores | torch.Tensor, threshold: float) -> None:
    """Every rule score (simulated, or live ones) keeps TIE_MARGIN from the threshold, so rounding
    cannot flip a choice."""
    if m.rule in ("patience", "static"):  # integer counts and positions: no rounding
        return
    if isinstance(scores, ExitScores):
        scores = _rule_scores(m, scores)
    gap = float(((scores - threshold).abs() / abs(threshold)).min())
    assert gap > TIE_MARGIN, f"{m.name}: a score {gap:.2g} (relative) from threshold {threshold}: a near-tie"


@pytest.fixture
def live_scores(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """Every rule score the eager engine's exits compare with the threshold, as they decode."""
    seen: list[torch.Tensor] = []
    check = ExitRuntime.check

    def spy(self: ExitRuntime, *args, **kwargs) -> Check:
        out = check(self, *args, **kwargs)
        seen.append(out.score)
        return out

    monkeypatch.setattr(ExitRuntime, "check", spy)
    return seen


@pytest.mark.parametrize("policy", KV_POLICIES)
def test_never_exiting_equals_full_model_and_hf(bb: Backbone, policy: str) -> None:
    inputs = _inputs(bb)
    full = generate(bb, **inputs, max_new_tokens=N_NEW)
    hf = bb.model.generate(**inputs, do_sample=False, max_new_tokens=N_NEW)
    hf = hf[:, inputs["input_ids"].shape[1] :] if bb.lm_type == "opt" else hf[:, 1:]
    assert torch.equal(full.tokens, hf)
    for name in _methods(bb):
        m = _method(bb, name)
        if m.rule == "static":
            continue  # a static exit always fires; its "never" is the last layer, tested below
        if m.generators is not None and bb.lm_type == "t5":
            # one block below the last, a T5 generator is as saturated as the tiny model's own head
            # (max prob exactly 1.0 at some positions, where a max-prob threshold of 1.0 fires)
            m = m.restrict([1])
        out = generate(bb, m, **inputs, max_new_tokens=N_NEW, threshold=NEVER[m.rule], kv_policy=policy)
        assert torch.equal(out.tokens, full.tokens), name
        assert torch.equal(out.exit_layers, full.exit_layers), name
        assert out.text == full.text
        if m.rule == "cosine":  # MuE's check is a cosine: priced at nothing, so no loss either
            assert out.expected_speedup == pytest.approx(1.0), name
        else:  # exits checked, none taken: slower than the model
            assert out.expected_speedup < 1.0, name
    static_last = generate(
        bb, _method(bb, "static"), **inputs, max_new_tokens=N_NEW, threshold=bb.num_layers, kv_policy=policy
    )
    assert torch.equal(static_last.tokens, full.tokens)


@pytest.mark.parametrize("policy", KV_POLICIES)
def test_always_exiting_stops_at_the_first_exit(bb: Backbone, policy: str) -> None:
    inputs = _inputs(bb)
    for name in _methods(bb):
        first, second = bb.num_layers - 2, bb.num_layers - 1
        m = _method(bb, name, f"{first},{second}")
        threshold = {"patience": 1, "static": first}.get(m.rule, ALWAYS.get(m.rule))
        out = generate(bb, m, **inputs, max_new_tokens=N_NEW, threshold=threshold, kv_policy=policy)
        real = out.exit_layers > 0
        if m.rule == "patience":  # PABEE fires only where two consecutive exits agree, else runs to L
            assert set(out.exit_layers[real].tolist()) <= {second, bb.num_layers}, name
            continue
        assert bool((out.exit_layers[real] == first).all()), name
        if policy != "full":
            assert out.expected_speedup > 1.0, name
        else:
            assert out.expected_speedup < 1.0, name  # the paper's code: every layer and every exit


@pytest.mark.parametrize("policy", ["full", "deferred"])
def test_exact_policies_equal_the_teacher_forced_simulation(bb: Backbone, policy: str) -> None:
    """`full` and `deferred` read only K/V the full model would compute: choices = simulation."""
    inputs = _inputs(bb)
    for name in _methods(bb):
        m = _method(bb, name)
        threshold = _mid_threshold(m, inputs)
        out = generate(bb, m, **inputs, max_new_tokens=N_NEW, threshold=threshold, kv_policy=policy)
        real = out.exit_layers > 0
        layers = set(out.exit_layers[real].tolist())
        assert len(layers) > 1 or m.rule == "static", (name, layers)  # mixed depths, or the test is idle
        tokens, exit_layers = _simulated(m, inputs, out, threshold)
        assert torch.equal(out.tokens[real], tokens), name
        assert torch.equal(out.exit_layers[real], exit_layers), name


def test_batch_rows_decode_as_alone_and_compaction_changes_nothing(
    bb: Backbone, live_scores: list[torch.Tensor]
) -> None:
    """Batch shapes change the kernels' rounding: every score the decodes compare is clear of it."""
    inputs = _inputs(bb, 3)
    for name in _methods(bb):
        m = _method(bb, name)
        threshold = _mid_threshold(m, inputs)
        live_scores.clear()
        batched = generate(bb, m, **inputs, max_new_tokens=N_NEW, threshold=threshold)
        waiting = generate(bb, m, **inputs, max_new_tokens=N_NEW, threshold=threshold, compact=False)
        _assert_clear_of(m, torch.cat(live_scores), threshold)
        assert torch.equal(batched.tokens, waiting.tokens), name
        assert waiting.cost_layers >= batched.cost_layers
        for row in range(3):
            one = {k: v[row : row + 1] for k, v in inputs.items()}
            keep = one["attention_mask"][0].bool() if bb.lm_type == "opt" else slice(None)
            if bb.lm_type == "opt":  # drop the row's left padding: alone it has none
                one = {
                    "pixel_values": one["pixel_values"],
                    "input_ids": one["input_ids"][:, keep],
                    "attention_mask": None,
                }
            alone = generate(bb, m, **one, max_new_tokens=N_NEW, threshold=threshold)
            _assert_clear_of(m, torch.cat(live_scores), threshold)
            n = alone.tokens.shape[1]
            assert torch.equal(alone.tokens[0], batched.tokens[row, :n]), (name, row)


def test_confidences_and_costs(bb: Backbone) -> None:
    inputs = _inputs(bb, 2)
    m = _method(bb, "deebert", "1,2")
    out = generate(bb, m, **inputs, max_new_tokens=N_NEW, threshold=1e9)  # entropy < 1e9: exit 1
    real = out.exit_layers > 0
    assert bool(torch.isfinite(out.confidences[real]).all()) and bool(
        torch.isnan(out.confidences[~real]).all()
    )
    assert out.expected_speedup == pytest.approx(out.full_cost_layers / out.cost_layers)
    assert 1.0 < out.expected_speedup < 4.0  # 1 of 4 layers, plus the adapter, head and K/V fills


def test_bad_inputs(bb: Backbone) -> None:
    inputs = _inputs(bb, 1)
    m = _method(bb, "deebert" if bb.lm_type == "t5" else "free")
    rule = m.rule
    bad = {"max_prob": (1.5, -0.1), "entropy": (-1.0,)}[rule]
    for threshold in bad:
        with pytest.raises(FreeBenchError, match=rule):
            generate(bb, m, **inputs, threshold=threshold)
    with pytest.raises(FreeBenchError, match="simulation only"):
        generate(bb, _method(bb, "oracle"), **inputs, threshold=0.5)
    with pytest.raises(FreeBenchError, match="need a threshold"):
        generate(bb, m, **inputs)
    with pytest.raises(FreeBenchError, match="compact=False"):
        generate(bb, m, **inputs, threshold=0.5, kv_policy="deferred", compact=False)
    with pytest.raises(FreeBenchError, match="patience"):
        generate(bb, _method(bb, "pabee"), **inputs, threshold=0)
    other = from_hf(build_tiny_blip2(bb.lm_type, seed=3))
    with pytest.raises(FreeBenchError, match="belong to backbone"):
        generate(other, m, **tiny_inputs(other.model, 1, seed=5), threshold=0.5)


def test_a_restricted_dense_placement_decodes_as_the_sparse_one(bb: Backbone) -> None:
    inputs = _inputs(bb)
    name = "free" if bb.lm_type == "opt" else "deebert"
    dense = _method(bb, name)
    sparse = get_method(name)(bb, "1,3")
    state = {k: v for k, v in dense.state_dict().items() if any(f".{k_}." in k for k_ in ("1", "3"))}
    sparse.load_state_dict(state, strict=False)
    threshold = _mid_threshold(dense, inputs)
    a = generate(bb, dense.restrict("1,3"), **inputs, max_new_tokens=N_NEW, threshold=threshold)
    b = generate(bb, sparse.eval(), **inputs, max_new_tokens=N_NEW, threshold=threshold)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.exit_layers, b.exit_layers)
    assert set(a.exit_layers[a.exit_layers > 0].tolist()) <= {1, 3, bb.num_layers}
    with pytest.raises(FreeBenchError, match="no trained exit"):
        sparse.restrict("2")


@pytest.mark.parametrize("policy", ["full", "propagate"])
def test_simulated_costs_price_steps_as_the_engine_does(bb: Backbone, policy: str) -> None:
    """Where the simulation's choices are the engine's (batch 1, the first step), so are the costs."""
    from free_bench.engine.cost import cost_model
    from free_bench.evaluation.sweep_eval import Recorded, step_costs

    inputs = {k: v[:1] for k, v in _inputs(bb, 1).items()}
    for name in _methods(bb):
        m = _method(bb, name)
        threshold = _mid_threshold(m, inputs)
        out = generate(bb, m, **inputs, max_new_tokens=1, threshold=threshold, kv_policy=policy)
        with torch.no_grad():
            tf = teacher_forced_hidden_states(bb, **inputs, target_ids=out.tokens)
        pos = torch.tensor([[0, tf.target_slice.start]])
        scores = exit_scores(m, tf.hidden_states, tf.attention_mask, pos, tf.encoder)
        _assert_clear_of(m, scores, threshold)
        choice = choose(m, scores, threshold)
        assert torch.equal(choice.tokens, out.tokens[0]), name
        host = scores.cpu()  # what `record` hands the threshold loop
        assert torch.equal(choose(m, host, threshold).index, choice.index), name
        rec = Recorded(host, torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))
        spent = step_costs(cost_model(bb, m), m, rec, choice.index, policy)
        assert float(spent.sum()) == pytest.approx(out.cost_layers), name


def test_stacked_kv_equals_each_layers_projection(bb: Backbone) -> None:
    """Propagation's one-matmul K/V (norm scales folded into k/v weights) = each layer's own."""
    from free_bench.engine.skip import StackedKV, kv_projection

    hidden = torch.randn(2, 3, bb.lm_config.hidden_size if bb.lm_type == "opt" else bb.lm_config.d_model)
    stacked = StackedKV(bb.lm_type, list(bb.layers))
    for start in range(bb.num_layers):
        k, v = stacked(hidden, start)
        assert k.shape[0] == bb.num_layers - start
        for i, layer in enumerate(list(bb.layers)[start:]):
            k_ref, v_ref = kv_projection(bb.lm_type, layer, hidden)
            torch.testing.assert_close(k[i], k_ref, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(v[i], v_ref, rtol=1e-4, atol=1e-5)


def test_a_batch_counts_each_layer_once_per_step(bb: Backbone) -> None:
    """At batch 1 the batch count is the row's; in a batch it is what the deepest row in flight ran, so
    it expects less than the per-row count whenever rows leave at different exits, and a batch whose
    rows all exit at the first exit expects what each of them does."""
    one = tiny_inputs(bb.model, 1, seed=5)
    m = _method(bb, "deebert")
    t = float(generate(bb, m, **one, max_new_tokens=N_NEW, threshold=ALWAYS["entropy"]).confidences.median())
    alone = generate(bb, m, **one, max_new_tokens=N_NEW, threshold=t)
    assert alone.expected_batch_speedup == pytest.approx(alone.expected_speedup)
    batch = generate(bb, m, **_inputs(bb), max_new_tokens=N_NEW, threshold=t)
    assert batch.expected_batch_speedup < batch.expected_speedup  # the deepest row sets each step
    first = generate(bb, m, **_inputs(bb), max_new_tokens=N_NEW, threshold=ALWAYS["entropy"])
    assert (first.exit_layers[first.exit_layers > 0] == m.layers[0]).all()
    assert first.expected_batch_speedup == pytest.approx(first.expected_speedup)
    full = generate(bb, **_inputs(bb), max_new_tokens=N_NEW)
    assert full.expected_batch_speedup == 1.0
