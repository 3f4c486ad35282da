"""Exit methods on tiny random BLIP-2s: registry, placement, rules, losses, save/load, composition."""

from __future__ import annotations

import json
import re

import pytest
import torch

from free_bench.config import METHODS
from free_bench.core.errors import FreeBenchError
from free_bench.methods import (
    ExitMethod,
    Exits,
    MethodSpec,
    available,
    build_method,
    get_method,
    is_exit_method,
    load_exits,
    parse_placement,
    rules,
    save_method,
)
from free_bench.methods import losses as L
from free_bench.methods.heads import Discriminators, features
from free_bench.methods.protocol import MEMBERS
from free_bench.models import Backbone, from_hf
from free_bench.models.runner import teacher_forced_hidden_states
from free_bench.models.tiny import build_tiny_blip2, tiny_inputs

pytestmark = pytest.mark.usefixtures("single_thread")

TRAINABLE = ("free", "deebert", "pabee", "distill")


# --- fixtures: own backbones (constructing a method freezes its backbone) --------------------------
@pytest.fixture(scope="module")
def opt_bb() -> Backbone:
    return from_hf(build_tiny_blip2("opt", seed=1))


@pytest.fixture(scope="module")
def t5_bb() -> Backbone:
    return from_hf(build_tiny_blip2("t5", seed=1))


