"""OPT decoder layers for decoding near the weight-read floor: q, k and v as one matrix product.

At batch 1 a decoder layer is a handful of matrix-vector products, each bound by reading its weights;
the H200 profile of session 9 (scratch/profile_floor.py, OPT-2.7b shape, bf16, one CUDA graph) read a
2560x2560 weight at 1.7 TB/s (7.6 us) but a 7680x2560 one at 3.1 TB/s (12.6 us): three separate q/k/v
products cost 22.7 us a layer, one fused product 12.6. HF's `OPTDecoderLayer` also pays per layer for
its attention interface (mask conversion, kernels for scaling and layout). `FusedOPT` computes the same
layer from the same modules' weights with the fused product and a direct `scaled_dot_product_attention`
call; it writes K/V through the same `cache.update` as HF's attention, so every KV policy and the
graphs engine's buffers work unchanged. Only the q/k/v weights are copied (concatenated once).

The arithmetic is the layer's: same norms, same scaling of q after its projection, same residuals; on
CPU in fp32 the tokens equal HF `generate()` (tests). A fused product may round differently from three
separate ones in bf16 on a GPU, so the benchmarks report token agreement rather than assume it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from free_bench.backbone.base import Backbone
from free_bench.errors import FreeBenchError


class FusedOPT:
    """Callable like an `OPTDecoderLayer` at decode time: `fused(j, hidden, mask, cache)` runs layer j."""

    def __init__(self, backbone: Backbone) -> None:
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

    def __call__(self, j: int, hidden: torch.Tensor, mask: torch.Tensor | None, cache) -> torch.Tensor:
        """Layer j (0-based) on hidden (1, q, D); K/V written through `cache.update`; mask as HF's
        attention takes it (bool for sdpa, additive otherwise), (1, 1, q, C)."""
        layer = self.layers[j]
        attn = layer.self_attn
        b, q, d = hidden.shape
        heads, head_dim = attn.num_heads, attn.head_dim
        residual = hidden
        x = layer.self_attn_layer_norm(hidden) if layer.do_layer_norm_before else hidden
        qkv = F.linear(x, self.qkv_weight[j], self.qkv_bias[j])  # (B, q, 3D)
        query, key, value = qkv.split(d, dim=-1)  # (B, q, D) each
        query = (query * attn.scaling).view(b, q, heads, head_dim).transpose(1, 2)  # (B, H, q, Dh)
        key = key.view(b, q, heads, head_dim).transpose(1, 2)
        value = value.view(b, q, heads, head_dim).transpose(1, 2)
        key, value = cache.update(key, value, attn.layer_idx)  # (B, H, C, Dh): the layer's whole buffers
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=1.0)  # (B, H, q, Dh)
        out = attn.out_proj(out.transpose(1, 2).reshape(b, q, d))  # (B, q, D)
        hidden = residual + out
        if not layer.do_layer_norm_before:
            hidden = layer.self_attn_layer_norm(hidden)
        residual = hidden
        x = layer.final_layer_norm(hidden) if layer.do_layer_norm_before else hidden
        hidden = residual + layer.fc2(layer.activation_fn(layer.fc1(x)))
        if not layer.do_layer_norm_before:
            hidden = layer.final_layer_norm(hidden)
        return hidden
