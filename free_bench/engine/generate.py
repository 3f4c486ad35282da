"""Greedy decoding through the layer runner: the full model, or early exits (`decode_exits`).

Matches HF `generate(do_sample=False)`: same EOS/pad rules (EOS is emitted, later positions of a
finished row hold pad_token_id), stopping once every row has emitted EOS or after max_new_tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from free_bench.config import DECODES, ENGINES, KV_POLICIES
from free_bench.core.errors import FreeBenchError, check_choice
from free_bench.engine.cost import cost_model
from free_bench.engine.decode_exits import check_pairing, decode_with_exits
from free_bench.engine.graphs.batched import decode_batch
from free_bench.engine.graphs.decoder import GraphDecoder
from free_bench.engine.graphs.speculative import speculative_graphs
from free_bench.engine.speculative import speculative_decode
from free_bench.methods import rules
from free_bench.methods.protocol import ExitMethod, is_exit_method
from free_bench.models import runner
from free_bench.models.base import Backbone


@dataclass(frozen=True, eq=False)
class GenerateResult:
    """New tokens per row and the depth each one took."""

    tokens: torch.Tensor  # (B, T) long; pad_token_id after a row's EOS
    exit_layers: torch.Tensor  # (B, T) long; num_layers for full-depth tokens, 0 at padding
    text: list[str] | None  # decoded with skip_special_tokens when a tokenizer is known
    cost_layers: float  # layer-equivalents spent on real new tokens, exits and KV fills included
    full_cost_layers: float  # what the full model spends on the same tokens (layers + head)
    confidences: torch.Tensor | None = None  # (B, T) the rule's score where each token left; NaN at padding
    speculative: dict | None = None  # decode="speculative": drafted, accepted, verify_passes and rates
    # the batch's own count (eager early-exit decodes): per step each layer, check and head once if any
    # row ran it, against the full model's steps; NaN where not counted
    batch_cost_layers: float = float("nan")
    batch_full_cost_layers: float = float("nan")

    @property
    def expected_speedup(self) -> float:
        """Full-model cost / cost spent, in layer-equivalents (engine.cost), exit modules included."""
        return self.full_cost_layers / self.cost_layers

    @property
    def expected_batch_speedup(self) -> float:
        """The same with a batch's layers counted once per step if any row ran them (what a batch at
        batch-1 widths saves: only the layers no row runs); NaN where not counted."""
        return self.batch_full_cost_layers / self.batch_cost_layers


def special_tokens(backbone: Backbone) -> tuple[list[int], int]:
    """(EOS ids, pad id) as HF generate resolves them from the LM's generation config.

    BLIP-2's `generate` delegates to `language_model.generate`, so that config is the one in force.
    """
    gen, cfg = backbone.language_model.generation_config, backbone.lm_config
    eos = gen.eos_token_id if gen.eos_token_id is not None else cfg.eos_token_id
    eos_ids = [] if eos is None else [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]
    pad = gen.pad_token_id
    if pad is None:
        pad = eos_ids[0] if eos_ids else cfg.pad_token_id
    if pad is None:
        raise FreeBenchError("the LM config defines neither pad_token_id nor eos_token_id")
    return eos_ids, int(pad)


@torch.inference_mode()
def generate(
    backbone: Backbone,
    exits: Any = None,
    *,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 20,
    threshold: float | None = None,
    kv_policy: str = "propagate",
    compact: bool = True,
    engine: str = "eager",
    schedule: Sequence[int] | None = None,
    stop_at_eos: bool = True,
    decode: str = "greedy",
    draft_len: int = 4,
) -> GenerateResult:
    """Greedy decoding; with `exits=None` every token runs all `backbone.num_layers` layers.

    With `exits` (an `ExitMethod`), each token leaves at the exit its rule picks under `threshold`
    (max prob, entropy, patience, static layer or cosine) and the layers above it do not run for it;
    `kv_policy` says what fills their KV entries. `compact=False` keeps exited rows of a batch
    running, discarded, until the slowest row is done (to measure what compaction saves).
    `engine="graphs"` replays CUDA graphs (`engine.graphs`: OPT or T5, propagate or full policy; a
    batch decodes in a bucket of rows, exited rows riding along within a step and, with `compact`,
    finished rows' bucket shrinking between steps); the eager engine runs the same layers from Python.

    `schedule` replays recorded exit depths on one row: token t leaves at layer `schedule[t]` (a
    consulted exit, or `num_layers`) whatever the rule says, the rule's checks below it run and are
    paid, and exactly `len(schedule)` tokens are decoded (`max_new_tokens` is ignored). Its tokens are
    not the method's answer; its time is what those depths cost. `stop_at_eos=False` decodes every one
    of `max_new_tokens` (the full model timed beside a replay).

    `decode="speculative"` (one row, `propagate`, either engine): the exits draft up to `draft_len`
    tokens, one full-depth pass verifies them (`engine.speculative`, `engine.graphs.speculative`); the
    tokens are the full model's whatever the threshold, and `speculative` holds the acceptance counts."""
    if schedule is not None:
        if exits is None:
            raise FreeBenchError("an exit schedule needs exits: pass the method whose checks it pays")
        if len(schedule) == 0:  # before max_new_tokens takes its length
            raise FreeBenchError("an exit schedule needs one layer per token; got none")
        if pixel_values.shape[0] != 1:
            raise FreeBenchError(f"an exit schedule replays one row, got a batch of {pixel_values.shape[0]}")
        max_new_tokens, stop_at_eos = len(schedule), False
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise FreeBenchError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    check_choice("kv_policy", kv_policy, KV_POLICIES)
    check_choice("engine", engine, ENGINES)
    eos_ids, pad_id = special_tokens(backbone)
    if not stop_at_eos:
        eos_ids = []
    if exits is None and threshold is not None:
        raise FreeBenchError("threshold needs exits: pass the exit method loaded with free_bench.load_exits")
    if exits is not None:
        if not is_exit_method(exits):
            raise FreeBenchError(
                f"exits must be an ExitMethod (free_bench.load_exits(dir)), got {type(exits).__name__}"
            )
        if threshold is None:
            threshold = exits.options.get("patience") if exits.rule == "patience" else None
        if threshold is None:
            raise FreeBenchError(f"{exits.name} exits need a threshold for their {exits.rule} rule")
        if engine == "graphs":
            check_pairing(backbone, exits)
            threshold = rules.check_threshold(exits.rule, threshold, exits.layers)
    check_choice("decode", decode, DECODES)
    if decode == "speculative":
        if exits is None or schedule is not None or kv_policy != "propagate":
            raise FreeBenchError(
                "speculative decoding drafts with exits (pass them) under kv_policy 'propagate', without a schedule"
            )
        assert threshold is not None
        if engine == "graphs":
            decoder = graph_decoder(backbone, exits, kv_policy, threshold, input_ids, max_new_tokens + draft_len + 1)
            fields = speculative_graphs(
                decoder, pixel_values, input_ids, attention_mask, max_new_tokens=max_new_tokens,
                threshold=threshold, draft_len=draft_len, eos_ids=eos_ids,
            )  # fmt: skip
            return _one_row(backbone, fields)
        fields = speculative_decode(
            backbone, exits, pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask,
            max_new_tokens=max_new_tokens, threshold=threshold, draft_len=draft_len, eos_ids=eos_ids,
        )  # fmt: skip
        return _one_row(backbone, fields)
    if engine == "graphs":
        def decoder_for(rows: int) -> GraphDecoder:
            return graph_decoder(backbone, exits, kv_policy, threshold, input_ids, max_new_tokens, rows)

        if pixel_values.shape[0] == 1:
            fields = decoder_for(1).decode(
                pixel_values, input_ids, attention_mask, max_new_tokens=max_new_tokens, threshold=threshold,
                eos_ids=eos_ids, pad_id=pad_id, schedule=None if schedule is None else list(schedule),
            )  # fmt: skip
        else:
            fields = decode_batch(
                decoder_for, pixel_values, input_ids, attention_mask, max_new_tokens=max_new_tokens,
                threshold=threshold, eos_ids=eos_ids, pad_id=pad_id, compact=compact,
            )  # fmt: skip
        return GenerateResult(text=_decode_text(backbone, fields["tokens"]), **fields)
    if exits is not None:
        assert threshold is not None
        fields = decode_with_exits(
            backbone, exits, pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask,
            max_new_tokens=max_new_tokens, threshold=threshold, kv_policy=kv_policy, compact=compact,
            eos_ids=eos_ids, pad_id=pad_id, schedule=None if schedule is None else list(schedule),
        )  # fmt: skip
        return GenerateResult(text=_decode_text(backbone, fields["tokens"]), **fields)

    state = runner.start_decoding(
        backbone, pixel_values, input_ids, attention_mask, max_new_tokens=max_new_tokens
    )
    batch, num_layers, device = state.batch_size, state.num_layers, backbone.device
    eos = torch.tensor(eos_ids, dtype=torch.long, device=device)  # (E,)
    tokens = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device)  # (B, N)
    exit_layers = torch.zeros((batch, max_new_tokens), dtype=torch.long, device=device)  # (B, N)
    confidences = torch.full((batch, max_new_tokens), float("nan"), device=device)  # (B, N)
    unfinished = torch.ones(batch, dtype=torch.bool, device=device)  # (B,)
    pad = torch.tensor(pad_id, dtype=torch.long, device=device)
    full_depth = torch.tensor(num_layers, dtype=torch.long, device=device)
    zero = torch.zeros((), dtype=torch.long, device=device)

    next_ids = state.start_ids  # T5: the decoder start token; OPT: None (the prompt gave hidden)
    steps = 0
    for t in range(max_new_tokens):
        if t == 0 and state.prompt_hidden is not None:
            hidden = state.prompt_hidden  # (B, 1, D)
        else:
            hidden = runner.begin_token(state, next_ids)
            hidden = runner.step_layers(state, hidden, 0, num_layers)
            runner.end_token(state)
        logits = backbone.logits_from_hidden(hidden[:, -1])  # (B, V)
        next_ids = torch.where(unfinished, logits.argmax(dim=-1), pad)  # (B,)
        tokens[:, t] = next_ids
        exit_layers[:, t] = torch.where(unfinished, full_depth, zero)
        confidences[:, t] = logits.float().softmax(-1).amax(-1).masked_fill(~unfinished, float("nan"))
        steps = t + 1
        if eos.numel():
            unfinished &= ~torch.isin(next_ids, eos)
            if not bool(unfinished.any()):  # the one host sync per token
                break

    tokens, exit_layers, confidences = tokens[:, :steps], exit_layers[:, :steps], confidences[:, :steps]
    full = float((exit_layers > 0).sum().item()) * cost_model(backbone).full
    per_step = steps * cost_model(backbone).full  # a batch's steps, each every layer once
    return GenerateResult(tokens, exit_layers, _decode_text(backbone, tokens), full, full, confidences,
                          batch_cost_layers=per_step, batch_full_cost_layers=per_step)  # fmt: skip


