"""Embedded backbone: tokenizer coverage, processor parity, resumable pretraining, load_backbone."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from free_bench.config import get_profile
from free_bench.core.errors import FreeBenchError
from free_bench.data import examples as E
from free_bench.data.scenes_dataset import load_scenes
from free_bench.models.embedded import build_model, parse_spec
from free_bench.models.tokenizer import build_processor, build_tokenizer
from free_bench.training.pretrain import stages as P


@pytest.fixture(scope="module")
def smoke_ds(tmp_path_factory):
    return load_scenes("smoke", 0, root=tmp_path_factory.mktemp("data"), progress=False)


def test_tokenizer_covers_every_generated_word(smoke_ds):
    tok = build_tokenizer()
    texts = [t for s in ("train", "val") for t in smoke_ds[s]["question"]]
    texts += [a for s in ("train", "val") for ans in smoke_ds[s]["answers"] for a in ans]
    texts += [c for caps in smoke_ds["train"]["captions"] for c in caps]
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in {i for seq in ids for i in seq}
    assert tok.decode(tok("how many stars are there?")["input_ids"], skip_special_tokens=True) == (
        "how many stars are there?"
    )


def test_processor_pixels_equal_training_pixels(smoke_ds):
    """Training normalises uint8 tensors itself; inference goes through the processor: same numbers."""
    split = smoke_ds["val"].select(range(4))
    pixels, index = E.images_tensor(split)  # one entry per distinct image
    proc = build_processor(32, 8)
    via_processor = proc.image_processor(list(split["image"]), return_tensors="pt")["pixel_values"]
    rows = [index[i] for i in split["image_id"]]
    torch.testing.assert_close(via_processor, E.normalize(pixels[rows]), atol=1e-6, rtol=0)


def test_processor_places_image_tokens():
    proc = build_processor(32, 8)
    from PIL import Image

    enc = proc(images=[Image.new("RGB", (32, 32))], text=["is there a red star?"], return_tensors="pt")
    assert enc["input_ids"][0, :8].tolist() == [proc.tokenizer.convert_tokens_to_ids("<image>")] * 8


def test_from_scratch_init_is_trainable():
    """HF's config init zeroes the query tokens and draws the ViT with std 1e-10: both would stall training."""
    model = build_model("smoke", "opt")
    q = model.query_tokens[0]  # (Q, D)
    assert torch.cdist(q, q).fill_diagonal_(1.0).min() > 0
    assert model.vision_model.embeddings.patch_embedding.weight.std() > 1e-3


@pytest.mark.parametrize(
    "spec, want", [("embedded:cpu", ("cpu", "opt")), ("embedded:smoke-t5", ("smoke", "t5"))]
)
def test_parse_spec(spec, want):
    assert parse_spec(spec) == want


def test_unknown_profile_lists_valid():
    with pytest.raises(FreeBenchError, match="valid profiles: cpu, gpu, smoke"):
        parse_spec("embedded:large")


def _short_cfg(**over):
    base = dataclasses.replace(
        get_profile("smoke").pretrain,
        vision_steps=0,
        stage1_steps=4,
        stage2_steps=4,
        checkpoint_every=2,
        batch_size=8,
        warmup_steps=2,
    )
    return dataclasses.replace(base, **over)


