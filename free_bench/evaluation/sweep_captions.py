"""A caption sweep's texts, kept so that its CIDEr can be scored on another machine.

pycocoevalcap needs Java, which the GPU host lacks: there a caption point's CIDEr is NaN (reported
missing). Every caption point therefore also saves its captions (`points/caption__<t>.texts.json`),
the sweep gathers them with each image's references into `captions.parquet`, and `rescore` (behind
`free-bench score-captions <sweep folder>`) fills the CIDEr of `sweep.parquet` and `samples.parquet`
from it: per image, with IDF weights from the point's whole image set, as the sweep itself scores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from free_bench.core.errors import FreeBenchError
from free_bench.core.records import SWEEP, SWEEP_SAMPLES, write_json, write_parquet
from free_bench.evaluation.sweep_legacy import with_n_samples

CAPTIONS = "captions.parquet"


def save_texts(point: Path, texts: list[str]) -> None:
    """Before the point's own file (which marks it finished): a finished point always has its texts."""
    write_json(texts, point.with_suffix(".texts.json"))


def gather_captions(out: Path, references: dict[str, list[str]]) -> pd.DataFrame:
    """(point, sample_id, text, references) of every finished caption point in `out/points`."""
    ids_file = out / "points" / "caption.ids.json"
    if not ids_file.exists():
        return pd.DataFrame(columns=["point", "sample_id", "text", "references"])
    ids = json.loads(ids_file.read_text())
    frames = []
    for f in sorted((out / "points").glob("caption__*.texts.json")):
        texts = json.loads(f.read_text())
        point = f.name.removeprefix("caption__").removesuffix(".texts.json")
        frames.append(pd.DataFrame({"point": point, "sample_id": ids, "text": texts,
                                    "references": [references[i] for i in ids]}))  # fmt: skip
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _point_of(df: pd.DataFrame) -> pd.Series:
    """The point key of SWEEP / SWEEP_SAMPLES rows: "full", or the threshold as the points name it."""
    return df["threshold"].map(str).where(df["method"] != "full", "full")


def rescore(folder: Path) -> pd.DataFrame:
    """Fill the CIDEr of a caption sweep's tables from its `captions.parquet`; returns (point, CIDEr)."""
    from free_bench.evaluation.metrics.captions import cider_per_image

    need = [folder / CAPTIONS, folder / "sweep.parquet", folder / "samples.parquet"]
    missing = [p.name for p in need if not p.exists()]
    if missing:
        raise FreeBenchError(
            f"{folder} is not a caption sweep with saved texts (missing {', '.join(missing)})"
        )
    caps = pd.read_parquet(folder / CAPTIONS)
    if caps.empty:
        raise FreeBenchError(f"{folder / CAPTIONS} holds no captions")
    samples = pd.read_parquet(folder / "samples.parquet")
    sweep = with_n_samples(pd.read_parquet(folder / "sweep.parquet"), samples)  # older tables: counted
    scored = {}
    for point, group in caps.groupby("point"):
        refs = {str(s): list(r) for s, r in zip(group["sample_id"], group["references"], strict=True)}
        per = cider_per_image(dict(zip(group["sample_id"].map(str), group["text"], strict=True)), refs)
        scored[point] = per
    rows = (sweep["task"] == "caption") & (sweep["metric"] == "CIDEr")
    points = _point_of(sweep[rows])
    unknown = sorted(set(points) - set(scored))
    if unknown:
        raise FreeBenchError(f"{folder}: caption points {unknown} have no saved texts")
    sweep.loc[rows, "value"] = [sum(scored[p].values()) / len(scored[p]) for p in points]
    cap = samples["task"] == "caption"
    keys = zip(_point_of(samples[cap]), samples.loc[cap, "sample_id"].map(str), strict=True)
    samples.loc[cap, "value"] = [scored[p][s] for p, s in keys]
    write_parquet(SWEEP.validate(sweep), folder / "sweep.parquet", SWEEP)
    write_parquet(SWEEP_SAMPLES.validate(samples), folder / "samples.parquet", SWEEP_SAMPLES)
    return pd.DataFrame(
        [(p, sum(v.values()) / len(v)) for p, v in scored.items()], columns=["point", "CIDEr"]
    )