def _one_row(backbone: Backbone, fields: dict) -> GenerateResult:
    """A one-row decode's result: its batch count is its own."""
    return GenerateResult(text=_decode_text(backbone, fields["tokens"]), **fields,
                          batch_cost_layers=fields["cost_layers"], batch_full_cost_layers=fields["full_cost_layers"])  # fmt: skip


# what `engine="graphs"` builds for OPT: q/k/v as one product, each segment compiled by inductor before
# capture. 1.92x the weight-read floor per token on the H200 at OPT-2.7b's shape, against 2.57x for
# the captured HF layers (commit a1077b0, bench_engine.py::test_fused_graphs_near_the_floor). A T5
# decoder runs its HF blocks, compiled the same way (`GRAPHS_ENGINE_T5`). Both replay one graph per
# step where torch captures conditional nodes (`GraphDecoder(conditional=None)`).
GRAPHS_ENGINE = {"fuse": True, "compile_segments": True}
GRAPHS_ENGINE_T5 = {"compile_segments": True}


def graph_decoder(
    backbone: Backbone,
    exits: ExitMethod | None,
    kv_policy: str,
    threshold: float | None,
    input_ids: torch.Tensor | None,
    max_new_tokens: int,
    batch_size: int = 1,
    **options,
) -> GraphDecoder:
    """The captured decoder for this method, policy, KV capacity and bucket of rows, built once and
    kept on the method (or the backbone for the full model): capturing costs far more than a decode.
    `options` override the engine's (`GraphDecoder`'s; the CPU tests pass capture=False, which runs the
    same fixed-shape code uncaptured on any device).

    OPT: the KV capacity holds prompt + new tokens (rounded up to 128 slots, at most the model's
    positions). T5: the decoder's holds the start token + new tokens, and `cross_capacity` the encoder
    slots (the prompt, rounded up to 32)."""
    if backbone.device.type != "cuda" and options.get("capture", True):
        raise FreeBenchError(
            f"engine 'graphs' captures CUDA graphs and needs a CUDA device; the backbone is on "
            f"{backbone.device} (use engine 'eager')"
        )
    if exits is None:
        kv_policy = "full"  # no exits, nothing skipped: every policy is the full model
    prompt = input_ids.shape[1] if input_ids is not None else backbone.model.config.num_query_tokens + 1
    cross = None
    if backbone.lm_type == "t5":
        engine = {**GRAPHS_ENGINE_T5, **options}
        capacity = 128 * -(-(1 + max_new_tokens) // 128)
        cross = 32 * -(-prompt // 32)
    else:
        engine = {**GRAPHS_ENGINE, **options}
        limit = backbone.lm_config.max_position_embeddings
        capacity = min(128 * -(-(prompt + max_new_tokens) // 128), limit)
    static = (
        int(threshold) if exits is not None and exits.rule == "static" and threshold is not None else None
    )
    owner = exits if exits is not None else backbone
    decoders = owner.__dict__.setdefault("_graph_decoders", {})
    key = (kv_policy, capacity, cross, static, batch_size, tuple(sorted(options.items())))
    if key not in decoders:
        decoders[key] = GraphDecoder(
            backbone, exits, kv_policy=kv_policy, capacity=capacity, static_layer=static,
            batch_size=batch_size, cross_capacity=cross, **engine,
        )  # fmt: skip
    return decoders[key]


def _decode_text(backbone: Backbone, tokens: torch.Tensor) -> list[str] | None:
    if backbone.tokenizer is None:
        return None
    return [s.strip() for s in backbone.tokenizer.batch_decode(tokens.tolist(), skip_special_tokens=True)]
