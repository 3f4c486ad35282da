"""Cost in layer-equivalents: the unit of the expected speedup every paper reports.

One layer-equivalent is one decoder layer applied to one decoding step (the prompt pass counts as
the step of the first new token, as papers count exit layers per generated token). Modules other
than a layer are priced by their weight-matmul size relative to a layer's, the FLOP share of a
token: the LM head (V x F) is `head`, an exit's adapter or generator layer adds its own parameters,
filling a skipped layer's K/V (CALM's propagation) costs its k/v projections. On OPT-2.7b the head
alone is about 1.6 layers, which is why exits are not free.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from free_bench.methods.protocol import ExitMethod
from free_bench.models.base import Backbone


def _params(modules: list[nn.Module]) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def _kv_params(backbone: Backbone, layer: nn.Module) -> int:
    if backbone.lm_type == "opt":
        attn = layer.self_attn
        return _params([attn.k_proj, attn.v_proj])
    attn = layer.layer[0].SelfAttention
    return _params([attn.k, attn.v])


@dataclass(frozen=True)
class CostModel:
    """Per-step prices, in layer-equivalents."""

    num_layers: int
    head: float  # final norm + LM head
    kv_fill: float  # k/v projections of one layer (propagate policy)
    exit_extra: dict[int, float]  # exit layer -> its own modules (adapter / generator layer)

    @property
    def full(self) -> float:
        """One step of the full model: every layer, then the head."""
        return self.num_layers + self.head

    def check(self, k: int, with_head: bool) -> float:
        """Evaluating exit k (its modules, and the head when the rule reads logits)."""
        return self.exit_extra.get(k, 0.0) + (self.head if with_head else 0.0)


def cost_model(backbone: Backbone, method: ExitMethod | None = None) -> CostModel:
    layer = backbone.layers[0]
    per_layer = float(_params([layer]))
    head = _params([backbone.lm_head] + ([backbone.final_norm] if backbone.final_norm is not None else []))
    extra = {}
    if method is not None:
        extra = {k: _params(method.exit_modules(k)) / per_layer for k in method.layers}
    return CostModel(
        num_layers=backbone.num_layers,
        head=head / per_layer,
        kv_fill=_kv_params(backbone, layer) / per_layer,
        exit_extra=extra,
    )
