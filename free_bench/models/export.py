"""Export a pretrained embedded backbone as a real checkpoint folder that plain transformers loads.

The embedded backbone lives in the cache under a name only free-bench resolves (`embedded:<profile>`).
Exported, it is an ordinary `save_pretrained` folder (safetensors weights, a `Blip2Processor` whose
tokenizer config names `PreTrainedTokenizerFast`), plus `prompts.json` so free-bench asks it exactly
as it asked the embedded one, and `export.json` saying what was exported, from which pretraining.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from free_bench.core.errors import FreeBenchError
from free_bench.core.records import Manifest, atomic_dir, read_json
from free_bench.core.runs import check_same, check_writable, writer_lock
from free_bench.models.embedded import parse_spec
from free_bench.models.embedded_cache import embedded_dir
from free_bench.models.prompts import EMBEDDED, write_prompts

log = logging.getLogger(__name__)

COMMAND = "export-backbone"
EXPORT_FILE = "export.json"  # the marker: a folder holding it is an export this suite wrote
TOKENIZER_CLASS = "PreTrainedTokenizerFast"  # what every transformers resolves (v5 saves "TokenizersBackend")
NOT_EMBEDDED = "export-backbone exports an embedded backbone; an HF id or folder already is a checkpoint"
_SOURCE_FIELDS = (
    "command",
    "config",
    "seeds",
    "dataset_hash",
    "source_hash",
    "git_commit",
    "git_dirty",
    "end_time",
)


def export_backbone(spec: str, out: Path, *, seed: int = 0, overwrite: bool = False) -> Path:
    """Write the pretrained embedded backbone `spec` (pretraining `seed`) into `out`; return `out`.

    `out` is written whole or not at all. When it already holds this export (same spec, seed and
    source pretraining) it is reused; another export there is an error naming the fields that differ
    unless `overwrite`; a folder that is not an export is never replaced.
    """
    if not isinstance(spec, str) or not spec.startswith("embedded:"):
        raise FreeBenchError(f"{spec!r}: {NOT_EMBEDDED}")
    parse_spec(spec)  # an unknown profile is named before anything is loaded
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise FreeBenchError(f"backbone seed must be an integer >= 0, got {seed!r}")
    out = Path(out).expanduser()
    check_writable(out)
    from free_bench.models.load import load_backbone

    backbone = load_backbone(spec, seed=seed, device="cpu")  # names `free-bench pretrain` when not made yet
    source = embedded_dir(spec, seed)
    wanted = provenance(spec, seed, source)
    with writer_lock(out):
        if (out / EXPORT_FILE).is_file():
            made = read_json(out / EXPORT_FILE)
            if not overwrite:
                check_same("an exported backbone", out, made.get("config", {}), wanted)
                log.info("%s (seed %d) is already exported in %s: reused", spec, seed, out)
                return out
        elif out.exists() and any(out.iterdir()):
            raise FreeBenchError(
                f"{out} exists and holds no exported backbone (no {EXPORT_FILE}); it is left alone: "
                "choose another DIR"
            )
        manifest = Manifest(COMMAND, wanted, seeds=[seed], dataset_hash=wanted["source"].get("dataset_hash"))
        manifest.update(source_folder=str(source), tokenizer_class=TOKENIZER_CLASS)
        with atomic_dir(out) as tmp:
            backbone.model.save_pretrained(tmp, safe_serialization=True)
            backbone.processor.save_pretrained(tmp)
            _name_tokenizer_class(tmp)
            check_round_trip(backbone.processor, tmp)
            write_prompts(EMBEDDED, tmp)
            manifest.write(tmp / EXPORT_FILE)  # last: a folder with it is complete
            _readable(tmp)
    log.info("exported %s (seed %d) to %s", spec, seed, out)
    return out


def provenance(spec: str, seed: int, source: Path) -> dict[str, Any]:
    """What an export is of: the spec, its pretraining seed, and that pretraining's recipe and hashes
    (weights included), so a rerun reuses an export only of the very weights now in the cache."""
    made = read_json(source / "manifest.json")
    record = {k: made.get(k) for k in _SOURCE_FIELDS}
    record["weights_sha256"] = _sha256(source / "model.safetensors")
    return {"spec": spec, "seed": seed, "source": record}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _readable(folder: Path) -> None:
    """The modes a plain `save_pretrained` folder gets (the umask's), not the private ones of the temp
    folder and temp files the atomic writes go through: a checkpoint is for others to read."""
    mask = os.umask(0)
    os.umask(mask)
    folder.chmod(0o777 & ~mask)
    for f in folder.iterdir():
        if f.is_file():
            f.chmod(0o666 & ~mask)


def _name_tokenizer_class(folder: Path) -> None:
    """Name the tokenizer by its standard class: transformers 5 saves a fast tokenizer as
    "TokenizersBackend", which transformers 4 cannot resolve; "PreTrainedTokenizerFast" is the same
    class (an alias) in 5 and the class itself in 4, and the vocabulary, normalizer, pre-tokenizer,
    post-processor and decoder all live in tokenizer.json, which both read unchanged."""
    path = folder / "tokenizer_config.json"
    config = read_json(path)
    config["tokenizer_class"] = TOKENIZER_CLASS
    for loading_option in ("is_local", "local_files_only"):  # how the cache copy was read, not the tokenizer
        config.pop(loading_option, None)
    path.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def check_round_trip(processor: Any, folder: Path) -> None:
    """Plain transformers must read back the tokenizer and image processor the backbone was run with:
    the same ids and decoding for every word it knows, the same special tokens and padding side, and
    the same pixels. An export that would be asked differently is refused, not written."""
    from PIL import Image
    from transformers import AutoTokenizer, Blip2Processor

    loaded = Blip2Processor.from_pretrained(folder)
    tokenizers = {"AutoTokenizer": AutoTokenizer.from_pretrained(folder), "Blip2Processor": loaded.tokenizer}
    mine = processor.tokenizer
    probe = [" ".join(mine.get_vocab()), EMBEDDED["vqa"].format("is there a red star?"), EMBEDDED["caption"]]
    ids = mine(probe)["input_ids"]
    for name, tok in tokenizers.items():
        theirs = tok(probe)["input_ids"]
        differ = [
            what
            for what, a, b in (
                ("ids", ids, theirs),
                ("decoding", mine.batch_decode(ids), tok.batch_decode(theirs)),
                ("special tokens", mine.special_tokens_map, tok.special_tokens_map),
                ("padding side", mine.padding_side, tok.padding_side),
            )
            if a != b
        ]
        if differ:
            raise FreeBenchError(
                f"the tokenizer saved in {folder} loads back through {name} ({type(tok).__name__}) with "
                f"other {', '.join(differ)}; transformers {_version()} cannot export it faithfully"
            )
    if getattr(loaded, "num_query_tokens", None) != getattr(processor, "num_query_tokens", None):
        raise FreeBenchError(f"the processor saved in {folder} loads back with another num_query_tokens")
    size = processor.image_processor.size
    # a gradient at another size: resizing, resampling and normalisation all leave their mark
    image = Image.linear_gradient("L").resize((size["width"] + 7, size["height"] + 3)).convert("RGB")
    a = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    b = loaded.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    if a.shape != b.shape or not bool((a == b).all()):
        raise FreeBenchError(
            f"the image processor saved in {folder} loads back as {type(loaded.image_processor).__name__}, "
            f"which gives other pixel values than {type(processor.image_processor).__name__}"
        )


def _version() -> str:
    import transformers

    return transformers.__version__