def _batch(bb: Backbone, seed: int = 3) -> dict[str, torch.Tensor]:
    """Teacher-forced hidden states (L+1, B, T, D), mask (B, T) and next-token targets (B, T)."""
    inputs = tiny_inputs(bb.model, 3, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    target_ids = torch.randint(4, 90, (3, 5), generator=gen)
    tmask = torch.ones_like(target_ids)
    tmask[2, 3:] = 0  # a shorter target row
    with torch.no_grad():
        out = teacher_forced_hidden_states(bb, **inputs, target_ids=target_ids, target_attention_mask=tmask)
    mask = out.attention_mask
    targets = torch.full(mask.shape, -100, dtype=torch.long)
    targets[:, out.target_slice] = target_ids.masked_fill(tmask == 0, -100)
    return {"hidden": out.hidden_states, "mask": mask, "targets": targets}


@pytest.fixture(scope="module")
def opt_batch(opt_bb: Backbone) -> dict[str, torch.Tensor]:
    return _batch(opt_bb)


@pytest.fixture(scope="module")
def t5_batch(t5_bb: Backbone) -> dict[str, torch.Tensor]:
    return _batch(t5_bb)


def _disc_params(method: ExitMethod) -> list[torch.nn.Parameter]:
    return [] if method.discriminators is None else list(method.discriminators.parameters())


def _perturb(method: ExitMethod, seed: int = 0) -> None:
    """Move exit weights off their init so round-trip tests compare something non-trivial."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in method.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


# --- registry and placement ------------------------------------------------------------------------
def test_registry_names_and_unknown() -> None:
    assert available() == ["free", "deebert", "pabee", "distill", "static", "oracle", "mue"]
    assert get_method("pabee").name == "pabee"
    with pytest.raises(FreeBenchError, match="'nope'.*deebert.*free"):
        get_method("nope")


def test_specs_follow_config() -> None:
    """One spec per config.METHODS name, in that order, each rule a known one; flags from the parts."""
    assert available() == list(METHODS)
    for name in METHODS:
        spec = get_method(name)
        assert isinstance(spec, MethodSpec) and spec.name == name and spec.rule in rules.RULES
        assert spec.trainable == (name in TRAINABLE) and spec.adversarial == (name == "free")
    assert [get_method(n).rule for n in ("deebert", "pabee", "mue")] == ["entropy", "patience", "cosine"]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ([3, 1], (1, 3)),
        ((torch.tensor(2),), (2,)),
        ("all", (1, 2, 3, 4)),
        ("every:2", (2, 4)),
        ("every:3", (3,)),
        (" 1, 4 ", (1, 4)),
    ],
)
def test_parse_placement(spec: object, expected: tuple[int, ...]) -> None:
    assert parse_placement(spec, 4) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ([0], "layer 0 is outside 1..4"),
        ([5], "layer 5 is outside"),
        ("2,9", "layer 9 is outside"),
        ([2, 2, 3], r"\[2\] repeated"),
        ([], "empty"),
        ("", "empty"),
        ("every:0", "k >= 1, got '0'"),
        ("every:x", "got 'x'"),
        ("every:5", "empty"),
        ("a,2", "'a' is not a layer index"),
        ([True], "True is outside"),
        (3, "list of layer indices"),
        ([2.0], "layer 2.0 is outside"),
    ],
)
def test_parse_placement_errors(spec: object, message: str) -> None:
    with pytest.raises(FreeBenchError, match=message):
        parse_placement(spec, 4)


def test_option_validation(opt_bb: Backbone) -> None:
    with pytest.raises(FreeBenchError, match="patience"):
        get_method("pabee")(opt_bb, [2, 4], patience=0)
    with pytest.raises(FreeBenchError, match="temperature"):
        get_method("distill")(opt_bb, [2, 4], temperature=0)
    with pytest.raises(FreeBenchError, match="unknown option.*'bogus'.*valid options"):
        get_method("deebert")(opt_bb, [2, 4], bogus=1)
    with pytest.raises(FreeBenchError, match="init_layer"):
        get_method("free")(opt_bb, [2], init_layer="first")


# --- rules on hand-made logits ---------------------------------------------------------------------
def _from_probs(probs: list[list[list[float]]]) -> torch.Tensor:
    return torch.tensor(probs).log()  # (E, N, V)


def _from_tokens(tokens: list[list[int]], vocab: int = 8) -> torch.Tensor:
    return 10.0 * torch.nn.functional.one_hot(torch.tensor(tokens), vocab).float()  # (E, N, V)


def test_max_prob_and_entropy_rules() -> None:
    # exits x tokens x 2-token vocab; token 0 confident at exit 1, token 1 at exit 0, token 2 never
    logits = _from_probs(
        [
            [[0.5, 0.5], [0.95, 0.05], [0.6, 0.4]],
            [[0.9, 0.1], [0.5, 0.5], [0.7, 0.3]],
        ]
    )
    assert rules.max_prob_exit(logits, 0.85).tolist() == [1, 0, 2]
    assert rules.max_prob_exit(logits, 0.5).tolist() == [0, 0, 0]
    ent = rules.entropy(logits)
    assert ent[0, 0].item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-6)
    assert rules.entropy_exit(logits, 0.4).tolist() == [1, 0, 2]
    assert rules.entropy_exit(logits, 0.0).tolist() == [2, 2, 2]
    banned = torch.tensor([[[0.0, float("-inf")]]])  # a -inf logit: zero entropy, not NaN
    assert rules.entropy(banned).item() == 0.0


def test_patience_rule_counts_like_pabee() -> None:
    # columns = tokens; rows = exits
    logits = _from_tokens([[1, 1, 1, 5], [1, 2, 2, 5], [2, 2, 3, 5], [2, 2, 4, 5]])
    assert rules.patience_exit(logits, 1).tolist() == [1, 2, 4, 1]
    assert rules.patience_exit(logits, 2).tolist() == [4, 3, 4, 2]
    assert rules.patience_exit(logits, 3.0).tolist() == [4, 4, 4, 3]
    for bad in (0, 1.5, True):
        with pytest.raises(FreeBenchError, match="patience"):
            rules.patience_exit(logits, bad)


def test_static_and_oracle_rules(opt_bb: Backbone) -> None:
    logits = _from_tokens([[1, 2, 3], [1, 3, 4], [7, 3, 5]])  # E=3 at layers (1, 2, 4)
    static = get_method("static")(opt_bb, [1, 2, 4])
    assert static.exit_index(logits, 4).tolist() == [2, 2, 2]
    assert static.exit_index(logits[:2], 4).tolist() == [2, 2, 2]  # exit 4 not seen yet -> E
    for bad in (3, 4.5):
        with pytest.raises(FreeBenchError, match=f"static exit layer {bad} is not an exit"):
            static.exit_index(logits, bad)
    oracle = get_method("oracle")(opt_bb, [1, 2, 4])
    final = torch.tensor([7, 3, 9])
    assert oracle.exit_index_oracle(logits, final).tolist() == [2, 1, 3]
    labels = torch.tensor([1, -100, 4])
    assert oracle.exit_index_oracle(logits, final, labels).tolist() == [0, 3, 1]
    with pytest.raises(FreeBenchError, match="exit_index_oracle"):
        oracle.exit_index(logits, 0.5)


def test_method_rules_dispatch(opt_bb: Backbone) -> None:
    logits = _from_tokens([[1, 2], [1, 3], [1, 3]])
    assert get_method("pabee")(opt_bb, [1, 2, 3], patience=1).exit_index(logits).tolist() == [1, 2]
    assert get_method("deebert")(opt_bb, [1, 2, 3]).exit_index(logits, 0.1).tolist() == [0, 0]
    assert get_method("distill")(opt_bb, [1, 2, 3]).exit_index(logits, 1.1).tolist() == [3, 3]


# --- exit modules ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["deebert", "static", "oracle"])
def test_logit_lens_at_init(name: str, opt_bb: Backbone, opt_batch: dict) -> None:
    """Zero-init residual adapters (and an own head copied from the LM head) start at the logit lens."""
    options = {"own_head": True} if name == "deebert" else {}
    method = get_method(name)(opt_bb, "every:2", **options)
    hidden = opt_batch["hidden"][2]
    with torch.no_grad():
        torch.testing.assert_close(method.exit_logits(2, hidden), opt_bb.logits_from_hidden(hidden))
        assert method.all_exit_logits(opt_batch["hidden"]).shape == (2, *hidden.shape[:2], 100)
    with pytest.raises(FreeBenchError, match="layer 3 is not an exit"):
        method.exit_logits(3, hidden)


@pytest.mark.parametrize("k", [1, 3, 4])
def test_generator_copy_reproduces_backbone_layer(k: int, opt_bb: Backbone, opt_batch: dict) -> None:
    """The copy of layer k on h_{k-1} with the method's mask gives the runner's h_k (padded rows too)."""
    method = get_method("distill")(opt_bb, [k])
    hs, mask = opt_batch["hidden"], opt_batch["mask"]
    with torch.no_grad():
        out = method.exit_hidden(k, hs[k - 1], mask)
    real = mask.bool()
    torch.testing.assert_close(out[real], hs[k][real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("init_layer", "source"), [("next", 3), ("last", 4)])
def test_generator_init_layer(init_layer: str, source: int, opt_bb: Backbone, opt_batch: dict) -> None:
    method = get_method("free")(opt_bb, [2], init_layer=init_layer)
    hs, real = opt_batch["hidden"], opt_batch["mask"].bool()
    with torch.no_grad():
        out = method.exit_hidden(2, hs[source - 1], opt_batch["mask"])
    torch.testing.assert_close(out[real], hs[source][real], atol=1e-5, rtol=1e-5)


def test_generators_need_opt(t5_bb: Backbone) -> None:
    for name in ("free", "distill"):
        with pytest.raises(FreeBenchError, match="support OPT backbones; T5"):
            get_method(name)(t5_bb, [1, 3])


# --- losses ----------------------------------------------------------------------------------------
def _check_grads(method: ExitMethod, bb: Backbone, loss: torch.Tensor, params: list) -> None:
    before = {n: p.detach().clone() for n, p in bb.model.named_parameters()}
    method.zero_grad(set_to_none=True)
    loss.backward()
    assert all(p.grad is None for p in bb.model.parameters())
    grads = [p.grad for p in params]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert all(torch.equal(before[n], p) for n, p in bb.model.named_parameters())


@pytest.mark.parametrize("regime", ["semi", "unsupervised"])
@pytest.mark.parametrize(
    ("lm", "name"), [*(("opt", n) for n in TRAINABLE), ("t5", "deebert"), ("t5", "pabee")]
)
def test_losses_train_only_exit_modules(
    lm: str, name: str, regime: str, request: pytest.FixtureRequest
) -> None:
    bb, batch = request.getfixturevalue(f"{lm}_bb"), request.getfixturevalue(f"{lm}_batch")
    method = get_method(name)(bb, "every:2")
    method.train()
    targets = batch["targets"] if regime == "semi" else None
    out = method.losses(batch["hidden"], targets, batch["mask"], regime)
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    assert all(torch.isfinite(v).all() and not v.requires_grad for k, v in out.items() if k != "loss")
    _check_grads(method, bb, out["loss"], method.exit_parameters())
    assert all(p.grad is None for p in _disc_params(method))


@pytest.mark.parametrize("name", TRAINABLE)
def test_unsupervised_refuses_targets(name: str, opt_bb: Backbone, opt_batch: dict) -> None:
    method = get_method(name)(opt_bb, [2])
    with pytest.raises(FreeBenchError, match="targets must be None"):
        method.losses(opt_batch["hidden"], opt_batch["targets"], opt_batch["mask"], "unsupervised")
    with pytest.raises(FreeBenchError, match="regime"):
        method.losses(opt_batch["hidden"], None, opt_batch["mask"], "supervised")


def test_semi_needs_targets_and_static_has_no_loss(opt_bb: Backbone, opt_batch: dict) -> None:
    with pytest.raises(FreeBenchError, match="needs targets"):
        get_method("free")(opt_bb, [2]).losses(opt_batch["hidden"], None, opt_batch["mask"], "semi")
    distill = get_method("distill")(opt_bb, [2])  # distillation-only: labels not needed
    assert torch.isfinite(distill.losses(opt_batch["hidden"], None, opt_batch["mask"], "semi")["loss"])
    with pytest.raises(FreeBenchError, match="nothing to train"):
        get_method("static")(opt_bb, [2]).losses(opt_batch["hidden"], None, opt_batch["mask"], "semi")


def test_distill_optional_terms(opt_bb: Backbone, opt_batch: dict) -> None:
    method = get_method("distill")(opt_bb, [1, 3], w_feat=0.5, w_task=1.0, temperature=2.0)
    out = method.losses(opt_batch["hidden"], opt_batch["targets"], opt_batch["mask"], "semi")
    assert {"kl", "feat", "task", "kl@1", "kl@3"} <= set(out)
    total = out["kl"] + 0.5 * out["feat"] + out["task"]
    torch.testing.assert_close(out["loss"].detach(), total)


def test_loss_values(opt_bb: Backbone, opt_batch: dict) -> None:
    """An identity-initialised exit at the last layer matches the final distribution: KL 0."""
    hs, mask = opt_batch["hidden"], opt_batch["mask"]
    out = get_method("deebert")(opt_bb, [4]).losses(hs, None, mask, "unsupervised")
    assert out["loss"].item() == pytest.approx(0.0, abs=1e-6)
    free = get_method("free")(opt_bb, [2, 3], w_task=0.5, w_adv=0.3)
    out = free.losses(hs, opt_batch["targets"], mask, "semi")
    torch.testing.assert_close(out["loss"].detach(), 0.5 * out["task"] + 0.3 * out["adv"])
    pabee = get_method("pabee")(opt_bb, [1, 3])
    out = pabee.losses(hs, opt_batch["targets"], mask, "semi")
    torch.testing.assert_close(out["loss"].detach(), 0.25 * out["task@1"] + 0.75 * out["task@3"])


def test_free_discriminator(opt_bb: Backbone, opt_batch: dict) -> None:
    method = get_method("free")(opt_bb, [2, 4], disc_hidden=16)
    out = method.discriminator_loss(opt_batch["hidden"], opt_batch["mask"])
    acc = out["disc_acc"]
    assert acc.shape == (2,) and bool(((acc >= 0) & (acc <= 1)).all())
    assert set(out) >= {"loss", "disc", "disc_acc@2", "disc_acc@4"}
    _check_grads(method, opt_bb, out["loss"], _disc_params(method))
    assert all(p.grad is None for p in method.exit_parameters())


# --- simulation, save / load -----------------------------------------------------------------------
def test_teacher_forced_simulation(opt_bb: Backbone, opt_batch: dict) -> None:
    method = get_method("free")(opt_bb, "all")
    with torch.no_grad():
        logits = method.all_exit_logits(opt_batch["hidden"], opt_batch["mask"])  # (E, B, T, V)
    flat = logits.flatten(1, 2)  # (E, N, V)
    for threshold, expected in ((0.0, 0), (1.01, 4)):
        assert method.exit_index(flat, threshold).eq(expected).all()
    mue = get_method("mue")(opt_bb, "all")
    sims = mue.similarities(opt_batch["hidden"]).flatten(1)  # (E, N)
    assert sims.shape == flat.shape[:2] and mue.exit_index(sims, -1.0).eq(0).all()


@pytest.mark.parametrize(
    ("name", "options"), [("free", {"w_adv": 0.2}), ("pabee", {"own_head": True}), ("static", {})]
)
def test_save_load_round_trip(name: str, options: dict, opt_bb: Backbone, opt_batch: dict, tmp_path) -> None:
    method = get_method(name)(opt_bb, [1, 3], **options)
    _perturb(method)
    folder = save_method(method, tmp_path / "exits")
    save_method(method, folder)  # overwriting an existing folder is fine
    config = json.loads((folder / "config.json").read_text())
    assert config["method"] == name and config["layers"] == [1, 3] and config["options"] == method.options
    assert set(config["backbone"]) == {
        "spec",
        "seed",
        "lm_type",
        "num_layers",
        "hidden_size",
        "vocab_size",
        "fingerprint",
    }
    loaded = load_exits(folder, opt_bb)
    assert loaded.name == method.name and loaded.options == method.options
    hs, mask = opt_batch["hidden"], opt_batch["mask"]
    with torch.no_grad():
        for k in (1, 3):
            assert torch.equal(loaded.exit_logits(k, hs[k], mask), method.exit_logits(k, hs[k], mask))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exits"]  # no temp folders left


def test_save_load_t5_light_heads(t5_bb: Backbone, t5_batch: dict, tmp_path) -> None:
    method = get_method("deebert")(t5_bb, "all", own_head=True)
    _perturb(method)
    loaded = load_exits(save_method(method, tmp_path / "t5"), t5_bb)
    hs = t5_batch["hidden"]
    with torch.no_grad():
        assert torch.equal(loaded.all_exit_logits(hs), method.all_exit_logits(hs))


def test_load_rejects_other_backbone(opt_bb: Backbone, tmp_path) -> None:
    folder = save_method(get_method("deebert")(opt_bb, [2]), tmp_path / "exits")
    other = from_hf(build_tiny_blip2("opt", seed=2))
    other.spec = "other-opt"
    saved_fp = json.loads((folder / "config.json").read_text())["backbone"]["fingerprint"]
    with pytest.raises(FreeBenchError, match=f"'<in-memory>'.*{saved_fp}.*'other-opt'.*fingerprint"):
        load_exits(folder, other)
    with pytest.raises(FreeBenchError, match="does not exist"):
        load_exits(tmp_path / "missing", opt_bb)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FreeBenchError, match="no config.json"):
        load_exits(tmp_path / "empty", opt_bb)


# --- composition: one class, parts per method, stable state-dict keys ------------------------------
EXIT_PARTS = {  # name -> (light, generators, discriminators)
    "free": (False, True, True),
    "deebert": (True, False, False),
    "pabee": (True, False, False),
    "distill": (False, True, False),
    "static": (False, False, False),
    "oracle": (False, False, False),
    "mue": (False, False, False),
}


@pytest.mark.parametrize("name", METHODS)
def test_one_composed_class(name: str, opt_bb: Backbone) -> None:
    method = build_method(name, opt_bb, "every:2")
    assert type(method) is Exits and is_exit_method(method) and all(hasattr(method, m) for m in MEMBERS)
    parts = (method.light is not None, method.generators is not None, method.discriminators is not None)
    assert parts == EXIT_PARTS[name]
    assert method.adversarial == parts[2] and method.trainable == (name in TRAINABLE)
    n_disc = len(_disc_params(method))
    assert len(method.exit_parameters()) + n_disc == len(list(method.parameters()))
    assert not is_exit_method(object()) and not is_exit_method(opt_bb.model)


def _key_patterns(state: dict, layers: tuple[int, ...]) -> set[str]:
    """State-dict keys with the exit layer (the first number in a key) replaced by <k>; checks the k's."""
    seen = {int(m.group(1)) for key in state if (m := re.search(r"\.(\d+)\.", key))}
    assert not state or seen == set(layers)
    return {re.sub(r"\.\d+\.", ".<k>.", key, count=1) for key in state}


@pytest.mark.parametrize(("name", "options"), [*((n, {}) for n in METHODS), ("deebert", {"own_head": True})])
def test_state_dict_keys_saved_exits_rely_on(name: str, options: dict, opt_bb: Backbone) -> None:
    """Saved exits load by these keys: `light.adapters.<k>.dense.*`, `light.heads.<k>.*`,
    `generators.layers.<k>.*`, `discriminators.mlps.<k>.*`. Changing them breaks every saved file."""
    layer = {f"generators.layers.<k>.{n}" for n in opt_bb.layers[0].state_dict()}
    light = {"light.adapters.<k>.dense.weight", "light.adapters.<k>.dense.bias"}
    expected = {
        "free": layer | {f"discriminators.mlps.<k>.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")},
        "distill": layer,
        "deebert": light
        | ({f"light.heads.<k>.{n}" for n in opt_bb.lm_head.state_dict()} if options else set()),
        "pabee": light,
    }.get(name, set())
    method = get_method(name)(opt_bb, [2, 4], **options)
    assert _key_patterns(method.state_dict(), (2, 4)) == expected


