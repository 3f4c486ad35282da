"""The embedded BLIP-2 (`embedded:<profile>` and `embedded:<profile>-t5`), built from config.

A real `Blip2ForConditionalGeneration`, only small: the code path is the one real checkpoints use.
"""

from __future__ import annotations

import torch
from transformers import Blip2Config, Blip2ForConditionalGeneration

from free_bench.config import Profile, get_profile
from free_bench.core.errors import FreeBenchError
from free_bench.models.configs import assemble_blip2
from free_bench.models.tokenizer import SPECIAL, vocabulary

PAD, EOS, BOS, UNK, IMAGE = range(len(SPECIAL))


def parse_spec(spec: str) -> tuple[str, str]:
    """'embedded:cpu-t5' -> ('cpu', 't5'); the profile name is validated."""
    name = spec.removeprefix("embedded:")
    lm = "opt"
    if name.endswith("-t5"):
        name, lm = name[: -len("-t5")], "t5"
    get_profile(name)
    return name, lm


def blip2_config(profile: Profile, lm_type: str = "opt") -> Blip2Config:
    b = profile.backbone
    vocab = len(vocabulary())
    vision = dict(
        hidden_size=b.vision_hidden,
        intermediate_size=4 * b.vision_hidden,
        num_hidden_layers=b.vision_layers,
        num_attention_heads=b.vision_heads,
        image_size=profile.scenes.image_size,
        patch_size=b.patch_size,
        attention_dropout=0.0,
        initializer_range=0.02,  # HF's default for BLIP-2's ViT is 1e-10: a from-scratch ViT would start dead
    )
    qformer = dict(
        hidden_size=b.qformer_hidden,
        num_hidden_layers=b.qformer_layers,
        num_attention_heads=b.qformer_heads,
        intermediate_size=4 * b.qformer_hidden,
        encoder_hidden_size=b.vision_hidden,
        cross_attention_frequency=1,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        vocab_size=vocab,
        max_position_embeddings=b.max_positions,
    )
    special = dict(pad_token_id=PAD, eos_token_id=EOS)
    if lm_type == "opt":
        text = dict(
            vocab_size=vocab,
            hidden_size=b.lm_hidden,
            word_embed_proj_dim=b.lm_hidden,
            num_hidden_layers=b.lm_layers,
            num_attention_heads=b.lm_heads,
            ffn_dim=b.lm_ffn,
            max_position_embeddings=b.max_positions,
            dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
            layerdrop=0.0,
            bos_token_id=BOS,
            do_layer_norm_before=True,
            **special,
        )
    elif lm_type == "t5":
        text = dict(
            vocab_size=vocab,
            d_model=b.lm_hidden,
            d_kv=b.lm_hidden // b.lm_heads,
            d_ff=b.lm_ffn,
            # Encoder as deep as the decoder: HF generate() sizes its T5 cache from `num_layers`.
            num_layers=b.lm_layers,
            num_heads=b.lm_heads,
            dropout_rate=0.0,
            feed_forward_proj="gated-gelu",
            tie_word_embeddings=False,
            decoder_start_token_id=PAD,
            **special,
        )
    else:
        raise FreeBenchError(f"unknown LM type {lm_type!r}; valid: opt, t5")
    return assemble_blip2(
        lm_type, vision, qformer, text, num_query_tokens=b.num_query_tokens, image_token_index=IMAGE
    )


def build_model(profile: str, lm_type: str = "opt", seed: int = 0) -> Blip2ForConditionalGeneration:
    """A freshly initialised embedded BLIP-2 for `profile` (deterministic from `seed`)."""
    cfg = blip2_config(get_profile(profile), lm_type)
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(cfg)
    # HF's from-config init zeroes the query tokens (fine when weights are loaded next); trained from
    # scratch, identical queries stay identical forever, so draw them as BLIP-2 did (std 0.02).
    with torch.no_grad():
        torch.nn.init.trunc_normal_(model.query_tokens, std=0.02)
    gen = model.generation_config
    gen.pad_token_id, gen.eos_token_id, gen.bos_token_id = PAD, EOS, BOS
    if lm_type == "t5":
        gen.decoder_start_token_id = PAD
    return model.eval()
