"""OPT decoder layers for decoding near the weight-read floor: q, k and v as one matrix product.

At batch 1 a decoder layer is a handful of matrix-vector products, each bound by reading its weights;
an H200 profile at commit 8c2b62a (OPT-2.7b shape, bf16, one CUDA graph) read a
2560x2560 weight at 1.7 TB/s (7.6 us) but a 7680x2560 one at 3.1 TB/s (12.6 us): three separate q/k/v
products cost 22.7 us a layer, one fused product 12.6. HF's `OPTDecoderLayer` also pays per layer for
its attention interface (mask conversion, kernels for scaling and layout). `FusedOPT` computes the same
layer from the same modules' weights with the fused product and a direct `scaled_dot_product_attention`
call, as one function of the weights (`fused_layer`), which writes K/V into the layer's buffers of the
graphs engine's `StaticKV` at the positions being decoded. Only the q/k/v weights are copied
(concatenated once). Being a function of its weights, it can be compiled once for every layer.

The arithmetic is the layer's: same norms, same scaling of q after its projection, same residuals; on
CPU in fp32 the tokens equal HF `generate()` (tests). A fused product may round differently from three
separate ones in bf16 on a GPU, so the benchmarks report token agreement rather than assume it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers.activations import ACT2FN

from free_bench.core.errors import FreeBenchError
from free_bench.models.base import Backbone

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}


def split_bias_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.linear` as a matrix product and a separate bias add. Traced by inductor with
    `coordinate_descent_tuning`, a product with one row becomes a tuned reduction that reads the weight
    near the memory bandwidth (inductor's `mm` decomposition; gpt-fast's batch-1 setting), which
    `F.linear`'s fused bias (addmm) does not get."""
    out = x @ weight.t()
    return out if bias is None else out + bias


def fused_layer(
    hidden: torch.Tensor,
    mask: torch.Tensor | None,
    keys: torch.Tensor,
    values: torch.Tensor,
    index: torch.Tensor,
    weights: tuple,
    *,
    heads: int,
    scaling: float,
    pre_norm: bool,
    eps: tuple[float, float],
    act: Callable[[torch.Tensor], torch.Tensor],
    linear: Callable[..., torch.Tensor] = F.linear,
) -> torch.Tensor:
    """`FusedOPT`'s layer as a function of its weights and its layer's K/V buffers (B, H, C, Dh),
    written at `index`. Every layer of a model shares it, so torch.compile traces and compiles it once
    for all of them (`FusedOPT(layer_fn=...)`), where compiling each segment of layers traces every
    segment of every decoder anew. `weights`: `FusedOPT.weights[j]`."""
    ln1_w, ln1_b, qkv_w, qkv_b, out_w, out_b, ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b = weights
    b, q, d = hidden.shape
    head_dim = d // heads
    residual = hidden
    x = F.layer_norm(hidden, (d,), ln1_w, ln1_b, eps[0]) if pre_norm else hidden
    query, key, value = linear(x, qkv_w, qkv_b).split(d, dim=-1)  # (B, q, D) each
    query = (query * scaling).view(b, q, heads, head_dim).transpose(1, 2)  # (B, H, q, Dh)
    keys.index_copy_(2, index, key.view(b, q, heads, head_dim).transpose(1, 2))  # (B, H, C, Dh) in place
    values.index_copy_(2, index, value.view(b, q, heads, head_dim).transpose(1, 2))
    out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=1.0)  # (B, H, q, Dh)
    hidden = residual + linear(out.transpose(1, 2).reshape(b, q, d), out_w, out_b)
    if not pre_norm:
        hidden = F.layer_norm(hidden, (d,), ln1_w, ln1_b, eps[0])
    residual = hidden
    x = F.layer_norm(hidden, (d,), ln2_w, ln2_b, eps[1]) if pre_norm else hidden
    hidden = residual + linear(act(linear(x, fc1_w, fc1_b)), fc2_w, fc2_b)
    if not pre_norm:
        hidden = F.layer_norm(hidden, (d,), ln2_w, ln2_b, eps[1])
    return hidden  # (B, q, D)


class FusedOPT:
    """Callable like an `OPTDecoderLayer` at decode time: `fused(j, hidden, mask, cache)` runs layer j.

    Every step runs `fused_layer`; with `layer_fn` (`fused_layer` compiled), single-position steps
    (q = 1, the token step) run that instead, on a `runner_static.StaticKV(separate=True)` cache."""

    def __init__(
        self, backbone: Backbone, layer_fn: Callable[..., torch.Tensor] | None = None, split_bias: bool = False
    ) -> None:
        if backbone.lm_type != "opt":
            raise FreeBenchError(f"fused q/k/v layers are OPT's; {backbone.spec!r} is {backbone.lm_type}")
        self.layers = list(backbone.layers)
        weights, biases = [], []
        with torch.no_grad():
            for layer in self.layers:
                a = layer.self_attn
                weights.append(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]))  # (3D, D)
                has_bias = a.q_proj.bias is not None
                biases.append(torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]) if has_bias else None)
        self.qkv_weight = weights
        self.qkv_bias = biases
        self.layer_fn = layer_fn
        first = self.layers[0]
        # one activation object per name for the process: a compiled layer_fn guards on the object
        name = backbone.lm_config.activation_function
        act = _ACTIVATIONS.setdefault(name, ACT2FN[name])
        self.consts = {"heads": first.self_attn.num_heads, "scaling": float(first.self_attn.scaling),
                       "pre_norm": bool(first.do_layer_norm_before), "act": act,
                       "eps": (float(first.self_attn_layer_norm.eps), float(first.final_layer_norm.eps)),
                       "linear": split_bias_linear if split_bias else F.linear}  # fmt: skip
        self.weights = [
            (layer.self_attn_layer_norm.weight, layer.self_attn_layer_norm.bias, self.qkv_weight[j],
             self.qkv_bias[j], layer.self_attn.out_proj.weight, layer.self_attn.out_proj.bias,
             layer.final_layer_norm.weight, layer.final_layer_norm.bias, layer.fc1.weight, layer.fc1.bias,
             layer.fc2.weight, layer.fc2.bias)
            for j, layer in enumerate(self.layers)
        ]  # fmt: skip

    def __call__(self, j: int, hidden: torch.Tensor, mask: torch.Tensor | None, cache) -> torch.Tensor:
        """Layer j (0-based) on hidden (1, q, D), its K/V written into `cache`'s buffers of that layer
        (a `runner_static.StaticKV`) at `cache.index`; mask as HF's attention takes it (bool for sdpa,
        additive otherwise), (1, 1, q, C). Token steps (q = 1) go through `layer_fn` when given."""
        attn = self.layers[j].self_attn
        b, q, _ = hidden.shape
        keys, values = cache.layer_buffers(
            attn.layer_idx, hidden.new_empty((b, attn.num_heads, q, attn.head_dim))
        )
        fn = self.layer_fn if self.layer_fn is not None and q == 1 else fused_layer
        return fn(hidden, mask, keys, values, cache.index, self.weights[j], **self.consts)  # (1, q, D)
