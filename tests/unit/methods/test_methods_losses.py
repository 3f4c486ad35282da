"""Exit methods on tiny random BLIP-2s: exit modules at init and the training losses."""

from __future__ import annotations

import pytest
import torch
from support import TRAINABLE, _disc_params

from free_bench.core.errors import FreeBenchError
from free_bench.methods import (
    ExitMethod,
    get_method,
)
from free_bench.models import Backbone

pytestmark = pytest.mark.usefixtures("single_thread")


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


@pytest.mark.parametrize("k", [1, 2, 3])
def test_t5_generator_copy_reproduces_backbone_block(k: int, t5_bb: Backbone, t5_batch: dict) -> None:
    """A T5 block's copy on h_{k-1}, with the encoder output, the causal + padding mask and the first
    block's relative bias, gives the runner's h_k (block 1's copy included: it carries the bias table,
    which is not what is read). Without the encoder output it is refused."""
    method = get_method("free")(t5_bb, [k])
    hs, mask, enc = t5_batch["hidden"], t5_batch["mask"], t5_batch["encoder"]
    with torch.no_grad():
        out = method.exit_hidden(k, hs[k - 1], mask, enc)
    real = mask.bool()
    torch.testing.assert_close(out[real], hs[k][real].to(out.dtype), atol=1e-5, rtol=1e-5)
    with pytest.raises(FreeBenchError, match="reads the encoder output"):
        method.exit_hidden(k, hs[k - 1], mask)


@pytest.mark.parametrize("name", ["free", "distill"])
def test_t5_generator_losses_train_only_the_exits(name: str, t5_bb: Backbone, t5_batch: dict) -> None:
    method = get_method(name)(t5_bb, [1, 3])
    b = t5_batch
    out = method.losses(b["hidden"], b["targets"], b["mask"], "semi", encoder=b["encoder"])
    assert torch.isfinite(out["loss"])
    _check_grads(method, t5_bb, out["loss"], [p for n, p in method.named_parameters()
                                               if n.startswith("generators.") and "relative_attention_bias" not in n])
    if method.discriminators is not None:
        d = method.discriminator_loss(b["hidden"], b["mask"], encoder=b["encoder"])
        assert torch.isfinite(d["loss"])


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
