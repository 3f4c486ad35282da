"""Generator exits (FREE, distill) at OPT-2.7b width in bf16 on CUDA: every training loss finite, and
no NaN anywhere in a generator's output, valid or padded positions (a NaN at a padded position
still poisons a masked mean: NaN * 0 is NaN)."""

from __future__ import annotations

import pytest
import torch

from free_bench.methods.registry import build_method
from free_bench.models.hf import backbone_from_model
from free_bench.models.tiny import build_tiny_blip2
from free_bench.training import ExitTrainConfig, train_exits
from free_bench.training.batches import TFBatch, teacher_force

WIDTH = dict(vocab_size=50272, hidden_size=2560, word_embed_proj_dim=2560, ffn_dim=10240, num_hidden_layers=8,
             num_attention_heads=32, max_position_embeddings=2048, init_std=0.02, pad_token_id=1,
             bos_token_id=2, eos_token_id=2, num_query_tokens=32, image_token_index=50265)  # fmt: skip


@torch.no_grad()
def _batches(bb, n: int, batch: int, seed: int = 0) -> list[TFBatch]:
    """Left-padded prompts of varying length and right-padded answers, as exit training builds them."""
    gen = torch.Generator().manual_seed(seed)
    cfg = bb.model.config
    out = []
    for _ in range(n):
        rows, answers = [], []
        for _row in range(batch):
            words = torch.randint(4, 50000, (int(torch.randint(3, 12, (1,), generator=gen)),), generator=gen)
            rows.append([cfg.image_token_index] * cfg.num_query_tokens + [2] + words.tolist())
            answers.append(torch.randint(4, 50000, (int(torch.randint(1, 4, (1,), generator=gen)),), generator=gen).tolist() + [2])
        width = max(map(len, rows))
        ids = torch.full((batch, width), 1, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, r in enumerate(rows):
            ids[b, width - len(r):] = torch.tensor(r)
            mask[b, width - len(r):] = 1
        pixels = torch.randn(batch, 3, 32, 32, generator=gen).to("cuda", bb.dtype)
        prompts = {"input_ids": ids.cuda(), "attention_mask": mask.cuda()}
        out.append(teacher_force(bb, pixels, prompts, answers, with_targets=True))
    return out


@pytest.mark.parametrize("method", ["distill", "free"])
def test_generator_exits_stay_finite_in_bf16(method, tmp_path):
    torch.manual_seed(0)
    model = build_tiny_blip2("opt", device="cuda", dtype=torch.bfloat16, **WIDTH)
    bb = backbone_from_model(model, spec="opt-2.7b-width")
    bb.tokenizer = type("T", (), {"pad_token_id": 1, "eos_token_id": 2})()
    batches = _batches(bb, 8, 8)
    for b in batches:
        assert torch.isfinite(b.hidden).all()
    exits = build_method(method, bb, (2, 4, 6, 8))
    with torch.no_grad():
        for k in exits.layers:
            h = exits.exit_hidden(k, batches[0].hidden[k], batches[0].mask)  # (B, T, D)
            valid, pad = batches[0].mask.bool(), ~batches[0].mask.bool()
            assert torch.isfinite(h[valid]).all(), f"exit {k}: non-finite at valid positions"
            assert torch.isfinite(h[pad]).all(), f"exit {k}: non-finite at padded positions"
    log = train_exits(exits, batches, ExitTrainConfig(steps=24, batch_size=8, checkpoint_every=8), "semi",
                      tmp_path, progress=False)  # fmt: skip
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in log["step"])
