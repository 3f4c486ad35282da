"""The image side of the prefix (vision tower, Q-Former, projection) replayed as a CUDA graph per image
shape: at batch 1, for a VQA answer of one to three tokens, it is a large share of the decode."""

from __future__ import annotations

import torch

from free_bench.engine.graphs.capture import Graphed, capture
from free_bench.models import runner
from free_bench.models.base import Backbone


class ImageSide:
    """`runner.image_features` on fixed input buffers, one captured graph per pixel shape."""

    def __init__(self, backbone: Backbone, capture: bool) -> None:
        self.bb, self.capture = backbone, capture
        self.graphs: dict[tuple[int, ...], tuple[torch.Tensor, Graphed, list[torch.Tensor]]] = {}

    def __len__(self) -> int:
        return len(self.graphs)

    @torch.inference_mode()
    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> the LM-side query features (B, Q, D')."""
        key = tuple(pixel_values.shape)
        if key not in self.graphs:
            vision = self.bb.model.vision_model.embeddings.patch_embedding.weight
            pixels = torch.zeros(key, dtype=vision.dtype, device=vision.device)
            out: list[torch.Tensor] = [torch.empty(0)]

            def run() -> None:
                out[0] = runner.image_features(self.bb, pixels)

            graphed = Graphed(run)
            if self.capture:
                capture([graphed], warmups=1)
            self.graphs[key] = (pixels, graphed, out)
        pixels, graphed, out = self.graphs[key]
        pixels.copy_(pixel_values)
        graphed.replay()
        return out[0]
