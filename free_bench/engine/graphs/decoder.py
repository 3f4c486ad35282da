"""The `graphs` engine: batch-1 early-exit decoding replayed as CUDA graphs, one per segment.

The eager engine launches every kernel from Python, about 0.45 ms per layer per token on an H200
whatever the width: skipping a layer then saves mostly Python time, which flatters early exit. Here
the layers between two consulted exits, together with the exit's check and the bookkeeping of the
decision, are captured once as one CUDA graph (`Segment`); a token replays segment after segment
and reads one small status tensor after each (the exit check's device-to-host sync, the one cost a
real deployment cannot avoid), stopping at the first exit that fires. Under `propagate` one more
graph per exit fills the skipped layers' K/V (CALM's propagation, `runner_skip.StackedKV`).

Shapes must not change between tokens, so the KV cache has a fixed capacity and a decoder holds a
fixed number of rows B (its bucket: batch 1 is the latency setting CUDA graphs are for) of an OPT
backbone under the `propagate` or `full` policy. In a bucket every row runs every segment until all
rows have decided (rows that exited ride along, their token kept; under `propagate` their skipped
layers' K/V are then overwritten from their exit, as the eager engine does); rows that finished (EOS)
ride along discarded until `graphs.batched` moves the rest into a smaller bucket. The prompt pass is captured the same way once per prompt length (a
`Pass` of q = P positions beside the token step's q = 1), and the image side of the prefix (vision
tower, Q-Former, projection: fixed shapes at batch 1) once per image size: for a VQA answer of one
to three tokens these are most of the work. Without CUDA (`capture=False`) the same fixed-shape
code runs eagerly, which is how the CPU tests check it; timings of that are not the engine's.

With `conditional` (the default where torch captures CUDA graph conditional nodes) a step is one graph:
the segments after the first nested in IF nodes on "some row is undecided", the fills in IF nodes on
"a row left here" (`graphs.conditional`), so the host reads the step's status once. What differs
between OPT and T5 (positions, masks, the prompt or encoder, layer calls) is `graphs.lm`'s.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from free_bench.core.errors import FreeBenchError
from free_bench.engine.cost import CostModel, cost_model
from free_bench.engine.exit_runtime import LIVE_RULES, check_schedule, verdict
from free_bench.engine.graphs import conditional as cond
from free_bench.engine.graphs.accounting import Collected, StepPrices
from free_bench.engine.graphs.capture import Graphed, Pass, capture
from free_bench.engine.graphs.compiling import compiled, shared_layer
from free_bench.engine.graphs.fused import FusedOPT
from free_bench.engine.graphs.lm import lm_steps
from free_bench.engine.graphs.prefix import ImageSide
from free_bench.engine.graphs.static import StaticKV
from free_bench.engine.skip import kv_projection, stacked_kv
from free_bench.methods.heads import attention_modules
from free_bench.methods.mue import cosine
from free_bench.methods.protocol import ExitMethod
from free_bench.models import runner
from free_bench.models.base import Backbone

GRAPH_POLICIES = ("propagate", "full")
_READS_LOGITS = ("max_prob", "entropy", "patience")


class GraphDecoder:
    """Decodes up to `batch_size` rows with `method` (None: the full model), reusing its graphs."""

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
        batch_size: int = 1,
        tune: bool = False,
        conditional: bool | None = None,
        cross_capacity: int | None = None,
    ) -> None:
        if kv_policy not in GRAPH_POLICIES:
            raise FreeBenchError(
                f"the graphs engine runs the kv policies {list(GRAPH_POLICIES)}, not {kv_policy!r} "
                "(deferred catches positions up in variable-length calls: use --engine eager)"
            )
        if tune and not (fuse and (compile_segments or compile_layers)):
            raise FreeBenchError("tune sets how inductor compiles the fused layers: it needs fuse=True and compiling")
        if compile_layers and (not fuse or compile_segments):
            raise FreeBenchError(
                "compile_layers compiles runner_fused's layer function: it needs fuse=True, and replaces "
                "compile_segments"
            )
        if batch_size < 1:
            raise FreeBenchError(f"a graphs decoder holds at least one row, got batch_size={batch_size}")
        self.batch_size = B = batch_size
        self.bb, self.method, self.policy, self.capacity = backbone, method, kv_policy, capacity
        self.capture = backbone.device.type == "cuda" if capture is None else capture
        if self.capture and backbone.device.type != "cuda":
            raise FreeBenchError(f"CUDA graphs need a CUDA device; the backbone is on {backbone.device}")
        if conditional is None:  # one graph per step wherever the build captures conditional nodes
            conditional = self.capture and cond.supported()
        if conditional and self.capture and not cond.supported():
            raise FreeBenchError(
                "one graph per step needs CUDA graph conditional nodes (a CUDA >= 12.4 build of torch); "
                "pass conditional=False for one graph per segment"
            )
        self.conditional = conditional
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
        self.prices = StepPrices(self.cost, consulted, self.rule in _READS_LOGITS, kv_policy == "propagate",
                                 method is not None and method.generators is not None)  # fmt: skip
        self.generators = None if method is None else method.generators
        # inductor writes whole buffers in place, views by copies
        separate = bool(compile_segments) or bool(compile_layers)
        self.kv = StaticKV(L, B, capacity, dev, separate=separate)
        self.gen_kv = (
            None
            if self.generators is None
            else StaticKV(len(self.generators.layers), B, capacity, dev, separate=separate)
        )
        self.ids = torch.zeros((B, 1), dtype=torch.long, device=dev)  # (B, 1) tokens in flight
        self.threshold = torch.zeros((), dtype=torch.float32, device=dev)
        self.live = torch.ones(B, dtype=torch.bool, device=dev)  # (B,) rows still decoding
        # the step's decision so far, updated in place by each segment
        self.decided = torch.zeros(B, dtype=torch.bool, device=dev)
        self.token = torch.zeros(B, dtype=torch.long, device=dev)
        self.score = torch.zeros(B, dtype=torch.float32, device=dev)
        self.layer = torch.zeros(B, dtype=torch.long, device=dev)
        self.done = torch.zeros(1, dtype=torch.long, device=dev)  # every row decided: the per-segment read
        self.go = torch.ones((), dtype=torch.bool, device=dev)  # some row undecided: the next segment's IF
        self.left = {k: torch.zeros((), dtype=torch.bool, device=dev) for k in consulted}  # a fill's IF
        self.status = torch.zeros((3, B), dtype=torch.long, device=dev)  # [decided, token, exit layer] per row
        self._pat_token = torch.zeros(B, dtype=torch.long, device=dev)
        self._pat_count = torch.zeros(B, dtype=torch.long, device=dev)
        self._warming = False  # capture's warm-up: every conditional branch runs
        self.bounds = list(zip((0, *consulted), (*consulted, L), strict=True))
        # each segment's last layer as a buffer, not a constant of its code: segments of equal length
        # then trace to equal graphs, and inductor compiles one for all (its FX graph cache)
        self._ends = [torch.full((1,), end, dtype=torch.long, device=dev) for _, end in self.bounds]
        # q/k/v as one product and a direct attention call (runner_fused): fewer, larger kernels per layer
        # compile_layers: one compiled layer function for every layer of the token step, traced once
        # per process and shape rather than once per segment
        layer_fn = shared_layer(tune) if compile_layers else None
        self.fused = FusedOPT(backbone, layer_fn=layer_fn, split_bias=tune) if fuse else None
        self.lm = lm_steps(backbone, capacity, B, self.kv, self.gen_kv, self.generators, self.fused, cross_capacity,
                           self.capture)  # fmt: skip

        def token_input() -> torch.Tensor:  # (B, 1, D): the tokens in flight at `lm.position`
            return self.lm.embed(self.bb.embed_tokens(self.ids), self.lm.position)

        self.step = self._pass(self.lm.position, token_input, self.lm.context)
        if compile_segments:  # inductor fuses the layers' small kernels; capture then replays its code
            # a string is torch.compile's mode, e.g. "max-autotune-no-cudagraphs" (benchmarked matmul
            # kernels for batch 1; the graphs stay this decoder's own)
            mode = compile_segments if isinstance(compile_segments, str) else None
            for seg in self.step.segments:
                seg.run = compiled(seg.run, mode, tune)
        self.prompts: dict[int, Pass] = {}  # prompt length P -> its pass, built on first use
        self.spans: dict[int, tuple] = {}  # q -> a full-depth pass over q positions (graphs.speculative)
        self.images = ImageSide(backbone, self.capture)

    @property
    def step_mode(self) -> str:
        """How a step is replayed, as recorded beside its timings."""
        return cond.graph_step_mode(self.conditional)

    # --- what a segment computes (q positions: 1 for the token step, P for a prompt) -----------
    def _segment(self, i: int, hidden: torch.Tensor, ctx) -> torch.Tensor:
        start, end = self.bounds[i]
        previous = None
        for j in range(start, end):
            if j == end - 1 and self.rule == "cosine":
                previous = hidden[:, -1]  # (B, D) input of layer `end`
            hidden = self.lm.layer(j, hidden, ctx)  # (B, q, D)
        if end == self.bb.num_layers:
            logits = self.bb.logits_from_hidden(hidden[:, -1]).float()  # (B, V)
            token, score = logits.argmax(-1), logits.softmax(-1).amax(-1)
            fired = torch.ones_like(self.decided)
        else:
            token, score, fired = self._check(i, end, hidden, ctx, previous)
        # a finished row counts as decided from the first segment on: it never holds the step up
        new = fired & ~self.decided if i else fired & self.live
        self.token.copy_(torch.where(new, token, self.token))
        self.score.copy_(torch.where(new, score.float(), self.score))
        self.layer.copy_(torch.where(new, self._ends[i], self.layer))
        self.decided.copy_(self.decided | new if i else new | ~self.live)
        self.done.copy_(self.decided.all().long()[None])
        self.go.copy_(~self.decided.all())
        self.status.copy_(torch.stack([self.decided.long(), self.token, self.layer]))
        return hidden

    def _check(
        self, i: int, k: int, hidden: torch.Tensor, ctx, previous: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Exit k's rule on layer k's output (B, q, D): (token, score, fired), each (B,)."""
        m = self.method
        assert m is not None
        last = hidden[:, -1:]  # (B, 1, D)
        if self.generators is not None:  # FREE/distill: a decoder layer with its own K/V
            last = self.lm.generator(self.generators.layers[str(k)], hidden, ctx)[:, -1:]
        elif self.rule != "cosine":
            last = m.exit_hidden(k, last)
        logits = m.head_logits(k, last)[:, 0].float()  # (B, V)
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

    def _pass(self, positions: torch.Tensor, first: Callable[[], torch.Tensor], context: Callable) -> Pass:
        """A step of q = len(positions) positions: `first()` is layer 1's input (B, q, D), `context()`
        what a layer call reads besides it (`graphs.lm`); each segment reads the previous one's output
        buffer and writes its own."""
        q, dtype, dev, B = positions.shape[0], self.bb.dtype, self.bb.device, self.batch_size
        outputs = [torch.zeros((B, q, self.lm.width), dtype=dtype, device=dev) for _ in self.bounds]  # (B, q, D)

        def segment(i: int) -> Callable[[], None]:
            def run() -> None:
                hidden = first() if i == 0 else outputs[i - 1]
                outputs[i].copy_(self._segment(i, hidden, context()))

            return run

        def fill(i: int) -> Callable[[], None]:  # propagate: exit i's output into the K/V above it
            def run() -> None:
                self._fill(self.bounds[i][1], outputs[i])

            return run

        fills = {k: Graphed(fill(i)) for i, k in enumerate(self.exits)} if self.policy == "propagate" else {}
        segments = [Graphed(segment(i)) for i in range(len(self.bounds))]
        step = cond.step_function(segments, fills, go=self.go, left=self.left, layer=self.layer, live=self.live,
                                  every_segment=self.policy == "full", warming=lambda: self._warming)  # fmt: skip
        whole = Graphed(step) if self.conditional else None
        return Pass(positions, outputs, segments, fills, whole=whole)

    def _prompt_pass(self, length: int) -> Pass:
        """The pass for prompts of `length` positions (built, and captured, on first use)."""
        if length not in self.prompts:
            dev = self.bb.device
            positions = torch.arange(length, device=dev)  # (P,)
            embeds = torch.zeros(
                (self.batch_size, length, self.bb.embed_tokens.embedding_dim), dtype=self.bb.dtype, device=dev
            )
            p = self._pass(positions, lambda: self.lm.embed(embeds, positions), lambda: self.lm.context(positions))
            p.embeds = embeds
            self.prompts[length] = p
        return self.prompts[length]

    def _fill(self, k: int, hidden: torch.Tensor) -> None:
        """The rows that left at exit k: layer k's output (B, q, D) into the K/V above it (theirs only)."""
        rows = None if self.batch_size == 1 else (self.layer == k) & self.live  # (B,)
        keys, values = stacked_kv(self.bb)(hidden, k)  # (L - k, B, H, q, Dh)
        self.kv.write_layers(k, keys.to(hidden.dtype), values.to(hidden.dtype), rows=rows)
        if self.generators is not None and self.gen_kv is not None:
            for deeper in (e for e in self.exits if e > k):
                layer = self.generators.layers[str(deeper)]
                key, value = kv_projection(self.bb.lm_type, layer, hidden)
                self.gen_kv.update(key.to(hidden.dtype), value.to(hidden.dtype),
                                   attention_modules(layer)[0].layer_idx, rows=rows)  # fmt: skip

    # --- capture ----------------------------------------------------------------------------------
    def _capture(self, p: Pass, parts: bool = False) -> None:
        """Warm `p`'s graphs on a side stream (as torch.cuda.graphs asks), then capture each: its whole
        step (one graph per step), or with `parts` (or one graph per segment) every segment and fill.
        The token step warms at slot C-1, which every real token writes before any token reads it; a
        prompt pass warms on the slots its prompt is about to overwrite."""
        if p is self.step:
            self.lm.position.fill_(self.capacity - 1)
        self._address(p.positions)
        self._warming = True
        try:
            if not (parts or not self.conditional):
                assert p.whole is not None
                try:
                    capture([p.whole])
                except RuntimeError as err:  # recorded (`conditional.REFUSED`), logged, and per segment from here
                    cond.refused(err)
                    torch.cuda.synchronize()
                    self.conditional = False
                    for other in (self.step, *self.prompts.values()):
                        other.captured = other.parts_captured
            if parts or not self.conditional:
                capture(p.segments + list(p.fills.values()))
                p.parts_captured = True
        finally:
            self._warming = False
        p.captured = p.captured or not parts or not self.conditional

    def _ready(self, p: Pass, parts: bool) -> None:
        """`p` captured (on CUDA) for what the next steps replay: its whole step, or its parts too
        (a replay stops at a forced segment)."""
        if not self.capture:
            return
        if not p.captured:
            self._capture(p)
        if parts and self.conditional and not p.parts_captured:
            self._capture(p, parts=True)

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Vision tower -> Q-Former -> projection (B, Q, D'), replayed per image size once captured."""
        return self.images.features(pixel_values)

    @torch.inference_mode()
    def prefix(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`runner.prefix` with the image side replayed: LM input embeddings (b, P, D') and mask (b, P)."""
        features = self.image_features(pixel_values)  # (b, Q, D')
        return runner.prefix(self.bb, pixel_values, input_ids, attention_mask, features=features)

    # --- decoding ---------------------------------------------------------------------------------
    def _address(self, positions: torch.Tensor) -> None:
        """The KV positions (q,) the next layer calls write (the captured graphs read `lm.position`)."""
        self.kv.index = positions
        if self.gen_kv is not None:
            self.gen_kv.index = positions

    def _run(self, p: Pass, forced: int | None = None) -> int:
        """Segment after segment until every row has decided (one read each: the exit check's sync; a
        static exit needs none); returns the last segment run. `forced`: the segment a replay stops
        after, whatever the status says (read all the same, as a live decode does)."""
        self._address(p.positions)
        last = len(p.segments) - 1
        stop = last if forced is None else forced
        for i, seg in enumerate(p.segments):
            seg.replay()
            if i == last or self.policy == "full":
                continue
            fired = self.rule == "static" or bool(self.done[0])
            if (fired and forced is None) or i == forced:
                stop = i
                break
        return stop

    @torch.inference_mode()
    def start(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        *,
        max_new_tokens: int,
        threshold: float | None,
        replay: bool = False,
    ) -> None:
        """Load n <= B rows for decoding (the bucket's other rows ride along, finished): their prefix
        (OPT: the prompt, left-padded to one length; T5: through the encoder) and the first step's
        input; captures the token step on first use (and its parts for a `replay` of forced exits)."""
        n, B = pixel_values.shape[0], self.batch_size
        if n > B:
            raise FreeBenchError(
                f"this graphs decoder holds {B} row(s), got {n}"
                + (" (batch-1 decoder: batches go through engine.graphs.batched)" if B == 1 else "")
            )
        if n < B:  # fill the bucket with copies of row 0, marked finished
            fill = [0] * (B - n)
            pixel_values = torch.cat([pixel_values, pixel_values[fill]])
            if input_ids is not None:
                attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
                input_ids, attention_mask = torch.cat([input_ids, input_ids[fill]]), torch.cat([attention_mask, attention_mask[fill]])
        embeds, mask = self.prefix(pixel_values, input_ids, attention_mask)  # (B, P, D'), (B, P)
        first = self.lm.load(embeds, mask)  # (B, P', D'): OPT's prompt; T5's start token
        length = first.shape[1]
        if length + max_new_tokens > self.capacity:
            raise FreeBenchError(
                f"prompt of {length} positions + {max_new_tokens} new tokens exceed the graphs engine's "
                f"capacity {self.capacity}"
            )
        self._ready(self.step, replay)
        if threshold is not None:
            self.threshold.fill_(float(threshold))
        self.live.copy_(torch.arange(B, device=self.live.device) < n)
        self.token.zero_()
        self._live = [r < n for r in range(B)]
        self._embeds, self._length, self._t = first, length, 0

    @torch.inference_mode()
    def advance(self, forced: int | None = None) -> dict:
        """One step for every row in flight: the prompt pass first, then one token. Returns the rows'
        `tokens`, `layers` (host lists over the bucket), `scores` ((B,) on the device), `live` (the
        rows that took a token), `row_costs` (theirs) and `batch_cost` (layer-equivalents).
        `forced` (a replay, batch 1): the segment to stop after, whatever the rule says."""
        if self._t == 0:
            p = self._prompt_pass(self._length)
            self._ready(p, forced is not None)
            assert p.embeds is not None
            p.embeds.copy_(self._embeds)
        else:
            p = self.step
            self.ids.copy_(self.token[:, None])
            self.lm.position.fill_(self._length + self._t - 1)
        self._t += 1
        return self._finish(p, forced)

    def _finish(self, p: Pass, forced: int | None) -> dict:
        L, live = self.bb.num_layers, list(self._live)
        if forced is None and self.conditional:
            assert p.whole is not None
            self._address(p.positions)
            p.whole.replay()  # fills included
            _, tokens, layers = self.status.tolist()  # (3, B): the step's one host sync
            ran_to = L if self.policy == "full" else max(layers[r] for r in range(self.batch_size) if live[r])
            taken = sorted({layers[r] for r in range(self.batch_size) if live[r]})
        else:
            stop = self._run(p, forced)
            _, tokens, layers = self.status.tolist()  # (3, B): the step's last host sync
            ran_to = self.bounds[stop][1]
            if forced is not None:
                layers = [ran_to] * self.batch_size
            taken = sorted({layers[r] for r in range(self.batch_size) if live[r]})
            if self.policy == "propagate":
                for k in (k for k in taken if k < L):
                    p.fills[k].replay()
        row_ran = (lambda k: L) if self.policy == "full" else (lambda k: k)
        return {
            "tokens": tokens, "layers": layers, "scores": self.score.clone(), "live": live,
            "row_costs": [self.prices.row(layers[r], row_ran(layers[r])) for r in range(self.batch_size) if live[r]],
            "batch_cost": self.prices.batch(ran_to, taken),
        }  # fmt: skip

    def finish_rows(self, rows: list[int]) -> None:
        """Rows of the bucket that emitted EOS: they ride along discarded from the next step on."""
        if not rows:
            return
        for r in rows:
            self._live[r] = False
        self.live[torch.tensor(rows, device=self.live.device)] = False

    @property
    def live_rows(self) -> list[int]:
        return [r for r, alive in enumerate(self._live) if alive]

    @torch.inference_mode()
    def adopt(self, source: GraphDecoder, rows: list[int]) -> None:
        """Continue `source`'s rows `rows` in this (smaller) bucket, between steps: their K/V, offsets
        or encoder K/V, and tokens in flight move into rows 0..len(rows)-1 (compaction)."""
        self._ready(self.step, False)  # warm-up writes buffers: before the rows move in
        n, dev = len(rows), self.live.device
        idx = torch.tensor(rows, device=dev)
        self.kv.take_rows(source.kv, idx)
        if self.gen_kv is not None and source.gen_kv is not None and source.gen_kv.keys is not None:
            self.gen_kv.take_rows(source.gen_kv, idx)
        every = idx[torch.arange(self.batch_size, device=dev) % n]  # (B,) the rows, repeated to fill
        self.lm.take_rows(source.lm, every)
        self.token.copy_(source.token[every])
        self.threshold.copy_(source.threshold)
        self.live.copy_(torch.arange(self.batch_size, device=dev) < n)
        self._live = [r < n for r in range(self.batch_size)]
        self._embeds, self._length, self._t = None, source._length, source._t

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
        pad_id: int = 0,
        schedule: list[int] | None = None,
    ) -> dict:
        """n <= B rows in this bucket, rows riding along to the end: the fields of a `GenerateResult`
        (tokens (n, T), exit layers, confidences, per-row and batch costs). `schedule`: a replay of one
        row (`engine.generate`), token t stops after the segment ending at layer schedule[t]; every
        status read a live decode makes up to there is still made."""
        stops = None
        if schedule is not None:
            if self.method is None:
                raise FreeBenchError("an exit schedule needs exits: the full model has no exit to stop at")
            if pixel_values.shape[0] != 1:
                raise FreeBenchError(f"an exit schedule replays one row, got {pixel_values.shape[0]}")
            ends = [end for _, end in self.bounds]
            stops = [ends.index(k) for k in check_schedule(schedule, self.exits, self.bb.num_layers)]
            max_new_tokens = len(stops)
        self.start(pixel_values, input_ids, attention_mask, max_new_tokens=max_new_tokens, threshold=threshold,
                   replay=stops is not None)  # fmt: skip
        rows = Collected(pixel_values.shape[0], max_new_tokens, self.cost.full, eos_ids, pad_id, self.bb.device)
        for t in range(max_new_tokens):
            step = self.advance(None if stops is None else stops[t])
            self.finish_rows(rows.record(step, list(range(rows.n))))
            if not self.live_rows:
                break
        return rows.fields()
