"""The scenes generator: determinism, answers re-derived from scenes, disjoint splits, novel pairs."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import numpy as np
import pytest

from free_bench.config import get_profile
from free_bench.data import questions as Q
from free_bench.data import scenes as S
from free_bench.data.scenes_dataset import build_scenes, generate_split, load_scenes
from free_bench.data.schema import SPLITS, features


@pytest.fixture(scope="module")
def smoke():
    return build_scenes("smoke", seed=0, progress=False)


def test_same_seed_same_rows_other_seed_differs():
    cfg = get_profile("smoke").scenes
    a, b = generate_split(cfg, "val", 0, False), generate_split(cfg, "val", 0, False)
    assert a == b
    c = generate_split(cfg, "val", 1, False)
    assert [r["image"]["bytes"] for r in a] != [r["image"]["bytes"] for r in c]


def test_rows_identical_with_a_process_pool():
    """Rendering in parallel chunks (every core) must not change a single byte."""
    from concurrent.futures import ProcessPoolExecutor

    cfg = dataclasses.replace(
        get_profile("smoke").scenes, images={**get_profile("smoke").scenes.images, "val": 1200}
    )
    with ProcessPoolExecutor(2) as pool:
        parallel = generate_split(cfg, "val", 0, False, pool)
    assert parallel == generate_split(cfg, "val", 0, False)


def test_answers_rederived_from_scene_agree(smoke):
    n = 0
    for split in SPLITS:
        for row in smoke[split]:
            derived = Q.answer_question(row["question"], S.scene_from_json(row["scene"]))
            if row["answers"]:
                assert derived == row["answer"], row["question_id"]
                n += 1
    assert n > 300


def test_answers_rederived_on_cpu_profile_val():
    cfg = get_profile("cpu").scenes
    rows = generate_split(cfg, "val", 3, False)
    for row in rows:
        assert Q.answer_question(row["question"], S.scene_from_json(row["scene"])) == row["answer"]
    assert {r["question_type"] for r in rows} == set(Q.FAMILIES)


def test_every_family_and_difficulty_present(smoke):
    types = set(smoke["train"]["question_type"])
    assert types == set(Q.FAMILIES)
    assert set(smoke["train"]["difficulty"]) == {1, 2, 3, 4}


def test_splits_disjoint(smoke):
    for a, b in itertools.combinations(SPLITS, 2):
        assert not set(smoke[a]["image_id"]) & set(smoke[b]["image_id"])
        assert not set(smoke[a]["scene"]) & set(smoke[b]["scene"])


def test_novel_pairs_absent_from_other_splits(smoke):
    held = S.novel_pairs(get_profile("smoke").scenes.novel_pairs)
    assert len(held) == 4
    for split in SPLITS:
        for scene in set(smoke[split]["scene"]):
            pairs = {(o.color, o.shape) for o in S.scene_from_json(scene)}
            if split == "test_novel":
                assert pairs & held
            else:
                assert not pairs & held, split


def test_scene_geometry_and_vocabulary():
    cfg = get_profile("cpu").scenes
    rows = generate_split(cfg, "test", 0, False)
    shapes, colors, counts = set(), set(), set()
    for scene in {r["scene"] for r in rows}:
        objs = S.scene_from_json(scene)
        counts.add(len(objs))
        cells = {(int(o.x * cfg.grid), int(o.y * cfg.grid)) for o in objs}
        assert len(cells) == len(objs)  # one object per grid cell
        for o, p in itertools.combinations(objs, 2):
            gap = math.hypot(o.x - p.x, o.y - p.y) * cfg.image_size
            assert (
                gap
                > (S.size_px(o.size, cfg.image_size, cfg.grid) + S.size_px(p.size, cfg.image_size, cfg.grid))
                / 2
            )
        shapes |= {o.shape for o in objs}
        colors |= {o.color for o in objs}
    assert len(shapes) >= 4 and len(colors) == 8 and counts == set(range(1, 7))


def test_images_captions_answers_format(smoke):
    row = smoke["train"][0]
    assert row["image"].mode == "RGB" and row["image"].size == (32, 32)
    assert np.asarray(row["image"]).std() > 1  # noise and objects, not a flat image
    for r in smoke["val"]:
        assert len(r["answers"]) == 10
        assert len(set(r["captions"])) >= 3
    for r in smoke["unlabeled"]:
        assert r["answers"] == [] and r["answer"] == "" and r["captions"] == [] and r["question"]


def test_answer_lists_contain_harmless_variants(smoke):
    counts = [r for s in ("train", "val") for r in smoke[s] if r["question_type"] == "count"]
    assert any(any(a in Q.NUMBER_WORDS for a in r["answers"]) for r in counts)


def test_official_normalisation_accepts_every_variant(smoke):
    from free_bench.evaluation.metrics import vqa_accuracy

    for r in smoke["test"]:
        assert vqa_accuracy(r["answer"], r["answers"]) == 1.0, r["answers"]


def test_cache_roundtrip(tmp_path):
    ds = load_scenes("smoke", 0, root=tmp_path, progress=False)
    again = load_scenes("smoke", 0, root=tmp_path, progress=False)
    assert ds["val"]["question_id"] == again["val"]["question_id"]
    assert ds["val"].features == features()
    meta = json.loads(next(tmp_path.glob("*/meta.json")).read_text())
    assert meta["profile"] == "smoke" and len(meta["hash"]) == 16
    assert not list(tmp_path.glob("*.tmp"))


def test_hash_follows_the_content(tmp_path):
    """Same content, same hash; one image byte or one question changed, another hash."""
    import datasets

    from free_bench.data.scenes_dataset import dataset_hash

    ds = load_scenes("smoke", 0, root=tmp_path, progress=False)
    small = datasets.DatasetDict({s: ds[s].select(range(3)) for s in ("val", "test")})
    base = dataset_hash(small)
    assert dataset_hash(datasets.DatasetDict({s: d.flatten_indices() for s, d in small.items()})) == base
    val = small["val"].to_list()

    def changed(rows: list[dict]) -> str:
        val_ds = datasets.Dataset.from_list(rows, features=features())
        return dataset_hash(datasets.DatasetDict({"val": val_ds, "test": small["test"]}))

    assert changed(val) == base
    png = bytearray(val[1]["image"]["bytes"])
    png[-20] ^= 1
    assert changed([val[0], {**val[1], "image": {"bytes": bytes(png), "path": None}}, val[2]]) != base
    assert changed([val[0], {**val[1], "question": val[1]["question"] + "?"}, val[2]]) != base


def test_unknown_profile_lists_valid():
    from free_bench.core.errors import FreeBenchError

    with pytest.raises(FreeBenchError, match="valid profiles: cpu, gpu, smoke"):
        build_scenes("tiny")


def test_patches_are_grid_cells():
    """The embedded ViT's patch is one grid cell in every profile: each object lands in one patch."""
    from free_bench.config import PROFILES

    for name, prof in PROFILES.items():
        assert prof.backbone.patch_size * prof.scenes.grid == prof.scenes.image_size, name
        assert prof.scenes.max_objects <= prof.scenes.grid**2, name


def test_parallel_build_from_a_script_without_main_guard(tmp_path):
    """Rendering workers must not re-import the caller's __main__ (spawn would: an unguarded user
    script then crashes with BrokenProcessPool). Small chunks force the process pool on smoke."""
    import subprocess
    import sys

    script = tmp_path / "user_script.py"
    script.write_text(
        "import free_bench.data.scenes_dataset as D\n"
        "D._CHUNK = 20\n"
        "ds = D.build_scenes('smoke', 0, progress=False)\n"
        "print(len(ds['train']))\n"
    )
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert int(res.stdout.split()[-1]) == len(build_scenes("smoke", 0, progress=False)["train"])