def _stopped_and_resumed(tmp_path, monkeypatch, tok, data, cfg, lm: str, where: str, at: int, stop: str):
    """Pretrain `cfg` whole; again, stopped inside the `at`-th call of `P.<where>` (`stop`: "killed",
    an exception there, or "sigterm", a time limit's signal); then resumed in a fresh model. Returns
    (whole, resumed, the resumed run's log, the (stage, step) checkpointed when it stopped)."""
    import signal

    torch.set_num_threads(1)
    whole = build_model("smoke", lm)
    P.train(whole, tok, data, cfg, lm, tmp_path / "a", progress=False)
    calls = {"n": 0}
    real = getattr(P, where)

    def stops(*a, **k):
        calls["n"] += 1
        if calls["n"] == at and stop == "killed":
            raise KeyboardInterrupt
        if calls["n"] == at:
            signal.raise_signal(signal.SIGTERM)
        return real(*a, **k)

    monkeypatch.setattr(P, where, stops)
    with pytest.raises(KeyboardInterrupt if stop == "killed" else SystemExit) as err:
        P.train(build_model("smoke", lm), tok, data, cfg, lm, tmp_path / "b", progress=False)
    if stop == "sigterm":
        assert err.value.code == 128 + signal.SIGTERM
    state = torch.load(tmp_path / "b" / "pretrain_state.pt", weights_only=False)
    monkeypatch.setattr(P, where, real)
    resumed = build_model("smoke", lm, seed=123)  # a fresh process: weights come from the checkpoint
    log = P.train(resumed, tok, data, cfg, lm, tmp_path / "b", progress=False)
    for (name, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    return whole, resumed, log, (state["stage"], state["step"])


@pytest.mark.parametrize("lm", ["opt", "t5"])
def test_resume_is_bit_identical(smoke_ds, tmp_path, monkeypatch, lm):
    """Killed in stage 2, step 3: resumed from the step-2 checkpoint, bit-identical to an unkilled run."""
    tok = build_tokenizer()
    data = P.prepare(smoke_ds["train"].select(range(60)), tok, grid=get_profile("smoke").scenes.grid)
    *_, log, saved = _stopped_and_resumed(tmp_path, monkeypatch, tok, data, _short_cfg(vision_steps=4), lm,
                                          "_sample", 7, "killed")  # fmt: skip
    assert saved == (2, 2) and len(log["loss"]["2"]) == 4 and len(log["loss"]["0"]) == 4


def test_sigterm_checkpoints_the_step_it_lands_in(smoke_ds, tmp_path, monkeypatch):
    """A time limit (SIGTERM) in stage 2, step 2: that step is finished and checkpointed (the periodic
    checkpoints are at steps 4 and 5 only), the run exits 143, and the resume is bit-identical."""
    tok = build_tokenizer()
    data = P.prepare(smoke_ds["train"].select(range(60)), tok)
    cfg = _short_cfg(stage1_steps=3, stage2_steps=5, checkpoint_every=4)
    *_, log, saved = _stopped_and_resumed(
        tmp_path, monkeypatch, tok, data, cfg, "opt", "_sample", 5, "sigterm"
    )
    assert saved == (2, 2) and len(log["loss"]["2"]) == 5


def test_stage2_frozen_lm_keeps_lm_weights(smoke_ds, tmp_path):
    tok = build_tokenizer()
    data = P.prepare(smoke_ds["train"].select(range(40)), tok)
    model = build_model("smoke", "opt")
    P.train(
        model, tok, data, _short_cfg(stage1_steps=2, stage2_steps=0), "opt", tmp_path / "s1", progress=False
    )
    lm_after_stage1 = {k: v.clone() for k, v in model.language_model.state_dict().items()}
    vision_before = model.language_projection.weight.clone()
    P.train(
        model,
        tok,
        data,
        _short_cfg(stage1_steps=0, stage2_steps=3, stage2_train_lm=False),
        "opt",
        tmp_path / "s2",
        progress=False,
    )
    for k, v in model.language_model.state_dict().items():
        assert torch.equal(v, lm_after_stage1[k]), k
    assert not torch.equal(vision_before, model.language_projection.weight)


@pytest.mark.parametrize("lm", ["opt", "t5"])
def test_embedded_runner_equals_hf_generate(smoke_ds, lm):
    """The embedded models go through the same invariant as the tiny ones: runner tokens == generate()."""
    from free_bench.data.inputs import pixel_values, prompt_batch
    from free_bench.engine import generate
    from free_bench.models import from_hf

    model = build_model("smoke", lm, seed=3)
    bb = from_hf(model)
    bb.tokenizer, bb.processor = build_tokenizer(), build_processor(32, 8)
    rows = smoke_ds["val"].select(range(3))
    pairs = [E.vqa_pair(bb.tokenizer, q, "") for q in rows["question"]]
    inputs = {"pixel_values": pixel_values(bb, rows["image"]), **prompt_batch(bb, pairs)}
    ours = generate(bb, **inputs, max_new_tokens=6)
    with torch.no_grad():
        hf = model.generate(**inputs, do_sample=False, max_new_tokens=6)
    hf = hf[:, inputs["input_ids"].shape[1] :] if lm == "opt" else hf[:, 1:]
    n = ours.tokens.shape[1]
    assert torch.equal(ours.tokens, hf[:, :n])


def test_cell_labels_follow_the_scene(smoke_ds):
    """Stage 0's targets: each object's shape/colour/size in its own grid cell, every other cell empty."""
    import json

    from free_bench.training.pretrain.vision import ATTRIBUTES, cell_labels

    split = smoke_ds["val"].select(range(6))
    pixels, index = E.images_tensor(split)
    grid = get_profile("smoke").scenes.grid
    labels = cell_labels(split, index, grid)  # (N, G*G, 3)
    assert labels.shape == (len(pixels), grid * grid, 3)
    for r in split:
        objs = json.loads(r["scene"])
        got = labels[index[r["image_id"]]]
        assert int((got[:, 0] > 0).sum()) == len(objs)
        for o in objs:
            cell = int(o["y"] * grid) * grid + int(o["x"] * grid)
            assert [v[i - 1] for v, i in zip(ATTRIBUTES.values(), got[cell].tolist(), strict=True)] == [
                o["shape"],
                o["color"],
                o["size"],
            ]


def test_stage0_needs_cell_labels(smoke_ds, tmp_path):
    tok = build_tokenizer()
    data = P.prepare(smoke_ds["train"].select(range(20)), tok)  # no grid: no labels
    with pytest.raises(FreeBenchError, match="vision_steps"):
        P.train(
            build_model("smoke", "opt"),
            tok,
            data,
            _short_cfg(vision_steps=2),
            "opt",
            tmp_path,
            progress=False,
        )


def test_resume_inside_stage0_is_bit_identical(smoke_ds, tmp_path, monkeypatch):
    """Killed in stage 0: the throw-away cell head and its optimizer come back from the checkpoint too."""
    tok = build_tokenizer()
    data = P.prepare(smoke_ds["train"].select(range(40)), tok, grid=get_profile("smoke").scenes.grid)
    cfg = _short_cfg(vision_steps=4, stage1_steps=1, stage2_steps=2)
    *_, saved = _stopped_and_resumed(tmp_path, monkeypatch, tok, data, cfg, "opt", "vision_loss", 4, "killed")
    assert saved == (0, 2)  # stage 0, step 4 was killed: the last checkpoint is stage 0, step 2


def test_stale_cached_backbone_is_an_error(tmp_path):
    """A cache folder pretrained by another recipe (say, an older generator) must not load silently."""
    import json

    from free_bench.models.embedded_cache import check_current, recipe

    (tmp_path / "manifest.json").write_text(json.dumps({"config": recipe("smoke", "opt")}))
    check_current(tmp_path, "smoke", "opt")  # same recipe: fine
    old = recipe("smoke", "opt")
    old["scenes_generator"] -= 1
    (tmp_path / "manifest.json").write_text(json.dumps({"config": old}))
    with pytest.raises(FreeBenchError, match="differs in: scenes_generator"):
        check_current(tmp_path, "smoke", "opt")


@pytest.mark.parametrize("lm", ["opt", "t5"])
def test_resume_with_the_query_cell_loss_is_bit_identical(smoke_ds, tmp_path, monkeypatch, lm):
    """`query_cell_weight`: stage 2 also asks query i for cell i's object through a throw-away head,
    which a killed run restores from its checkpoint like the model (a 2 x 2 grid: the smoke model has
    8 queries). The loss is the LM's plus the weighted cell loss, so it moves the Q-Former."""
    tok = build_tokenizer()
    data = P.prepare(smoke_ds["train"].select(range(60)), tok, grid=2)
    cfg = _short_cfg(stage1_steps=2, stage2_steps=5, query_cell_weight=0.5)
    whole, _, log, saved = _stopped_and_resumed(
        tmp_path, monkeypatch, tok, data, cfg, lm, "_sample", 5, "killed"
    )
    assert saved == (2, 2) and len(log["loss"]["2"]) == 5
    plain = build_model("smoke", lm)
    P.train(
        plain,
        tok,
        data,
        dataclasses.replace(cfg, query_cell_weight=0.0),
        "opt",
        tmp_path / "c",
        progress=False,
    )
    assert not torch.equal(
        plain.qformer.state_dict()["layernorm.weight"], whole.qformer.state_dict()["layernorm.weight"]
    )


def test_query_cell_loss_needs_a_query_per_cell(smoke_ds, tmp_path):
    tok = build_tokenizer()
    data = P.prepare(
        smoke_ds["train"].select(range(20)), tok, grid=get_profile("smoke").scenes.grid
    )  # 16 cells
    cfg = _short_cfg(stage1_steps=0, stage2_steps=1, query_cell_weight=0.5)
    with pytest.raises(FreeBenchError, match="8 query tokens for 16 cells"):
        P.train(build_model("smoke", "opt"), tok, data, cfg, "opt", tmp_path, progress=False)
    with pytest.raises(FreeBenchError, match="needs TrainData.cells"):
        P.train(build_model("smoke", "opt"), tok, P.prepare(smoke_ds["train"].select(range(20)), tok), cfg,
                "opt", tmp_path / "b", progress=False)  # fmt: skip