@pytest.mark.parametrize("regime", ["semi", "unsupervised"])
@pytest.mark.parametrize("name", TRAINABLE)
def test_seeded_construction_and_losses_repeat_exactly(
    name: str, regime: str, opt_bb: Backbone, opt_batch: dict
) -> None:
    """The same seed gives bit-identical exit weights and losses (checkpoint resume relies on it)."""
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        method = get_method(name)(opt_bb, [1, 3])
        targets = opt_batch["targets"] if regime == "semi" else None
        out = method.losses(opt_batch["hidden"], targets, opt_batch["mask"], regime)
        runs.append((method.state_dict(), {k: v.detach() for k, v in out.items()}))
    (s1, o1), (s2, o2) = runs
    assert list(s1) == list(s2) and all(torch.equal(s1[k], s2[k]) for k in s1)
    assert list(o1) == list(o2) and all(torch.equal(o1[k], o2[k]) for k in o1)


def test_initialisation_from_first_principles(opt_bb: Backbone) -> None:
    """Generators are exact copies of backbone layers (no random draws), so FREE's discriminators
    take the seed's first draws; adapters start at zero, own heads at the LM head."""
    torch.manual_seed(0)
    free = get_method("free")(opt_bb, [1, 3], disc_hidden=8)
    torch.manual_seed(0)
    alone = Discriminators(opt_bb, (1, 3), 8)
    assert free.discriminators is not None and free.generators is not None
    for k, v in alone.state_dict().items():
        assert torch.equal(free.discriminators.state_dict()[k], v)
    for k in (1, 3):
        src = opt_bb.layers[k - 1].state_dict()
        assert all(torch.equal(v, src[n]) for n, v in free.generators.layers[str(k)].state_dict().items())
    deebert = get_method("deebert")(opt_bb, [2], own_head=True)
    assert deebert.light is not None
    assert all(p.eq(0).all() for p in deebert.light.adapters.parameters())
    assert torch.equal(deebert.light.heads["2"].weight, opt_bb.lm_head.weight)


