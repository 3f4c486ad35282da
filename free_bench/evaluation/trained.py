"""A finished train-exits run opened for evaluation: its exits on their backbone, asked with the
prompts they were trained with, and the rows they were trained beside.

eval-exits and sweep take `--backbone`, `--data` and `--prompt` to override what the run recorded;
by default they use the recorded backbone (spec and pretraining seed), the recorded prompts and the
recorded data (a `free-bench data` folder or a scenes profile). A given backbone must be the one the
exits were trained on (`methods.storage.load_exits` checks its weights' fingerprint).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from free_bench.core.errors import FreeBenchError
from free_bench.core.records import read_json
from free_bench.data.source import DataSource, open_data
from free_bench.methods import ExitMethod, load_exits


def run_record(exits: str | Path) -> dict[str, Any]:
    """The run's config (train-exits manifest), its saved exit config under "exits"; an error when
    `exits` is not a finished train-exits folder."""
    folder = Path(exits)
    config = folder / "config.json"
    if not config.is_file():
        raise FreeBenchError(f"{folder} holds no trained exits (no config.json); run train-exits first")
    manifest = folder / "manifest.json"
    record = read_json(manifest).get("config", {}) if manifest.is_file() else {}
    return {**record, "exits": read_json(config)}


def data_ref(record: dict[str, Any], data: str | Path | None) -> dict[str, Any]:
    """`--data` if given, else the data the run recorded (older runs on embedded backbones: their scenes)."""
    if data is not None:
        return {"folder": str(Path(data).expanduser().resolve())}
    ref = record.get("data")
    if ref is None:
        spec = str(record["exits"]["backbone"].get("spec"))
        if not spec.startswith("embedded:"):
            raise FreeBenchError(f"the exits on {spec} record no data: pass --data DIR (a `free-bench data` folder)")
        from free_bench.config import get_profile
        from free_bench.models.embedded import parse_spec

        profile = get_profile(parse_spec(spec)[0])
        ref = {"profile": profile.name, "seed": profile.seed}
    return ref


def run_data(record: dict[str, Any], data: str | Path | None, *, progress: bool = True) -> DataSource:
    """The rows `data_ref` names, opened."""
    return open_data(data_ref(record, data), progress=progress)


def open_exits(exits: str | Path, *, backbone: str | None = None, prompts: dict[str, str] | None = None,
               device: str | None = None, record: dict[str, Any] | None = None) -> ExitMethod:  # fmt: skip
    """The run's exits on `backbone` (default: the recorded one), asked with the recorded prompts and
    then `prompts` over them."""
    record = record or run_record(exits)
    chosen = {**record.get("prompts", {}), **(prompts or {})}
    saved = record["exits"]["backbone"]
    if backbone is None:
        return load_exits(exits, None, device=device, prompts=chosen)
    from free_bench.models.load import load_backbone

    same = str(backbone) == str(saved.get("spec"))
    bb = load_backbone(backbone, device=device, seed=int(saved.get("seed", 0)) if same else 0, prompts=chosen)
    return load_exits(exits, bb)
