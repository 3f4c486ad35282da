"""Named, frozen configurations: one per profile (smoke, cpu, gpu), no scattered defaults.

A profile fixes the size of everything the suite builds for it: the `scenes` dataset here; the
embedded backbone and its pretraining, the exit training and the sweeps in later modules.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from free_bench.core.errors import check_choice

# --- what exists, as plain names ---------------------------------------------------------------
# The CLI checks its flags against these before torch is imported; tests/unit/test_config.py checks
# each list against the module that implements it.
METHODS: tuple[str, ...] = ("free", "deebert", "pabee", "distill", "static", "oracle", "mue")  # paper's order
SWEEP_METHODS: tuple[str, ...] = ("free", "deebert", "pabee", "distill", "static", "mue")  # with a threshold
REGIMES: tuple[str, ...] = ("semi", "unsupervised")
DATASETS: tuple[str, ...] = ("scenes", "coco-karpathy", "vqav2")
SPLITS: tuple[str, ...] = ("train", "exit_train", "unlabeled", "val", "test", "test_novel")
SWEEP_SPLITS: tuple[str, ...] = ("val", "test", "test_novel")
TASKS: tuple[str, ...] = ("vqa", "caption")
MODES: tuple[str, ...] = ("simulated", "live")
KV_POLICIES: tuple[str, ...] = ("propagate", "deferred", "full")
ENGINES: tuple[str, ...] = ("eager", "graphs")
DECODES: tuple[str, ...] = ("greedy", "speculative")  # greedy exits (lossy), or drafts verified (lossless)
LM_TYPES: tuple[str, ...] = ("opt", "t5")
PERTURBATIONS: tuple[str, ...] = (
    "gaussian_noise", "blur", "brightness", "contrast", "jpeg", "occlusion", "typo", "word_drop",
)  # fmt: skip
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class ScenesConfig:
    """Size of the procedurally generated `scenes` dataset for one profile."""

    image_size: int  # pixels per side
    images: dict[str, int]  # images per split
    questions_per_image: dict[str, int]  # VQA rows per image, per split
    max_objects: int = 6
    grid: int = (
        4  # objects sit in distinct cells of a grid x grid layout; the embedded ViT's patch is one cell
    )
    novel_pairs: int = 4  # (color, shape) combinations held out for `test_novel`

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class BackboneConfig:
    """Shape of the embedded BLIP-2: ViT -> Q-Former -> projection -> LM (OPT, or T5 for `-t5`)."""

    vision_hidden: int
    vision_layers: int
    vision_heads: int
    patch_size: int
    qformer_hidden: int
    qformer_layers: int
    qformer_heads: int
    num_query_tokens: int
    lm_hidden: int
    lm_layers: int  # OPT decoder layers, or T5 decoder (and encoder) layers; exits sit on decoder layers
    lm_heads: int
    lm_ffn: int
    max_positions: int = 128


@dataclass(frozen=True)
class PretrainConfig:
    """BLIP-2-style two-stage pretraining on `scenes`.

    Stage 0 (`vision_steps`) pretrains the ViT on the objects in its patches, standing in for the
    pretrained vision encoder BLIP-2 starts from. Stage 1 trains the LM on text alone; stage 2 trains vision encoder, Q-Former and projection on
    image-text pairs. `stage2_train_lm` unfreezes the LM in stage 2: a documented deviation from
    BLIP-2 for small models, reported next to the frozen-LM result.
    """

    stage1_steps: int
    stage2_steps: int
    batch_size: int
    vision_steps: int = 0  # stage 0: the ViT on scenes' per-cell objects, for want of a pretrained ViT
    lr_vision: float = 1e-3
    lr_stage1: float = 1e-3
    lr_stage2: float = 1e-3
    lr_lm_stage2: float = 2e-4
    weight_decay: float = 0.01
    warmup_steps: int = 50
    grad_clip: float = 1.0
    caption_fraction: float = 0.25  # share of stage-2 examples that are captions (rest: VQA)
    stage2_train_lm: bool = True
    # stage 2 on `scenes`: query i of the Q-Former also predicts the object in grid cell i (a throw-away
    # linear head, as stage 0's); the weight of that loss, 0 = off. Stands in for BLIP-2's own Q-Former
    # pretraining (image-text representation learning), which the embedded backbone does not have.
    query_cell_weight: float = 0.0
    checkpoint_every: int = 100
    eval_max_rows: int = 1000


@dataclass(frozen=True)
class ExitTrainConfig:
    """Exit training on the frozen backbone (every method gets the same data budget)."""

    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    lr_disc: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    checkpoint_every: int = 100
    collapse_steps: int = 50  # a discriminator pinned at accuracy 0 or 1 this long counts as collapsed
    rollback_lr_factor: float = 0.3
    max_rows: int | None = None  # rows of the training split (None: all)
    dense: str = "all"  # placement for the per-layer analyses
    sparse: str = "every:2"  # placement for inference (4-6 exits)
    # teacher-forced hidden states kept between steps (MiB; None: all). 0 streams: at most one batch
    # of all-layer states alive (about 7 MB a 40-token row at OPT-2.7b width), each recomputed when visited
    keep_mib: float | None = 0.0


@dataclass(frozen=True)
class ReproduceConfig:
    """What `free-bench reproduce` runs after the backbone: exits, sweeps, robustness, report."""

    runs: tuple[str, ...] = (
        "free:semi", "deebert:semi", "pabee:semi", "distill:semi", "free:unsupervised", "distill:unsupervised"
    )  # fmt: skip
    seeds: tuple[int, ...] = (0,)  # exit-training seeds (the backbone is trained once)
    exit_steps: int | None = None  # exit training steps (None: the profile's ExitTrainConfig.steps)
    exit_workers: int = 1  # exit-training chains run side by side (processes sharing the one device)
    # device memory one chain takes, which caps the workers (gpu profile: six used 58977 MiB on the H200)
    exit_worker_gib: float = 12.0
    grid: int = 101  # thresholds of a simulated VQA sweep
    caption_grid: int = 11  # thresholds of a simulated caption sweep (each point is a CIDEr run)
    caption_rows: int | None = 100  # images in caption sweeps
    live_rows: int = 200  # VQA rows decoded live per threshold (test split)
    live_points: int = 3  # thresholds decoded live per method: the val operating point and neighbours
    live_runs: tuple[str, ...] | None = None  # runs decoded live (None: every run); static always is
    live_engines: tuple[str, ...] = ("eager",)  # live sweeps per engine (graphs: CUDA only)
    # every live run and static also decoded at these batch sizes on every live engine, compacted and with
    # exited rows riding along: which of the two is faster is then measured per method, never assumed
    batch_sizes: tuple[int, ...] = (8, 32)
    # the engines that decode the batch sizes (None: every live engine); the others decode batch 1 alone
    batch_engines: tuple[str, ...] | None = None
    # Self-speculative decoding (lossless: the exits draft, one full pass verifies) at each run's batch-1 live
    # thresholds, beside a lossy greedy twin on the same rows, so the report can set the speedup that keeps
    # the full model's answers against the one that trades quality. Most tokens drafted per verification:
    draft_len: int = 4
    # "method:regime" runs (and "static", which drafts with one fixed exit as LayerSkip does) decoded
    # speculatively; None: every live run and static. A named run must be decoded live (live_runs)
    speculative_runs: tuple[str, ...] | None = None
    # VQA on the live rows; captions (caption_rows images, only where "caption" is in tasks) with their
    # lossy greedy twin: a caption is long enough for drafts to pay, a VQA answer is a token or two
    speculative_tasks: tuple[str, ...] = ("vqa", "caption")
    # the engines that decode speculatively (None: every live engine)
    speculative_engines: tuple[str, ...] | None = None
    robustness_runs: tuple[str, ...] = ("free:semi", "deebert:semi", "pabee:semi", "distill:semi")
    robustness_rows: int = 64  # rows per perturbation x severity, decoded live at the operating point
    robustness_batch_size: int = 8
    # batched engine mode of the grid (compaction or rows riding along): whichever the device runs faster
    robustness_compact: bool = True
    # the engine that decodes the grid (graphs: CUDA only, else eager, recorded in the grid's manifest):
    # quality under shift does not depend on it, its speedups are measured against its own full model
    robustness_engine: str = "eager"
    perturbations: tuple[str, ...] | None = None  # None: every perturbation in data.perturb
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    max_drop: float = 0.01  # the operating point: the cheapest threshold within this of the full model on val
    # Learn-then-Test on val for these runs, its threshold then evaluated on test, clean and under the grid
    calibration_runs: tuple[str, ...] = ("free:semi", "deebert:semi", "pabee:semi", "distill:semi")
    calibration_epsilon: float = 0.05  # the certified risk level (consistency: answers unlike the full model's)
    calibration_delta: float = 0.1
    calibration_risk: str = "consistency"
    calibration_rows: int | None = None  # val questions calibrated on (None: all)
    calibration_batch_size: int = 16  # rows per decode while calibrating and evaluating the certified threshold
    # slowdown attack at each run's operating point (the calibration runs): test questions, L-inf budget, steps
    attack_rows: int = 64
    attack_eps: float = 8 / 255
    attack_steps: int = 10
    tasks: tuple[str, ...] = ("vqa", "caption")  # what exits train and are evaluated on (VQAv2 alone: vqa)


@dataclass(frozen=True)
class Profile:
    """Everything a profile decides: its scenes, its embedded backbone and pretraining, exit training
    and what reproduce runs."""

    name: str
    scenes: ScenesConfig
    backbone: BackboneConfig
    pretrain: PretrainConfig
    exits: ExitTrainConfig = field(default_factory=ExitTrainConfig)
    reproduce: ReproduceConfig = field(default_factory=ReproduceConfig)
    seed: int = 0
    extras: dict = field(default_factory=dict)


_SPLITS = ("train", "exit_train", "unlabeled", "val", "test", "test_novel")


def _per_split(train: int, exit_train: int, other: int, novel: int) -> dict[str, int]:
    return dict(zip(_SPLITS, (train, exit_train, other, other, other, novel), strict=True))


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        scenes=ScenesConfig(
            image_size=32,
            images=_per_split(train=160, exit_train=32, other=32, novel=24),
            questions_per_image=_per_split(train=2, exit_train=2, other=2, novel=2),
            max_objects=4,
        ),
        backbone=BackboneConfig(
            vision_hidden=64,
            vision_layers=2,
            vision_heads=2,
            patch_size=8,
            qformer_hidden=64,
            qformer_layers=1,
            qformer_heads=2,
            num_query_tokens=8,
            lm_hidden=64,
            lm_layers=4,
            lm_heads=4,
            lm_ffn=256,
        ),
        pretrain=PretrainConfig(
            vision_steps=40,
            stage1_steps=40,
            stage2_steps=60,
            batch_size=32,
            warmup_steps=10,
            checkpoint_every=20,
            eval_max_rows=64,
        ),
        exits=ExitTrainConfig(steps=20, batch_size=16, checkpoint_every=10, sparse="2,3", keep_mib=None),
        reproduce=ReproduceConfig(
            runs=("free:semi", "deebert:semi", "pabee:semi", "distill:semi", "free:unsupervised"),
            grid=11,
            caption_grid=3,
            caption_rows=8,
            live_rows=12,
            live_points=2,
            batch_sizes=(4,),
            speculative_runs=("free:semi",),  # CI runs this reproduce: one run decoded speculatively
            robustness_rows=8,
            robustness_batch_size=4,
            perturbations=("gaussian_noise", "typo"),
            severities=(1, 5),
            calibration_runs=("free:semi", "deebert:semi"),
            calibration_epsilon=0.2,
            calibration_rows=24,
            attack_rows=8,
            attack_steps=2,
        ),  # fmt: skip
    ),
    "cpu": Profile(
        name="cpu",
        scenes=ScenesConfig(
            image_size=64,
            images=_per_split(train=4000, exit_train=300, other=300, novel=200),
            questions_per_image=_per_split(train=3, exit_train=2, other=2, novel=2),
        ),
        backbone=BackboneConfig(
            vision_hidden=128,
            vision_layers=3,
            vision_heads=4,
            patch_size=16,
            qformer_hidden=128,
            qformer_layers=2,
            qformer_heads=4,
            num_query_tokens=16,
            lm_hidden=128,
            lm_layers=8,
            lm_heads=4,
            lm_ffn=512,
        ),
        pretrain=PretrainConfig(
            # commit b33db10 (all 577 test / 591 val questions): 800 + 1450 steps with the query-cell loss at
            # 0.3 give 70.6 / 73.6 % in 449 s; without it 68.2 / 66.4 %; 1500 + 1300 steps 66.6 / 65.1 %
            vision_steps=800,
            stage1_steps=100,
            stage2_steps=1450,
            batch_size=64,
            caption_fraction=0.2,
            lr_lm_stage2=1e-3,
            query_cell_weight=0.3,
        ),
        exits=ExitTrainConfig(steps=300, batch_size=32, sparse="2,4,6", keep_mib=None),
        # Within the 25-minute budget (14.6-15 min before batches of every method and speculative decoding):
        # measured at commit 61b366f on 2 Xeon cores, 2026-12-07, a live batch sweep took 1.6-2.3 s, a
        # speculative VQA sweep (200 questions, 3 thresholds) 21-25 s, a speculative caption sweep (100
        # images) 32-43 s and its lossy twin 30-40 s: every run speculative added 12.7 min, so FREE and
        # static (LayerSkip's fixed exit) are decoded speculatively, about 4 min with every method's batches.
        # The whole run at 31a4667 on 2 AMD EPYC cores: 25.4 min (backbone 10.2, exits 5.3, sweeps 4.4,
        # robustness 2.4, calibration and attack 2.7; results/cpu/README.md)
        reproduce=ReproduceConfig(speculative_runs=("free:semi", "static")),
    ),
    "gpu": Profile(
        name="gpu",
        scenes=ScenesConfig(
            image_size=64,
            images=_per_split(train=24000, exit_train=1500, other=1000, novel=1000),
            questions_per_image=_per_split(train=3, exit_train=2, other=2, novel=2),
        ),
        backbone=BackboneConfig(
            vision_hidden=384,
            vision_layers=6,
            vision_heads=6,
            patch_size=16,
            qformer_hidden=384,
            qformer_layers=4,
            qformer_heads=6,
            num_query_tokens=32,
            lm_hidden=512,
            lm_layers=24,
            lm_heads=8,
            lm_ffn=2048,
        ),
        pretrain=PretrainConfig(
            vision_steps=1500,
            stage1_steps=300,
            stage2_steps=2800,
            batch_size=256,
            caption_fraction=0.2,
            lr_stage1=5e-4,
            lr_stage2=1e-3,
            lr_lm_stage2=5e-4,
            warmup_steps=100,
            # the cpu profile's query-cell loss (66.6 -> 70.6 % there); without it 82.3-86 % over 8 H200
            # runs, 85 % reached in 2 (commits 0aff8fb-b33db10)
            query_cell_weight=0.3,
            checkpoint_every=500,
        ),
        exits=ExitTrainConfig(steps=600, batch_size=64, dense="every:2", sparse="4,8,12,16,20",
                              keep_mib=None),
        # One device loan (30 device minutes, nothing kept between loans). Measured at 058e16a on an H200:
        # backbone 7.5 min, a wave of six exit trainings 1.6 min, a live VQA question at batch 1 26.9 ms on
        # the eager engine's full model and 3.9 on the graphs engine's. So: one exit seed (three add 3.2
        # min); batch 1 on both engines; the batch sizes on the graphs engine alone (the engine a batch
        # would run on; eager batches measured 0.6-1.1x at cc101e5); speculative decoding of FREE and static
        # (LayerSkip's fixed exit) with their lossy caption twins on the graphs engine (a caption is some 20
        # tokens); calibration and the slowdown attack at 64 rows a decode. Estimated 19-23 min, the graphs
        # engine's captures per batch bucket and the guarantees stage not yet timed on a GPU
        reproduce=ReproduceConfig(
            seeds=(0,),
            exit_steps=400,
            exit_workers=6,
            live_rows=100,
            live_points=2,
            live_runs=("free:semi", "deebert:semi", "pabee:semi", "distill:semi"),
            live_engines=("eager", "graphs"),
            batch_sizes=(8, 32, 64),  # every live run and static, compacted and riding along
            batch_engines=("graphs",),
            speculative_runs=("free:semi", "static"),
            speculative_engines=("graphs",),
            calibration_batch_size=64,
            robustness_rows=64,
            robustness_batch_size=64,
            # compaction loses on the H200 at this width (commit cc101e5: b8 1.09x compacted, 1.28x riding
            # along; b32 0.82x vs 0.97x; results/gpu/sweeps/live-free-*-b*), so the grid's rows ride along
            robustness_compact=False,
            # the grid on the graphs engine: its full model took 3.9 ms a question at batch 1 against the
            # eager engine's 26.9 in results/gpu's run (recorded in 7751591), and riding along it captures
            # one bucket per method
            robustness_engine="graphs",
        ),  # fmt: skip
    ),
}


def get_profile(name: str) -> Profile:
    """The named profile, or an error listing the valid names."""
    return PROFILES[check_choice("profile", name, list(PROFILES))]


def cache_dir() -> Path:
    """Where generated data, backbones and work folders live (never in git): $FREE_BENCH_CACHE, else
    $XDG_CACHE_HOME/free-bench, else ~/.cache/free-bench; never the folder the user happens to be in."""
    if os.environ.get("FREE_BENCH_CACHE"):
        return Path(os.environ["FREE_BENCH_CACHE"]).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return (Path(base).expanduser() / "free-bench").resolve()
