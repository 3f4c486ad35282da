"""Exit methods: the registry, placements, options and the exit rules on hand-made scores."""

from __future__ import annotations

import pytest
import torch
from support import TRAINABLE, _from_probs, _from_tokens

from free_bench.config import METHODS
from free_bench.core.errors import FreeBenchError
from free_bench.methods import (
    MethodSpec,
    available,
    get_method,
    parse_placement,
    rules,
)
from free_bench.models import Backbone

pytestmark = pytest.mark.usefixtures("single_thread")


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