def test_losses_from_their_terms(opt_bb: Backbone, opt_batch: dict) -> None:
    """FREE's and distillation's totals recomputed from the loss primitives and the exit parts."""
    hs, mask, targets = opt_batch["hidden"], opt_batch["mask"], opt_batch["targets"]
    free = get_method("free")(opt_bb, [1, 3], w_task=0.7, w_adv=0.2)
    out = free.losses(hs, targets, mask, "semi")
    assert free.generators is not None and free.discriminators is not None
    with torch.no_grad():
        gens = {k: free.generators(k, hs[k], mask) for k in (1, 3)}
        ce = torch.stack([L.cross_entropy(opt_bb.logits_from_hidden(gens[k]), targets) for k in (1, 3)])
        d = [free.discriminators(k, features(opt_bb, gens[k])) for k in (1, 3)]
        adv = torch.stack([L.bce_with_logits(x, True, mask) for x in d])
    torch.testing.assert_close(out["loss"].detach(), 0.7 * ce.mean() + 0.2 * adv.mean())
    distill = get_method("distill")(opt_bb, [2], temperature=2.0)
    out = distill.losses(hs, None, mask, "unsupervised")
    with torch.no_grad():
        teacher = opt_bb.logits_from_hidden(hs[-1])
        kl = L.kl_to_teacher(distill.exit_logits(2, hs[2], mask), teacher, mask, 2.0)
    torch.testing.assert_close(out["loss"].detach(), kl)
    assert set(out) == {"loss", "kl", "kl@2"}


def test_restrict_shares_the_parts(opt_bb: Backbone) -> None:
    method = get_method("free")(opt_bb, [1, 2, 4])
    sparse = method.restrict("2,4")
    assert sparse.layers == (2, 4) and method.layers == (1, 2, 4)
    assert sparse.generators is method.generators and sparse.discriminators is method.discriminators
    assert sparse.exit_position(4) == 1 and sparse.num_exits == 2
    with pytest.raises(FreeBenchError, match=r"no trained exit at layer\(s\) \[3\]"):
        method.restrict("3")


def test_capabilities_a_method_lacks(opt_bb: Backbone, opt_batch: dict) -> None:
    deebert = get_method("deebert")(opt_bb, [1, 2])
    with pytest.raises(FreeBenchError, match="no discriminator"):
        deebert.discriminator_loss(opt_batch["hidden"], opt_batch["mask"])
    logits = _from_tokens([[1, 2], [1, 3]])
    with pytest.raises(FreeBenchError, match="entropy rule needs a threshold"):
        deebert.exit_index(logits)
    with pytest.raises(FreeBenchError, match=r"\(E, N\) similarities"):
        get_method("mue")(opt_bb, [1, 2]).exit_index(logits, 0.5)
