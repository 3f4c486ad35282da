"""Stage 0 of embedded pretraining: the ViT learns to read objects before it meets language.

BLIP-2 starts from a pretrained vision encoder (EVA-CLIP ViT-g); the embedded backbone has none and a
ViT trained from scratch through the LM alone learns colours and counts but not shapes in minutes.
Stage 0 stands in for that pretrained encoder: every patch token (one `scenes` grid cell) is asked
for the shape, colour and size of the object in its cell ("empty" included) by a throw-away linear
head. It reads the generator's scene annotations, so it exists only for `scenes`.
"""

from __future__ import annotations

import json

import datasets
import torch
from torch import nn

from free_bench.core.errors import FreeBenchError
from free_bench.data.scenes import COLORS, SHAPES, SIZES

ATTRIBUTES = {"shape": SHAPES, "color": tuple(COLORS), "size": SIZES}


def cell_labels(split: datasets.Dataset, index: dict[str, int], grid: int) -> torch.Tensor:
    """(N_img, grid*grid, 3) long: per cell, 1 + the index of its object's shape, colour, size; 0 = empty."""
    if "scene" not in split.column_names or not split[0]["scene"]:
        raise FreeBenchError("vision pretraining (stage 0) needs `scenes` annotations; set vision_steps=0")
    labels = torch.zeros(len(index), grid * grid, len(ATTRIBUTES), dtype=torch.long)
    for r in split.select_columns(["image_id", "scene"]):
        img = index[r["image_id"]]
        for o in json.loads(r["scene"]):
            cell = min(int(o["y"] * grid), grid - 1) * grid + min(int(o["x"] * grid), grid - 1)
            labels[img, cell] = torch.tensor([1 + vals.index(o[k]) for k, vals in ATTRIBUTES.items()])
    return labels


class CellHead(nn.Module):
    """One linear classifier per attribute over the ViT's patch tokens; discarded after stage 0."""

    def __init__(self, hidden: int):
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(hidden, 1 + len(v)) for v in ATTRIBUTES.values())

    def loss(self, patch_tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """patch_tokens (B, G*G, D), labels (B, G*G, 3) -> mean cross-entropy over the attributes."""
        losses = [
            nn.functional.cross_entropy(head(patch_tokens).flatten(0, 1).float(), labels[..., k].flatten())
            for k, head in enumerate(self.heads)
        ]
        return torch.stack(losses).mean()


def seeded_head(hidden: int, seed: int) -> CellHead:
    """A throw-away `CellHead` drawn from its own seed, leaving the global RNG alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CellHead(hidden)


def query_head(model, cells: torch.Tensor | None, seed: int) -> CellHead:
    """The throw-away head of `PretrainConfig.query_cell_weight`: query i of the Q-Former reads cell i,
    so there must be a query for every cell."""
    if cells is None:
        raise FreeBenchError("query_cell_weight > 0 needs TrainData.cells: prepare(..., grid=...)")
    queries = model.config.num_query_tokens
    if queries < cells.shape[1]:
        raise FreeBenchError(
            f"query_cell_weight > 0 gives query i grid cell i: {queries} query tokens for {cells.shape[1]} "
            "cells; use at least as many queries as cells, or query_cell_weight=0"
        )
    return seeded_head(model.config.qformer_config.hidden_size, seed + 1)


def vision_loss(model, head: CellHead, pixel_values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    tokens = model.vision_model(pixel_values=pixel_values).last_hidden_state[
        :, 1:
    ]  # (B, G*G, D), CLS dropped
    if tokens.shape[1] != labels.shape[1]:
        raise FreeBenchError(f"{tokens.shape[1]} patches but {labels.shape[1]} grid cells: patch != cell")
    return head.loss(tokens, labels)


def query_loss(query_states: torch.Tensor, head: CellHead, labels: torch.Tensor) -> torch.Tensor:
    """query_states (B, Q, D) of the Q-Former, labels (B, G*G, 3): query i predicts cell i's object."""
    return head.loss(query_states[:, : labels.shape[1]], labels)
