"""`FusedOPT`: HF's OPT decoder layer with q/k/v as one product, for the graphs engine near the floor."""

from __future__ import annotations

import pytest
import torch

from free_bench.core.errors import FreeBenchError
from free_bench.engine.graphs.fused import FusedOPT
from free_bench.engine.graphs.static import StaticKV, StaticMasks
from free_bench.models import from_hf
from free_bench.models.tiny import build_tiny_blip2

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("overrides", [{}, {"do_layer_norm_before": False}, {"enable_bias": False}])
def test_a_fused_layer_is_hfs_layer(overrides: dict) -> None:
    """Prompt pass (q = P) then two token steps through every layer: the same hidden states and the same
    K/V written as HF's `OPTDecoderLayer` with the same cache (post-norm OPT-350m style and bias-free too)."""
    bb = from_hf(build_tiny_blip2("opt", seed=3, **overrides))
    assert all(x.do_layer_norm_before == overrides.get("do_layer_norm_before", True) for x in bb.layers)
    fused, masks, capacity = FusedOPT(bb), StaticMasks(bb, 16), 16
    caches = {name: StaticKV(bb.num_layers, 1, capacity, bb.device) for name in ("hf", "fused")}
    torch.manual_seed(0)
    for positions in (torch.arange(5), torch.tensor([5]), torch.tensor([6])):
        masks.position.fill_(int(positions[-1]))
        mask = masks.prompt_mask(5) if len(positions) > 1 else masks.step_mask()  # (1, 1, q, C)
        x = torch.randn(1, len(positions), bb.layers[0].self_attn.embed_dim)  # (1, q, D)
        hidden = {"hf": x, "fused": x}
        for cache in caches.values():
            cache.index = positions
        for j, layer in enumerate(bb.layers):
            hidden["hf"] = layer(hidden["hf"], attention_mask=mask, cache=caches["hf"])
            hidden["fused"] = fused(j, hidden["fused"], mask, caches["fused"])
            torch.testing.assert_close(hidden["fused"], hidden["hf"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(caches["fused"].keys, caches["hf"].keys, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(caches["fused"].values, caches["hf"].values, rtol=1e-5, atol=1e-5)


def test_fused_weights_are_the_layers_q_k_v() -> None:
    bb = from_hf(build_tiny_blip2("opt", seed=4))
    fused = FusedOPT(bb)
    a = bb.layers[1].self_attn
    d = a.embed_dim
    assert fused.qkv_weight[1].shape == (3 * d, d)
    assert torch.equal(fused.qkv_weight[1][d : 2 * d], a.k_proj.weight)
    assert torch.equal(fused.qkv_bias[1][2 * d :], a.v_proj.bias)
    with pytest.raises(FreeBenchError, match="OPT"):
        FusedOPT(from_hf(build_tiny_blip2("t5", seed=4)))
