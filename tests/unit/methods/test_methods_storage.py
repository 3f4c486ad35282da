"""Exit methods: teacher-forced simulation, save / load, and the composition saved exits rely on."""

from __future__ import annotations

import json
import re

import pytest
import torch
from support import TRAINABLE, _disc_params, _from_tokens, _perturb

from free_bench.config import METHODS
from free_bench.core.errors import FreeBenchError
from free_bench.methods import (
    Exits,
    build_method,
    get_method,
    is_exit_method,
    load_exits,
    save_method,
)
from free_bench.methods import losses as L
from free_bench.methods.heads import Discriminators, features
from free_bench.methods.protocol import MEMBERS
from free_bench.models import Backbone, from_hf
from free_bench.models.tiny import build_tiny_blip2

pytestmark = pytest.mark.usefixtures("single_thread")


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


def test_save_load_t5_generators(t5_bb: Backbone, t5_batch: dict, tmp_path) -> None:
    """FREE on T5: the generator blocks (self- and cross-attention) and the discriminators round-trip."""
    method = get_method("free")(t5_bb, [1, 2])
    _perturb(method)
    loaded = load_exits(save_method(method, tmp_path / "t5-free"), t5_bb)
    assert loaded.state_dict().keys() == method.state_dict().keys()
    hs, mask, enc = t5_batch["hidden"], t5_batch["mask"], t5_batch["encoder"]
    with torch.no_grad():
        assert torch.equal(loaded.all_exit_logits(hs, mask, enc), method.all_exit_logits(hs, mask, enc))
