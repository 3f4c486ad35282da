"""`free-bench export-backbone`: write a pretrained embedded backbone as a checkpoint folder that plain
transformers loads (and free-bench loads by its path, with the embedded backbone's prompts)."""

from __future__ import annotations

import argparse
from pathlib import Path

from free_bench.cli.registry import at_least, command
from free_bench.config import PROFILES

# The library's wording (models.export.NOT_EMBEDDED), repeated so parsing needs no torch.
_NOT_EMBEDDED = "export-backbone exports an embedded backbone; an HF id or folder already is a checkpoint"


def embedded_spec(text: str) -> str:
    """embedded:<profile>[-t5], checked at parse time so a typo is refused before torch loads."""
    if not text.startswith("embedded:"):
        raise argparse.ArgumentTypeError(f"{text!r}: {_NOT_EMBEDDED}")
    profile = text.removeprefix("embedded:").removesuffix("-t5")
    if profile not in PROFILES:
        raise argparse.ArgumentTypeError(
            f"{text!r}: unknown profile {profile!r}; valid: "
            + ", ".join(f"embedded:{p}[-t5]" for p in sorted(PROFILES))
        )
    return text


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "spec", metavar="SPEC", type=embedded_spec, help="the embedded backbone, embedded:<profile>[-t5]"
    )
    p.add_argument("out", metavar="DIR", type=Path, help="the checkpoint folder to write")
    p.add_argument("--backbone-seed", type=at_least(0), default=0,
                   help="which pretraining of the embedded backbone (default 0)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true",
                   help="replace an export in DIR made from another backbone (default: refuse)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from free_bench.models.export import export_backbone

    out = export_backbone(args.spec, args.out, seed=args.backbone_seed, overwrite=args.overwrite)
    print(out.resolve())
    return 0


command(
    "export-backbone",
    "Export a pretrained embedded backbone as a BLIP-2 checkpoint folder that plain transformers loads.",
    "free-bench export-backbone embedded:cpu ./blip2-embedded-cpu",
    _add_args,
    run,
)
