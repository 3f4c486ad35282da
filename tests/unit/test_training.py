"""Exit training: teacher-forced batches, the loop, resume, the GAN guard, a frozen backbone."""

from __future__ import annotations

import pytest
import torch

from free_bench.config import get_profile
from free_bench.core.errors import FreeBenchError
from free_bench.data.scenes_dataset import load_scenes
from free_bench.methods.registry import get_method
from free_bench.models.embedded import build_model
from free_bench.models.hf import backbone_from_model
from free_bench.models.tokenizer import build_processor
from free_bench.training import ExitTrainConfig, GanCollapse, teacher_forced_batches, train_exits
from free_bench.training import loop as loop_mod


@pytest.fixture(scope="module")
def smoke_ds(tmp_path_factory):
    return load_scenes("smoke", 0, root=tmp_path_factory.mktemp("data"), progress=False)


def _untrained_smoke(lm: str):
    """The embedded smoke model, untrained: a real tokenizer and processor, random weights."""
    prof = get_profile("smoke")
    proc = build_processor(prof.scenes.image_size, prof.backbone.num_query_tokens)
    model = build_model("smoke", lm, seed=0).eval()
    spec = "embedded:smoke" + ("-t5" if lm == "t5" else "")
    return backbone_from_model(model, tokenizer=proc.tokenizer, processor=proc, spec=spec)


@pytest.fixture(scope="module")
def smoke_backbone():
    return _untrained_smoke("opt")


@pytest.fixture(scope="module")
def semi_batches(smoke_backbone, smoke_ds):
    return teacher_forced_batches(
        smoke_backbone, smoke_ds["exit_train"], "semi", 8, max_rows=24, progress=False
    )


def test_semi_batches_target_the_answer(smoke_backbone, smoke_ds, semi_batches):
    b = semi_batches[0]
    L = smoke_backbone.num_layers
    assert b.hidden.shape[:3] == (L + 1, *b.mask.shape)
    tok = smoke_backbone.tokenizer
    first = [t for t in b.targets[0].tolist() if t != -100]
    assert tok.decode(first[:-1]) == smoke_ds["exit_train"][0]["answer"] and first[-1] == tok.eos_token_id
    assert torch.equal(b.loss_mask.bool(), b.targets != -100)


