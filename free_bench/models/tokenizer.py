"""A word-level tokenizer and image processor for the `scenes` vocabulary (no download needed).

The vocabulary is fixed by the generator's word lists and templates, so the same words get the same
ids on every machine; words outside it (real data) map to <unk>.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import Blip2Processor, PreTrainedTokenizerFast
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

from free_bench.data import questions as Q
from free_bench.data import scenes as S

SPECIAL = ("<pad>", "</s>", "<s>", "<unk>", "<image>")

# Every word the templates in data/questions.py can emit, beyond the generator's value lists.
_TEMPLATE_WORDS = """
is there a what color the shape object size how many objects are of left right above below
answer question picture single alone in with on grey background shapes object objects big little
an and yes no
""".split()
_PUNCT = ("?", ".", ",", ":", "'")


def vocabulary() -> list[str]:
    """Special tokens first (ids 0..4), then a sorted word list."""
    words = set(_TEMPLATE_WORDS) | set(S.SHAPES) | {Q.plural(s) for s in S.SHAPES} | set(S.COLORS)
    words |= set(S.SIZES) | set(Q.NUMBER_WORDS) | {str(i) for i in range(10)} | set(_PUNCT)
    return list(SPECIAL) + sorted(words)


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, tidies punctuation
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        bos_token="<s>",
        unk_token="<unk>",
        padding_side="left",  # decoder-only generation pads on the left
    )
    return fast


def build_processor(image_size: int, num_query_tokens: int) -> Blip2Processor:
    """BLIP-2 processor: our tokenizer plus a BLIP image processor at the profile's resolution."""
    image_processor = BlipImageProcessorPil(  # PIL backend: no torchvision needed
        size={"height": image_size, "width": image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_convert_rgb=True,
    )
    return Blip2Processor(image_processor, build_tokenizer(), num_query_tokens=num_query_tokens)
