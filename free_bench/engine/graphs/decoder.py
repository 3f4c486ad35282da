"""The `graphs` engine: batch-1 early-exit decoding replayed as CUDA graphs, one per segment.

The eager engine launches every kernel from Python, about 0.45 ms per layer per token on an H200
whatever the width: skipping a layer then saves mostly Python time, which flatters early exit. Here
the layers between two consulted exits, together with the exit's check and the bookkeeping of the
decision, are captured once as one CUDA graph (`Segment`); a token replays segment after segment
and reads one small status tensor after each (the exit check's device-to-host sync, the one cost a
real deployment cannot avoid), stopping at the first exit that fires. Under `propagate` one more
graph per exit fills the skipped layers' K/V (CALM's propagation, `runner_skip.StackedKV`).

Shapes must not change between tokens, so the KV cache has a fixed capacity and the engine decodes
one row (batch 1, the latency setting CUDA graphs are for) of an OPT backbone under the
`propagate` or `full` policy. The prompt pass is captured the same way once per prompt length (a
`Pass` of q = P positions beside the token step's q = 1), and the image side of the prefix (vision
tower, Q-Former, projection: fixed shapes at batch 1) once per image size: for a VQA answer of one
to three tokens these are most of the work. Without CUDA (`capture=False`) the same fixed-shape
code runs eagerly, which is how the CPU tests check it; timings of that are not the engine's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from free_bench.core.errors import FreeBenchError
from free_bench.engine.cost import CostModel, cost_model
from free_bench.engine.exit_runtime import LIVE_RULES, check_schedule, verdict
from free_bench.engine.graphs.capture import Graphed, Pass, capture
from free_bench.engine.graphs.fused import FusedOPT, fused_layer
from free_bench.engine.graphs.static import StaticKV, StaticMasks
from free_bench.engine.skip import kv_projection, stacked_kv
from free_bench.methods.mue import cosine
from free_bench.methods.protocol import ExitMethod
from free_bench.models import runner
from free_bench.models.base import Backbone

GRAPH_POLICIES = ("propagate", "full")
_READS_LOGITS = ("max_prob", "entropy", "patience")


# dynamo keeps its compiled code per code object, and every segment of every decoder shares `run`'s:
# at its default limit (8) the ninth segment compiled in a process fell back to eager code, silently
# (the bench at commit a1077b0: the third decoder's exit checks). Guards run only in warm-up and capture, never
# in a replay, so a high limit costs nothing per token; past it, an error rather than eager code.
_RECOMPILES = {
    "recompile_limit": 4096,
    "accumulated_recompile_limit": 4096,
    "fail_on_recompile_limit_hit": True,
}


def _compiled(fn: Callable, mode: str | None = None) -> Callable:
    """`fn` through inductor, with room for one compiled entry per segment of every decoder."""
    compiled = torch.compile(fn, dynamic=False, mode=mode)

    def call(*args, **kwargs):
        with torch._dynamo.config.patch(**_RECOMPILES):
            return compiled(*args, **kwargs)

    return call


# `compile_layers`: `runner_fused.fused_layer` compiled once for the process, so every layer of every
# decoder of one shape runs the same compiled code
_SHARED_LAYERS: dict[str, Callable[..., torch.Tensor]] = {}


class GraphDecoder:
    """Decodes single rows with `method` (None: the full model), reusing its graphs across calls."""

    def __init__(
        self,
        backbone: Backbone,
        method: ExitMethod | None,
        *,
        kv_policy: str = "propagate",
        capacity: int = 128,
        static_layer: int | None = None,
        capture: bool | None = None,
        compile_segments: bool | str = False,
        fuse: bool = False,
        compile_layers: bool = False,
    ) -> None:
        if kv_policy not in GRAPH_POLICIES:
            raise FreeBenchError(
                f"the graphs engine runs the kv policies {list(GRAPH_POLICIES)}, not {kv_policy!r} "
                "(deferred catches positions up in variable-length calls: use --engine eager)"
            )
        if compile_layers and (not fuse or compile_segments):
            raise FreeBenchError(
                "compile_layers compiles runner_fused's layer function: it needs fuse=True, and replaces "
                "compile_segments"
            )
        self.masks = StaticMasks(backbone, capacity)  # checks OPT and the capacity
        self.bb, self.method, self.policy, self.capacity = backbone, method, kv_policy, capacity
        self.capture = backbone.device.type == "cuda" if capture is None else capture
        if self.capture and backbone.device.type != "cuda":
            raise FreeBenchError(f"CUDA graphs need a CUDA device; the backbone is on {backbone.device}")
        L, dev = backbone.num_layers, backbone.device
        self.rule = method.rule if method is not None else "none"
        if method is not None and self.rule not in LIVE_RULES:
            raise FreeBenchError(f"{method.name}: the {self.rule} rule exists in simulation only")
        consulted: tuple[int, ...] = ()
        if method is not None:
            consulted = tuple(k for k in method.layers if k < L)
            if self.rule == "static":  # decided by position: only that exit is consulted
                if static_layer not in method.layers:
                    raise FreeBenchError(
                        f"static exits need static_layer, one of {list(method.layers)}; got {static_layer!r}"
                    )
                consulted = (static_layer,) if static_layer < L else ()  # an exit at L is the model
        self.exits = consulted
        self.cost: CostModel = cost_model(backbone, method)
        self.generators = None if method is None else method.generators
        # inductor writes whole buffers in place, views by copies
        separate = bool(compile_segments) or bool(compile_layers)
        self.kv = StaticKV(L, 1, capacity, dev, separate=separate)
        self.gen_kv = (
            None
            if self.generators is None
            else StaticKV(len(self.generators.layers), 1, capacity, dev, separate=separate)
        )
        self.ids = torch.zeros((1, 1), dtype=torch.long, device=dev)  # (1, 1) token in flight
        self.threshold = torch.zeros((), dtype=torch.float32, device=dev)
        # the step's decision so far, updated in place by each segment
        self.decided = torch.zeros(1, dtype=torch.bool, device=dev)
        self.token = torch.zeros(1, dtype=torch.long, device=dev)
        self.score = torch.zeros(1, dtype=torch.float32, device=dev)
        self.layer = torch.zeros(1, dtype=torch.long, device=dev)
        self.status = torch.zeros(3, dtype=torch.long, device=dev)  # [decided, token, exit layer]
        self._pat_token = torch.zeros(1, dtype=torch.long, device=dev)
        self._pat_count = torch.zeros(1, dtype=torch.long, device=dev)
        self.bounds = list(zip((0, *consulted), (*consulted, L), strict=True))
        # each segment's last layer as a buffer, not a constant of its code: segments of equal length
        # then trace to equal graphs, and inductor compiles one for all (its FX graph cache)
        self._ends = [torch.full((1,), end, dtype=torch.long, device=dev) for _, end in self.bounds]
        self.width = backbone.layers[0].self_attn.embed_dim
        # q/k/v as one product and a direct attention call (runner_fused): fewer, larger kernels per layer
        # compile_layers: one compiled layer function for every layer of the token step, traced once
        # per process and shape rather than once per segment
        layer_fn = None
        if compile_layers:
            if "layer" not in _SHARED_LAYERS:
                _SHARED_LAYERS["layer"] = _compiled(fused_layer)
            layer_fn = _SHARED_LAYERS["layer"]
        self.fused = FusedOPT(backbone, layer_fn=layer_fn) if fuse else None

        def token_input() -> torch.Tensor:  # (1, 1, D): the token in flight at `masks.position`
            return self.masks.embed(self.bb.embed_tokens(self.ids), self.masks.position)

        self.step = self._pass(self.masks.position, token_input, self.masks.step_mask)
        if compile_segments:  # inductor fuses the layers' small kernels; capture then replays its code
            # a string is torch.compile's mode, e.g. "max-autotune-no-cudagraphs" (benchmarked matmul
            # kernels for batch 1; the graphs stay this decoder's own)
            mode = compile_segments if isinstance(compile_segments, str) else None
            for seg in self.step.segments:
                seg.run = _compiled(seg.run, mode)
        self.prompts: dict[int, Pass] = {}  # prompt length P -> its pass, built on first use
        self.images: dict[tuple[int, ...], tuple[torch.Tensor, Graphed, list[torch.Tensor]]] = {}

    # --- what a segment computes (q positions: 1 for the token step, P for a prompt) -----------
    def _segment(self, i: int, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        start, end = self.bounds[i]
        previous = None
        for j in range(start, end):
            if j == end - 1 and self.rule == "cosine":
                previous = hidden[:, -1]  # (1, D) input of layer `end`
            if self.fused is not None:
                hidden = self.fused(j, hidden, mask, self.kv)  # (1, q, D)
            else:
                hidden = self.bb.layers[j](hidden, attention_mask=mask, cache=self.kv)  # (1, q, D)
        if end == self.bb.num_layers:
            logits = self.bb.logits_from_hidden(hidden[:, -1]).float()  # (1, V)
            token, score = logits.argmax(-1), logits.softmax(-1).amax(-1)
            fired = torch.ones_like(self.decided)
        else:
            token, score, fired = self._check(i, end, hidden, mask, previous)
        new = fired & ~self.decided if i else fired
        self.token.copy_(torch.where(new, token, self.token))
        self.score.copy_(torch.where(new, score.float(), self.score))
        self.layer.copy_(torch.where(new, self._ends[i], self.layer))
        self.decided.copy_(self.decided | new if i else new)
        self.status.copy_(torch.stack([self.decided.long()[0], self.token[0], self.layer[0]]))
        return hidden

    def _check(
        self, i: int, k: int, hidden: torch.Tensor, mask: torch.Tensor, previous: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Exit k's rule on layer k's output (1, q, D): (token, score, fired), each (1,)."""
        m = self.method
        assert m is not None
        last = hidden[:, -1:]  # (1, 1, D)
        if self.generators is not None:  # FREE/distill: a decoder layer with its own K/V
            last = self.generators(k, hidden, mask4d=mask, cache=self.gen_kv)[:, -1:]
        elif self.rule != "cosine":
            last = m.exit_hidden(k, last)
        logits = m.head_logits(k, last)[:, 0].float()  # (1, V)
        if self.rule == "cosine":
            assert previous is not None
            score = cosine(previous, hidden[:, -1])
            return logits.argmax(-1), score, score >= self.threshold
        state = (self._pat_token, self._pat_count) if i else (None, None)  # PABEE restarts at exit 1
        token, score, fired, counts = verdict(self.rule, logits, self.threshold, *state)
        if counts is not None:  # in place: the next segment's graph reads these buffers
            self._pat_count.copy_(counts)
            self._pat_token.copy_(token)
        return token, score, fired

    def _pass(
        self, positions: torch.Tensor, first: Callable[[], torch.Tensor], mask: Callable[[], torch.Tensor]
    ) -> Pass:
        """A step of q = len(positions) positions: `first()` is layer 1's input (1, q, D), `mask()` the
        attention mask; each segment reads the previous one's output buffer and writes its own."""
        q, dtype, dev = positions.shape[0], self.bb.dtype, self.bb.device
        outputs = [torch.zeros((1, q, self.width), dtype=dtype, device=dev) for _ in self.bounds]  # (1, q, D)

        def segment(i: int) -> Callable[[], None]:
            def run() -> None:
                hidden = first() if i == 0 else outputs[i - 1]
                outputs[i].copy_(self._segment(i, hidden, mask()))

            return run

        def fill(i: int) -> Callable[[], None]:  # propagate: exit i's output into the K/V above it
            def run() -> None:
                self._fill(self.bounds[i][1], outputs[i])

            return run

        fills = {k: Graphed(fill(i)) for i, k in enumerate(self.exits)} if self.policy == "propagate" else {}
        return Pass(positions, outputs, [Graphed(segment(i)) for i in range(len(self.bounds))], fills)

    def _prompt_pass(self, length: int) -> Pass:
        """The pass for prompts of `length` positions (built, and captured, on first use)."""
        if length not in self.prompts:
            dev = self.bb.device
            positions = torch.arange(length, device=dev)  # (P,)
            embeds = torch.zeros(
                (1, length, self.bb.embed_tokens.embedding_dim), dtype=self.bb.dtype, device=dev
            )
            mask = self.masks.prompt_mask(length)  # (1, 1, P, C), the same for every prompt of this length
            p = self._pass(positions, lambda: self.masks.embed(embeds, positions), lambda: mask)
            p.embeds = embeds
            self.prompts[length] = p
        return self.prompts[length]

    def _fill(self, k: int, hidden: torch.Tensor) -> None:
        keys, values = stacked_kv(self.bb)(hidden, k)  # (L - k, 1, H, q, Dh)
        self.kv.write_layers(k, keys.to(hidden.dtype), values.to(hidden.dtype))
        if self.generators is not None and self.gen_kv is not None:
            for deeper in (e for e in self.exits if e > k):
                layer = self.generators.layers[str(deeper)]
                key, value = kv_projection("opt", layer, hidden)
                self.gen_kv.update(key.to(hidden.dtype), value.to(hidden.dtype), layer.self_attn.layer_idx)

    # --- capture ----------------------------------------------------------------------------------
    def _capture(self, p: Pass) -> None:
        """Warm every segment and fill of `p` on a side stream (as torch.cuda.graphs asks), then
        capture each. The token step warms at slot C-1, which every real token writes before any token
        reads it; a prompt pass warms on the slots its prompt is about to overwrite."""
        if p is self.step:
            self.masks.position.fill_(self.capacity - 1)
        self._address(p.positions)
        capture(p.segments + list(p.fills.values()))
        p.captured = True

    @torch.inference_mode()
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Vision tower -> Q-Former -> projection (1, Q, D'), replayed per image size once captured."""
        key = tuple(pixel_values.shape)
        if key not in self.images:
            vision = self.bb.model.vision_model.embeddings.patch_embedding.weight
            pixels = torch.zeros(key, dtype=vision.dtype, device=vision.device)
            out: list[torch.Tensor] = [torch.empty(0)]

            def run() -> None:
                out[0] = runner.image_features(self.bb, pixels)

            graphed = Graphed(run)
            if self.capture:
                capture([graphed], warmups=1)
            self.images[key] = (pixels, graphed, out)
        pixels, graphed, out = self.images[key]
        pixels.copy_(pixel_values)
        graphed.replay()
        return out[0]

    @torch.inference_mode()
    def prefix(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`runner.prefix` with the image side replayed: LM input embeddings (1, P, D') and mask (1, P)."""
        features = self.image_features(pixel_values)  # (1, Q, D')
        return runner.prefix(self.bb, pixel_values, input_ids, attention_mask, features=features)

    # --- decoding ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def decode(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        *,
        max_new_tokens: int,
        threshold: float | None,
        eos_ids: list[int],
        schedule: list[int] | None = None,
    ) -> dict:
        """One row: the fields of a `GenerateResult` (tokens (1, T), exit layers, confidences, costs).
        `schedule`: a replay (`engine.generate`), token t stops after the segment ending at layer
        schedule[t]; every status read a live decode makes up to there is still made."""
        if pixel_values.shape[0] != 1:
            raise FreeBenchError(
                f"the graphs engine decodes batch 1 (got {pixel_values.shape[0]} rows); "
                "batched decoding with compaction is the eager engine's (--engine eager)"
            )
        embeds, mask = self.prefix(pixel_values, input_ids, attention_mask)  # (1, P, D')
        embeds = embeds[:, mask[0].bool()]  # a lone row needs no padding
        length = embeds.shape[1]
        if length + max_new_tokens > self.capacity:
            raise FreeBenchError(
                f"prompt of {length} positions + {max_new_tokens} new tokens exceed the graphs engine's "
                f"capacity {self.capacity}"
            )
        if self.capture and not self.step.captured:
            self._capture(self.step)
        if threshold is not None:
            self.threshold.fill_(float(threshold))
        stops = None
        if schedule is not None:
            if self.method is None:
                raise FreeBenchError("an exit schedule needs exits: the full model has no exit to stop at")
            ends = [end for _, end in self.bounds]
            stops = [ends.index(k) for k in check_schedule(schedule, self.exits, self.bb.num_layers)]
            max_new_tokens = len(stops)
        layers, tokens, scores, spent = [], [], [], 0.0
        eos = set(eos_ids)
        for t in range(max_new_tokens):
            forced = None if stops is None else stops[t]
            if t == 0:
                layer, token, score, cost = self._prompt_step(embeds, forced)
            else:
                self.ids.fill_(tokens[-1])
                self.masks.position.fill_(length + t - 1)
                layer, token, score, cost = self._run(self.step, forced)
            layers.append(layer)
            tokens.append(token)
            scores.append(score)
            spent += cost
            if token in eos:
                break
        dev = self.bb.device
        n = len(tokens)
        return {
            "tokens": torch.tensor([tokens], dtype=torch.long, device=dev),
            "exit_layers": torch.tensor([layers], dtype=torch.long, device=dev),
            "confidences": torch.cat(scores)[None],  # (1, T)
            "cost_layers": spent,
            "full_cost_layers": n * self.cost.full,
        }

    def _address(self, positions: torch.Tensor) -> None:
        """The KV positions (q,) the next layer calls write (the captured graphs read `masks.position`)."""
        self.kv.index = positions
        if self.gen_kv is not None:
            self.gen_kv.index = positions

    def _prompt_step(
        self, embeds: torch.Tensor, forced: int | None = None
    ) -> tuple[int, int, torch.Tensor, float]:
        """The first new token from the whole prompt (1, P, D'): the pass of its length."""
        p = self._prompt_pass(embeds.shape[1])
        if self.capture and not p.captured:
            self._capture(p)
        assert p.embeds is not None
        p.embeds.copy_(embeds)
        return self._run(p, forced)

    def _run(self, p: Pass, forced: int | None = None) -> tuple[int, int, torch.Tensor, float]:
        """Segment after segment until an exit fires (one status read each: the exit check's sync;
        a static exit needs none), then, under `propagate`, that exit's K/V fill. `forced`: the segment
        a replay stops after, whatever the status says (read all the same, as a live decode does)."""
        self._address(p.positions)
        last = len(p.segments) - 1
        stop = last if forced is None else forced
        for i, seg in enumerate(p.segments):
            seg.replay()
            if i == last or self.policy == "full":
                continue
            fired = self.rule == "static" or bool(self.status[0])
            if (fired and forced is None) or i == forced:
                stop = i
                break
        if self.policy == "propagate" and stop < len(self.exits):
            p.fills[self.bounds[stop][1]].replay()
        return self._decided(stop, forced is not None)

    def _decided(self, stop: int, forced: bool = False) -> tuple[int, int, torch.Tensor, float]:
        """(exit layer, token, score (1,) on the device, cost in layer-equivalents) of a step that ran
        segments 0..stop; reading the status is the step's last host sync. A replay (`forced`) left at
        segment `stop` whether or not its rule fired: its token is the first that fired, else the one
        in flight."""
        decided, token, exit_at = self.status.tolist()
        if forced:
            exit_at, token = self.bounds[stop][1], token if decided else int(self.ids[0, 0])
        assert decided or forced, "the last segment always decides"
        ran_to, reads, L = self.bounds[stop][1], self.rule in _READS_LOGITS, self.bb.num_layers
        cost = ran_to + (self.cost.head if ran_to == L else 0.0)  # same prices as engine.decode_exits
        for k in self.exits:
            if k <= ran_to:
                cost += self.cost.check(k, reads) + (self.cost.head if not reads and k == exit_at else 0.0)
        if self.policy == "propagate" and exit_at < L:
            deeper = len([e for e in self.exits if e > exit_at]) if self.generators is not None else 0
            cost += (L - exit_at + deeper) * self.cost.kv_fill
        return int(exit_at), int(token), self.score.clone(), cost
