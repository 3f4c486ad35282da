"""Where pretrained embedded backbones live in the cache, and the recipe that decides their weights.

A cached backbone is reused only when the recipe recorded in its manifest is the one the current code
and profile would use; loading never pretrains (that is `free-bench pretrain`'s job).
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

from free_bench.config import cache_dir, get_profile
from free_bench.core.errors import FreeBenchError
from free_bench.data.scenes import GENERATOR_VERSION
from free_bench.models.embedded import parse_spec


def embedded_dir(spec: str, seed: int = 0, root: Path | None = None) -> Path:
    """Cache folder of a pretrained embedded backbone: <cache>/backbones/embedded-<profile>[-t5]-seed<seed>."""
    profile, lm = parse_spec(spec)
    name = f"embedded-{profile}{'-t5' if lm == 't5' else ''}-seed{seed}"
    return (root or cache_dir() / "backbones") / name


def pretrain_command(spec: str, seed: int = 0) -> str:
    """The command that makes the embedded backbone `spec` (with pretraining seed `seed`)."""
    profile, lm = parse_spec(spec)
    return (f"free-bench pretrain --profile {profile}" + (" --lm t5" if lm == "t5" else "")
            + (f" --seed {seed}" if seed else ""))  # fmt: skip


def recipe(profile: str, lm_type: str, overrides: dict | None = None) -> dict:
    """Everything that decides the weights (besides the seed), as recorded in the manifest."""
    prof = get_profile(profile)
    cfg = replace(prof.pretrain, **(overrides or {}))
    return json.loads(
        json.dumps(
            {
                "profile": profile,
                "lm_type": lm_type,
                "scenes_generator": GENERATOR_VERSION,
                "scenes": asdict(prof.scenes),
                "backbone": asdict(prof.backbone),
                "pretrain": asdict(cfg),
            }
        )
    )


def check_current(folder: Path, profile: str, lm_type: str) -> None:
    """A cached backbone made by another recipe (older code or config) is an error, never reused silently."""
    made = json.loads((folder / "manifest.json").read_text()).get("config", {})
    want = recipe(profile, lm_type)
    differ = sorted(k for k in want if made.get(k) != want[k])
    if differ:
        raise FreeBenchError(
            f"{folder} was pretrained with another recipe (differs in: {', '.join(differ)}); "
            f"remove it or rerun `free-bench pretrain --profile {profile}{' --lm t5' if lm_type == 't5' else ''}`"
        )