def test_caption_batches_target_the_first_reference(smoke_backbone, smoke_ds, semi_batches):
    rows = smoke_ds["exit_train"].select(range(24))
    n_vqa = -(-len(rows) // 8)
    b = semi_batches[n_vqa]  # the first caption batch follows the VQA batches
    first = [t for t in b.targets[0].tolist() if t != -100]
    assert smoke_backbone.tokenizer.decode(first[:-1]) == rows[0]["captions"][0]


def test_unsupervised_batches_never_read_labels(smoke_backbone, smoke_ds):
    unlabeled = smoke_ds["unlabeled"]
    assert not any(unlabeled["answer"])
    batches = teacher_forced_batches(smoke_backbone, unlabeled, "unsupervised", 8, max_rows=8, progress=False)
    assert batches[0].targets is None and batches[0].loss_mask.sum() > 0


def test_semi_needs_a_labelled_split(smoke_backbone, smoke_ds):
    with pytest.raises(FreeBenchError, match="labelled split"):
        teacher_forced_batches(smoke_backbone, smoke_ds["unlabeled"], "semi", 8, max_rows=8, progress=False)


@pytest.mark.parametrize("name", ["free", "deebert", "pabee", "distill"])
def test_training_lowers_the_loss_and_leaves_the_backbone_alone(smoke_backbone, semi_batches, tmp_path, name):
    torch.manual_seed(0)
    before = {k: v.clone() for k, v in smoke_backbone.model.state_dict().items()}
    method = get_method(name)(smoke_backbone, (2, 4))
    cfg = ExitTrainConfig(steps=30, checkpoint_every=10, lr=3e-3, collapse_steps=1000)
    log = train_exits(method, semi_batches, cfg, "semi", tmp_path, progress=False)
    losses = [e["loss"] for e in log["step"]]
    assert len(losses) == 30 and sum(losses[-5:]) < sum(losses[:5])
    if name == "free":
        assert "disc" in log["step"][0] and "disc_acc@2" in log["step"][0]
    for k, v in smoke_backbone.model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("stop", ["killed", "sigterm"])
def test_resume_is_bit_identical(smoke_backbone, semi_batches, tmp_path, monkeypatch, stop):
    """Stopped in step 5 (the periodic checkpoint is step 3), then resumed: the weights equal an
    unstopped run's bit for bit. `killed`: an exception inside the step, so the run resumes from step
    3; `sigterm` (a time limit): the step is finished and checkpointed, the run exits 143, and the
    resume starts at step 5."""
    import signal

    torch.set_num_threads(1)
    cfg = ExitTrainConfig(steps=8, checkpoint_every=3, collapse_steps=1000)
    torch.manual_seed(0)
    whole = get_method("free")(smoke_backbone, (2, 4))
    assert "resumed_at" not in train_exits(whole, semi_batches, cfg, "semi", tmp_path / "a", progress=False)

    real, calls = loop_mod._step, {"n": 0}

    def stops_in_step_5(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5 and stop == "killed":
            raise KeyboardInterrupt
        if calls["n"] == 5:
            signal.raise_signal(signal.SIGTERM)
        return real(*a, **k)

    monkeypatch.setattr(loop_mod, "_step", stops_in_step_5)
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt if stop == "killed" else SystemExit) as err:
        train_exits(get_method("free")(smoke_backbone, (2, 4)), semi_batches, cfg, "semi", tmp_path / "b",
                    progress=False)  # fmt: skip
    saved = torch.load(tmp_path / "b" / "exit_train_state.pt", weights_only=False)["step"]
    assert saved == (3 if stop == "killed" else 5)
    if stop == "sigterm":
        assert err.value.code == 128 + signal.SIGTERM
    monkeypatch.setattr(loop_mod, "_step", real)
    torch.manual_seed(1)  # fresh weights: everything must come from the checkpoint
    resumed = get_method("free")(smoke_backbone, (2, 4))
    log = train_exits(resumed, semi_batches, cfg, "semi", tmp_path / "b", progress=False)
    assert [e["step"] for e in log["step"]] == list(range(1, 9))
    assert log["resumed_at"] == [saved]  # the manifest's resumed_at_steps: its wall_seconds start there
    for (k, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_guard_rolls_back_once_then_stops(smoke_backbone, semi_batches, tmp_path, monkeypatch):
    """A loss that turns NaN after step 4: one rollback to the step-4 checkpoint, then GanCollapse."""
    real, calls = loop_mod._step, {"n": 0}

    def nan_after_4(*a, **k):
        calls["n"] += 1
        entry = real(*a, **k)
        if calls["n"] > 4:
            entry["loss"] = float("nan")
        return entry

    monkeypatch.setattr(loop_mod, "_step", nan_after_4)
    method = get_method("free")(smoke_backbone, (2, 4))
    cfg = ExitTrainConfig(steps=10, checkpoint_every=4)
    with pytest.raises(GanCollapse, match="after one rollback"):
        train_exits(method, semi_batches, cfg, "semi", tmp_path, progress=False)
    assert calls["n"] == 6  # 4 good, 1 NaN -> rollback to step 4, 1 NaN -> stop
    state = torch.load(tmp_path / "exit_train_state.pt", weights_only=False)
    assert state["step"] == 4


def test_collapsed_discriminator_is_detected(smoke_backbone, semi_batches, tmp_path, monkeypatch):
    real = loop_mod._step

    def pinned(*a, **k):
        entry = real(*a, **k)
        entry["disc_acc@2"] = 1.0
        return entry

    monkeypatch.setattr(loop_mod, "_step", pinned)
    cfg = ExitTrainConfig(steps=20, checkpoint_every=2, collapse_steps=3)
    with pytest.raises(GanCollapse, match="pinned"):
        train_exits(
            get_method("free")(smoke_backbone, (2, 4)), semi_batches, cfg, "semi", tmp_path, progress=False
        )


def test_untrainable_method_is_an_error(smoke_backbone, semi_batches, tmp_path):
    with pytest.raises(FreeBenchError, match="nothing to train"):
        train_exits(
            get_method("static")(smoke_backbone, (2,)), semi_batches, ExitTrainConfig(), "semi", tmp_path
        )


def test_per_exit_eval_of_static_exits_is_the_logit_lens(smoke_backbone, smoke_ds):
    """Static exits are the raw logit lens: the per-exit table must reproduce backbone.quality's lens."""
    from free_bench.evaluation.per_exit import accuracy_table, per_exit_vqa
    from free_bench.evaluation.quality import logit_lens

    split = smoke_ds["val"]
    method = get_method("static")(smoke_backbone, (1, 2, 3, 4))
    df = per_exit_vqa(method, split, max_rows=40, batch_size=16, progress=False)
    assert set(df["exit_kind"]) == {"exit", "final"} and len(df) == 40 * 5
    lens = logit_lens(smoke_backbone, split, 40, progress=False).set_index("layer")["accuracy"]
    table = accuracy_table(df)
    assert list(table.columns) == ["1", "2", "3", "4", "final"]
    for layer in range(1, 5):
        assert table.loc["all", str(layer)] == pytest.approx(lens[layer], abs=1e-4)
    assert table.loc["all", "final"] == pytest.approx(lens[4], abs=1e-4)


def test_per_exit_captions_final_layer_is_the_full_models_caption(smoke_backbone, smoke_ds):
    from free_bench.evaluation.per_exit import caption_score_table, per_exit_captions
    from free_bench.evaluation.quality import caption_predictions

    method = get_method("deebert")(smoke_backbone, (2, 4))
    df = per_exit_captions(method, smoke_ds["val"], max_images=6, batch_size=4, progress=False)
    assert len(df) == 6 * 3 and set(df["exit_kind"]) == {"exit", "final"}
    full, _ = caption_predictions(smoke_backbone, smoke_ds["val"], 6, progress=False)
    final = df[df.exit_kind == "final"].set_index("image_id")["prediction"]
    assert final.to_dict() == full  # teacher forcing on its own caption reproduces the full model
    scores = caption_score_table(df)
    assert set(scores["layer"]) == {2, 4} and ("CIDEr" in set(scores["metric"]))


@pytest.fixture(scope="module")
def smoke_t5_backbone():
    return _untrained_smoke("t5")


def test_t5_light_heads_train_and_evaluate(smoke_t5_backbone, smoke_ds, tmp_path):
    """On a T5 backbone the exits sit on decoder layers: batches, training and both evaluations run,
    static exits reproduce the logit lens, and the final layer reproduces the full model's caption."""
    from free_bench.evaluation.per_exit import accuracy_table, per_exit_captions, per_exit_vqa
    from free_bench.evaluation.quality import caption_predictions, logit_lens

    bb = smoke_t5_backbone
    batches = teacher_forced_batches(bb, smoke_ds["exit_train"], "semi", 8, max_rows=16, progress=False)
    first = [t for t in batches[0].targets[0].tolist() if t != -100]
    assert bb.tokenizer.decode(first[:-1]) == smoke_ds["exit_train"][0]["answer"]
    log = train_exits(
        get_method("deebert")(bb, (1, 3)), batches, ExitTrainConfig(steps=4), "semi", tmp_path, progress=False
    )
    assert len(log["step"]) == 4
    static = get_method("static")(bb, tuple(range(1, bb.num_layers + 1)))
    table = accuracy_table(per_exit_vqa(static, smoke_ds["val"], max_rows=24, progress=False))
    lens = logit_lens(bb, smoke_ds["val"], 24, progress=False).set_index("layer")["accuracy"]
    for layer in range(1, bb.num_layers + 1):
        assert table.loc["all", str(layer)] == pytest.approx(lens[layer], abs=1e-4)
    caps = per_exit_captions(static, smoke_ds["val"], max_images=4, progress=False)
    full, _ = caption_predictions(bb, smoke_ds["val"], 4, progress=False)
    assert caps[caps.exit_kind == "final"].set_index("image_id")["prediction"].to_dict() == full
