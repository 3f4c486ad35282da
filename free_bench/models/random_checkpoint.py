"""Random-init BLIP-2 checkpoints saved as a user's would be: `save_pretrained` weights, a
`Blip2Processor` and a tokenizer of the model's own (byte-level BPE, as OPT's GPT-2 tokenizer is),
made with transformers and tokenizers alone.

No weights can be downloaded here, so this is how real checkpoints are exercised: `tiny-opt` /
`tiny-t5` in the CPU tests, `blip2-opt-2.7b` / `blip2-flan-t5-xl` (the shapes of the Salesforce
checkpoints: ViT-g/14 39 x 1408, Q-Former 12 x 768, OPT-2.7b or Flan-T5-XL) for timing on a GPU.
Their answers are noise; their cost is the real models' cost.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import Blip2Processor, PreTrainedTokenizerFast

from free_bench.core.errors import check_choice
from free_bench.models.configs import assemble_blip2
from free_bench.models.tiny import QFORMER, VISION  # the tiny sizes' vision tower and Q-Former

# ViT-g/14 and the Q-Former of the Salesforce BLIP-2 checkpoints (transformers' Blip2Config defaults)
_VIT_G = dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16,
              image_size=224, patch_size=14)  # fmt: skip
_QFORMER = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                cross_attention_frequency=2, encoder_hidden_size=1408)  # fmt: skip
_OPT_2_7B = dict(vocab_size=50272, hidden_size=2560, word_embed_proj_dim=2560, ffn_dim=10240,
                 num_hidden_layers=32, num_attention_heads=32, max_position_embeddings=2048,
                 pad_token_id=1, bos_token_id=2, eos_token_id=2)  # fmt: skip
_FLAN_T5_XL = dict(vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_decoder_layers=24,
                   num_heads=32, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)  # fmt: skip
_TINY_OPT = dict(vocab_size=512, hidden_size=32, word_embed_proj_dim=32, ffn_dim=64, num_hidden_layers=4,
                 num_attention_heads=4, max_position_embeddings=256, pad_token_id=1, bos_token_id=2,
                 eos_token_id=2, init_std=0.5)  # fmt: skip
_TINY_T5 = dict(vocab_size=512, d_model=32, d_kv=8, d_ff=64, num_layers=3, num_decoder_layers=3, num_heads=4,
                feed_forward_proj="gated-gelu", relative_attention_num_buckets=8,
                relative_attention_max_distance=16, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                initializer_factor=5.0)  # fmt: skip

#: size -> (lm_type, vision, qformer, text, number of query tokens)
SIZES: dict[str, tuple[str, dict, dict, dict, int]] = {
    "tiny-opt": ("opt", VISION, QFORMER, _TINY_OPT, 4),
    "tiny-t5": ("t5", VISION, QFORMER, _TINY_T5, 4),
    "blip2-opt-2.7b": ("opt", _VIT_G, _QFORMER, _OPT_2_7B, 32),
    "blip2-flan-t5-xl": ("t5", _VIT_G, _QFORMER, _FLAN_T5_XL, 32),
}
_SPECIALS = {"opt": ("<s>", "<pad>", "</s>", "<unk>"), "t5": ("<pad>", "</s>", "<unk>")}
# text the BPE merges are learnt from: question-and-answer English of the kind VQAv2 asks
_CORPUS = """Question: what color is the cat? Answer: black. Question: how many people are there? Answer: 2.
Question: is there a dog in the picture? Short answer: yes. a photo of a man riding a horse on a beach.
What is the man holding? an umbrella. Where is the bus? on the street. Is it raining? no.
a photo of two zebras standing in the grass. What sport is this? tennis. What room is this? kitchen.
How many cups are on the table? three. What is on the plate? pizza. a red square and a blue circle.
Is the light on? yes. What animal is this? giraffe. What is the woman wearing? a white shirt."""


def build_tokenizer(lm_type: str, vocab_size: int, image_token_index: int | None) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer covering ids 0..vocab_size-1: special tokens first, merges learnt
    from a small corpus, `<image>` at `image_token_index`, unused filler ids elsewhere (a random
    model may emit any id, and every id must decode)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = list(_SPECIALS[lm_type])
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    learnt = min(vocab_size - len(specials) - 1, 2000)
    trainer = trainers.BpeTrainer(vocab_size=learnt, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)  # fmt: skip
    tok.train_from_iterator([_CORPUS] * 4, trainer)
    vocab = tok.get_vocab()
    image = image_token_index if image_token_index is not None else vocab_size - 1
    fill = [i for i in range(len(vocab), vocab_size) if i != image]
    extra = {f"<unused{i}>": i for i in fill}
    extra["<image>"] = image
    model = models.BPE(vocab={**vocab, **extra}, merges=_merges(tok), unk_token="<unk>")
    full = Tokenizer(model)
    full.pre_tokenizer, full.decoder = tok.pre_tokenizer, tok.decoder
    eos = "</s>"
    return PreTrainedTokenizerFast(
        tokenizer_object=full,
        bos_token=eos if lm_type == "opt" else None,  # OPT's BOS is </s>, as facebook/opt-* has it
        eos_token=eos,
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left" if lm_type == "opt" else "right",
    )


def _merges(tok: Any) -> list[tuple[str, str]]:
    import json

    merges = json.loads(tok.to_str())["model"]["merges"]
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]


def build_processor(tokenizer: PreTrainedTokenizerFast, image_size: int, num_query_tokens: int) -> Blip2Processor:
    """BLIP-2's image transform (resize, CLIP mean and std) around `tokenizer`."""
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    image_processor = BlipImageProcessorPil(
        size={"height": image_size, "width": image_size},
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
        do_convert_rgb=True,
    )
    return Blip2Processor(image_processor, tokenizer, num_query_tokens=num_query_tokens)


def save_random_blip2(out: str | Path, size: str, *, seed: int = 0, device: str | None = None,
                      dtype: torch.dtype | None = None) -> Path:  # fmt: skip
    """A random-init BLIP-2 of `size` (SIZES) with its processor, saved to `out` by save_pretrained.
    `device` builds the weights there (a 3.7 B-parameter model initialises in seconds on a GPU)."""
    from transformers import Blip2ForConditionalGeneration

    check_choice("checkpoint size", size, tuple(SIZES))
    lm_type, vision, qformer, text, queries = SIZES[size]
    image_token = text["vocab_size"] - 7 if lm_type == "opt" else text["vocab_size"] - 28  # past the real vocab
    config = assemble_blip2(lm_type, vision, qformer, text, num_query_tokens=queries, image_token_index=image_token)
    dev = torch.device(device or "cpu")
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), dev:
        torch.manual_seed(seed)
        model = Blip2ForConditionalGeneration(config)
        with torch.no_grad():
            model.query_tokens.normal_(0.0, 1.0)  # zero queries would make every image look alike
    if dtype is not None:
        model = model.to(dtype)
    out = Path(out)
    model.save_pretrained(out)
    tokenizer = build_tokenizer(lm_type, text["vocab_size"], image_token)
    build_processor(tokenizer, vision["image_size"], queries).save_pretrained(out)
    return out
