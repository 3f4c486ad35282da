"""Hand-checked VQA accuracy cases (LAVIS and HEAD rules) and caption scores against pycocoevalcap."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import pycocoevalcap.spice.spice as spice_mod
import pytest

from free_bench.core.errors import FreeBenchError
from free_bench.evaluation.metrics import (
    DEFAULT_SCORER,
    SCORERS,
    MetricUnavailable,
    caption_scores,
    normalize_answer,
    vqa_accuracy,
    vqa_accuracy_batch,
)
from free_bench.evaluation.metrics import captions as captions_mod

HAS_JAVA = shutil.which("java") is not None
needs_java = pytest.mark.skipif(not HAS_JAVA, reason="needs a Java runtime on PATH")


# --------------------------------------------------------------------------------------------- VQA
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Two", "2"),  # lower-case, then manualMap
        ("None", "0"),  # 'none' -> '0' is in the official manualMap
        ("a dog.", "dog"),  # article dropped, trailing period stripped
        ("The  Cat\n", "cat"),  # newline -> space, split() collapses spaces
        ("dont", "don't"),  # contractions map
        ("it's", "it's"),  # the apostrophe is not in the punct list
        ("Im", "im"),  # the map's key "Im" is capitalised, so after lower-casing it never matches
        ("yes!", "yes"),  # '!' touches no space: becomes a space, then split away
        ("red,white", "red white"),  # ',' touches no space: becomes a space
        ("red, white", "red white"),  # ', ' occurs in the text: every ',' is deleted
        ("x / y", "x y"),  # ' /' occurs: '/' deleted, double space collapsed by split()
        ("1,000", "1000"),  # digit-comma-digit: punctuation deleted, not spaced
        ("cats,dogs 1,2", "catsdogs 12"),  # ... anywhere in the text, for every mark
        ("t-shirt", "t shirt"),
        ("hi:there", "hi:there"),  # ':' is not in the (HEAD) punct list
        ("3.5", "3.5"),  # a period before a digit is kept
        ("3.", "3"),
        ("." * 40, "." * 8),  # official passes re.UNICODE (32) as `count`: only 32 periods go
    ],
)
def test_normalize_answer_matches_official_rules(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


@pytest.mark.parametrize("scorer", SCORERS)
@pytest.mark.parametrize(
    ("n_match", "expected"),
    [
        # 10 answers, k of them match. Leaving out a non-matching answer keeps k matches, leaving out a
        # matching one keeps k - 1; each subset scores min(matches / 3, 1).
        (0, 0.0),
        (1, 0.3),  # 9 subsets keep 1 -> 1/3, 1 keeps 0 -> 0: (9 * 1/3) / 10 = 0.3
        (2, 0.6),  # 8 subsets keep 2 -> 2/3, 2 keep 1 -> 1/3: (16/3 + 2/3) / 10 = 0.6
        (3, 0.9),  # 7 subsets keep 3 -> 1, 3 keep 2 -> 2/3: (7 + 2) / 10 = 0.9
        (4, 1.0),  # every subset keeps >= 3
        (10, 1.0),
    ],
)
def test_leave_one_out_accuracy(n_match: int, expected: float, scorer: str) -> None:
    answers = ["dog"] * n_match + ["cat"] * (10 - n_match)
    assert vqa_accuracy("dog", answers, scorer=scorer) == pytest.approx(expected)


def test_normalisation_applies_when_answers_disagree() -> None:
    # HEAD: answers differ, so answers and prediction are normalised: "two" -> "2", "a dog" -> "dog".
    assert vqa_accuracy("Two", ["2"] * 9 + ["two"], scorer="vqa-head") == 1.0
    assert vqa_accuracy("a dog.", ["dog"] * 5 + ["a dog"] * 5, scorer="vqa-head") == 1.0
    assert vqa_accuracy("yes!", ["yes"] * 9 + ["no"], scorer="vqa-head") == 1.0
    assert vqa_accuracy("dont", ["don't"] * 3 + ["no"] * 7, scorer="vqa-head") == pytest.approx(0.9)


def test_unanimous_answers_are_not_normalised() -> None:
    # HEAD quirk: with one distinct answer nothing but whitespace is normalised, not even case.
    def head(prediction: str, answers: list[str]) -> float:
        return vqa_accuracy(prediction, answers, scorer="vqa-head")

    assert head("Two", ["2"] * 10) == 0.0
    assert head("2", ["2"] * 10) == 1.0
    assert head("yes!", ["yes"] * 10) == 0.0
    assert head("Yes", ["yes"] * 10) == 0.0
    assert head(" yes\t", ["yes"] * 10) == 1.0  # whitespace is always cleaned
    # The distinct-count is taken after stripping, so these are unanimous too.
    assert head("Yes", ["yes", "yes "] * 5) == 0.0


# (prediction, answers, HEAD score, LAVIS score, why). HEAD = GT-Vision-Lab vqaEval.py a013f00, LAVIS =
# lavis/common/vqa_tools/vqa_eval.py 506965b. "norm" = punctuation + digit/article processing.
EDGE_CASES: list[tuple[str, list[str], float, float, str]] = [
    ("yes", ["yes"] * 10, 1.0, 1.0, "plain exact match: every rule leaves 'yes' alone"),
    ("dog", ["dog"] * 3 + ["cat"] * 7, 0.9, 0.9, "plain exact match, 3 of 10"),
    ("2", ["2"] * 10, 1.0, 1.0, "plain exact match of a digit"),
    ("Two", ["2"] * 10, 0.0, 1.0, "HEAD: unanimous, nothing normalised; LAVIS: prediction always -> '2'"),
    ("two", ["two"] * 10, 1.0, 0.0, "LAVIS: prediction -> '2' but unanimous answers stay 'two'"),
    ("2", ["two"] * 10, 0.0, 0.0, "neither rule ever maps unanimous answers"),
    ("Two", ["2"] * 9 + ["two"], 1.0, 1.0, "HEAD: all -> '2'; LAVIS: answers punct only, 9 '2' remain"),
    ("two", ["2"] * 2 + ["two"] * 8, 1.0, 0.6, "LAVIS never number-maps answers: only the 2 '2's match"),
    ("yes.", ["yes"] * 10, 0.0, 1.0, "trailing period: HEAD keeps it (unanimous), LAVIS strips it"),
    ("yes", ["yes."] * 10, 0.0, 0.0, "unanimous answers keep their period under both"),
    ("yes.", ["yes."] * 10, 1.0, 0.0, "LAVIS strips the prediction's period but not the answers'"),
    ("yes", ["yes."] * 5 + ["yes"] * 5, 1.0, 1.0, "answers disagree: both strip the answers' periods"),
    ("a dog", ["dog"] * 10, 0.0, 1.0, "HEAD: unanimous, article kept; LAVIS drops the prediction's"),
    ("dog", ["a dog"] * 10, 0.0, 0.0, "unanimous answers keep their article under both"),
    ("a dog", ["a dog"] * 10, 1.0, 0.0, "LAVIS: prediction -> 'dog', answers keep 'a dog'"),
    ("dog", ["a dog"] * 8 + ["dog"] * 2, 1.0, 0.6, "HEAD drops disagreeing answers' articles, LAVIS never"),
    ("1,000", ["1000"] * 10, 0.0, 1.0, "digit-comma-digit: LAVIS always deletes the prediction's comma"),
    ("1,000", ["1,000"] * 10, 1.0, 0.0, "LAVIS: prediction '1000', unanimous answers keep '1,000'"),
    ("1,000", ["1,000"] * 9 + ["1000"], 1.0, 1.0, "answers disagree: both delete the answers' commas"),
    ("red, white", ["red white"] * 10, 0.0, 1.0, "', ' in the text: LAVIS deletes every ','"),
    ("Yes", ["Yes"] * 10, 1.0, 0.0, "LAVIS lower-cases the prediction, never the answers"),
    ("yes", ["Yes"] * 10, 0.0, 0.0, "unanimous 'Yes' is never lower-cased"),
    ("Yes", ["yes"] * 10, 0.0, 1.0, "HEAD: unanimous, case kept; LAVIS lower-cases the prediction"),
    ("yes", ["Yes"] * 8 + ["no"] * 2, 1.0, 0.0, "disagreeing answers: HEAD lower-cases them, LAVIS not"),
    ("Yes", ["Yes"] * 5 + ["yes"] * 5, 1.0, 1.0, "HEAD: all -> 'yes'; LAVIS: 'yes' matches the 5 'yes'"),
    ("yes\n", ["yes"] * 10, 1.0, 1.0, "both replace newlines/tabs in the prediction and strip it"),
    ("Yes\n", ["yes"] * 10, 0.0, 1.0, "HEAD only strips (unanimous); LAVIS also lower-cases"),
    ("yes", ["yes\n"] * 10, 1.0, 0.0, "HEAD strips answers; LAVIS leaves them raw"),
    ("Yes", ["yes", "yes "] * 5, 0.0, 1.0, "HEAD: unanimous after strip; LAVIS: raw set has 2, 5 'yes'"),
    ("hot  dog", ["hot dog"] * 10, 0.0, 1.0, "LAVIS's split/join collapses the prediction's double space"),
    ("dont", ["dont"] * 10, 1.0, 0.0, "LAVIS maps the prediction 'dont' -> \"don't\", not the answers"),
    ("dont", ["don't"] * 3 + ["no"] * 7, 0.9, 0.9, "both map 'dont' -> \"don't\" when answers disagree"),
    ("Im", ["I'm"] * 10, 0.0, 0.0, "the contractions key 'Im' never matches after lower-casing"),
    ("\u0663.\u0665", ["\u0663\u0665"] * 9 + ["x"], 1.0, 0.0, "HEAD: ASCII \\d, period goes; LAVIS: kept"),
    ("." * 40, ["." * 8] * 10, 0.0, 1.0, "LAVIS: only 32 periods stripped (re.UNICODE as count)"),
    ("dog", ["dog", "dog", "cat", "cat", "cat"], (2 / 3 + 2) / 5, (2 / 3 + 2) / 5, "5 answers, 2 match"),
]


@pytest.mark.parametrize(
    ("prediction", "answers", "head", "lavis", "why"), EDGE_CASES, ids=[c[4] for c in EDGE_CASES]
)
def test_edge_cases_under_each_scorer(
    prediction: str, answers: list[str], head: float, lavis: float, why: str
) -> None:
    assert vqa_accuracy(prediction, answers, scorer="vqa-head") == pytest.approx(head), why
    assert vqa_accuracy(prediction, answers, scorer="lavis") == pytest.approx(lavis), why
    assert vqa_accuracy(prediction, answers) == pytest.approx(lavis), "the default scorer is LAVIS"


def test_scorers_differ_but_agree_on_plain_exact_matches() -> None:
    assert SCORERS == ("lavis", "vqa-head") and DEFAULT_SCORER == "lavis"
    assert sum(head != lavis for _, _, head, lavis, _ in EDGE_CASES) >= 1
    assert vqa_accuracy("Two", ["2"] * 10, scorer="lavis") == 1.0  # the prediction is always normalised
    assert vqa_accuracy("Two", ["2"] * 10, scorer="vqa-head") == 0.0  # unanimous: nothing is normalised
    for prediction, answers in [("yes", ["yes"] * 10), ("dog", ["dog"] * 3 + ["cat"] * 7), ("2", ["2"] * 4)]:
        scores = {scorer: vqa_accuracy(prediction, answers, scorer=scorer) for scorer in SCORERS}
        assert len(set(scores.values())) == 1, scores


@pytest.mark.parametrize("scorer", ["LAVIS", "vqa_head", "head", ""])
def test_bad_scorer_raises_naming_it_and_the_valid_ones(scorer: str) -> None:
    with pytest.raises(FreeBenchError, match=f"{scorer!r}.*lavis, vqa-head"):
        vqa_accuracy("dog", ["dog"] * 10, scorer=scorer)
    with pytest.raises(FreeBenchError, match=f"{scorer!r}.*lavis, vqa-head"):
        vqa_accuracy_batch(["dog"], [["dog"] * 10], scorer=scorer)


def test_non_string_scorer_raises() -> None:
    with pytest.raises(FreeBenchError, match="lavis, vqa-head; got None"):
        vqa_accuracy("dog", ["dog"] * 10, scorer=None)  # type: ignore[arg-type]


@pytest.mark.parametrize("scorer", SCORERS)
def test_other_answer_counts_use_the_same_leave_one_out(scorer: str) -> None:
    # 5 answers, 2 match: leaving out a "dog" keeps 1 -> 1/3 (twice), a "cat" keeps 2 -> 2/3 (three times).
    five = ["dog", "dog", "cat", "cat", "cat"]
    assert vqa_accuracy("dog", five, scorer=scorer) == pytest.approx((2 / 3 + 2) / 5)
    # 3 identical answers can reach only 2/3: each subset has 2 matches.
    assert vqa_accuracy("dog", ["dog"] * 3, scorer=scorer) == pytest.approx(2 / 3)


@pytest.mark.parametrize("scorer", SCORERS)
@pytest.mark.parametrize("answers", [[], ["dog"]])
def test_too_few_answers_raise(answers: list[str], scorer: str) -> None:
    with pytest.raises(FreeBenchError, match="answer"):
        vqa_accuracy("dog", answers, scorer=scorer)


def test_bad_vqa_types_raise() -> None:
    with pytest.raises(FreeBenchError, match="string"):
        vqa_accuracy(None, ["dog"] * 10)  # type: ignore[arg-type]
    with pytest.raises(FreeBenchError, match="string"):
        vqa_accuracy("dog", ["dog", 2])  # type: ignore[list-item]


def test_vqa_accuracy_batch() -> None:
    preds = ["dog", "Two", "Two"]
    answers = [["dog"] * 3 + ["cat"] * 7, ["2"] * 9 + ["two"], ["2"] * 10]
    assert vqa_accuracy_batch(preds, answers, scorer="vqa-head") == pytest.approx([0.9, 1.0, 0.0])
    assert vqa_accuracy_batch(preds, answers, scorer="lavis") == pytest.approx([0.9, 1.0, 1.0])
    assert vqa_accuracy_batch(preds, answers) == vqa_accuracy_batch(preds, answers, scorer="lavis")
    with pytest.raises(FreeBenchError, match="1 answer lists"):
        vqa_accuracy_batch(preds, answers[:1])


# ---------------------------------------------------------------------------------------- captions
PREDS = {
    "img1": "A dog runs on the grass.",
    "img2": "two cats sleeping on a couch",
    "img3": "a red car parked",
}
REFS = {
    "img1": ["a dog running on grass", "A brown dog runs across the lawn."],
    "img2": ["Two cats sleep on a sofa.", "cats on a couch"],
    "img3": ["A red car is parked on the street.", "a parked red car"],
}


def test_mismatched_ids_raise_naming_them() -> None:
    with pytest.raises(FreeBenchError, match="img3") as info:
        caption_scores({k: v for k, v in PREDS.items() if k != "img3"}, REFS)
    assert "lack predictions" in str(info.value)
    with pytest.raises(FreeBenchError, match="extra"):
        caption_scores({**PREDS, "extra": "a cat"}, REFS)


def test_bad_caption_inputs_raise() -> None:
    with pytest.raises(FreeBenchError, match="no predictions"):
        caption_scores({}, REFS)
    with pytest.raises(FreeBenchError, match="empty"):
        caption_scores(PREDS, {**REFS, "img2": []})


def test_missing_java_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(captions_mod.shutil, "which", lambda name: None)
    with pytest.raises(MetricUnavailable, match="METEOR") as info:
        caption_scores(PREDS, REFS)
    assert "apt-get install default-jre-headless" in str(info.value)
    with pytest.raises(FreeBenchError, match="even with skip_meteor=True.*PTB tokenizer"):
        caption_scores(PREDS, REFS, skip_meteor=True)


def _direct_pycocoevalcap() -> dict[str, float]:
    """The same scores computed by calling pycocoevalcap directly, as COCOEvalCap.evaluate does."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in REFS.items()})
    res = tokenizer.tokenize({k: [{"caption": PREDS[k]}] for k in REFS})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    meteor = Meteor()
    try:
        meteor_score, _ = meteor.compute_score(gts, res)
    finally:
        meteor.meteor_p.kill()
        meteor.meteor_p.wait()
    return {
        **{f"BLEU-{i}": b for i, b in enumerate(bleu, start=1)},
        "METEOR": meteor_score,
        "ROUGE_L": Rouge().compute_score(gts, res)[0],
        "CIDEr": Cider().compute_score(gts, res)[0],
    }


def _java_children() -> list[int]:
    """Live (or zombie) java processes whose parent is this test process."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)
            comm, ppid = fields[0].split("(", 1)[1], int(fields[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and comm.startswith("java"):
            found.append(int(stat.parent.name))
    return found


@pytest.fixture(scope="module")
def scored() -> tuple[dict[str, float], list[str]]:
    """One full caption_scores run (the only METEOR start of ours) and the warnings it raised."""
    if not HAS_JAVA:
        pytest.skip("needs a Java runtime on PATH")
    captions_mod._spice_warned = False  # another test module may have had the one SPICE warning already
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = caption_scores(PREDS, REFS)
    return scores, [str(w.message) for w in caught]


@pytest.mark.java
@needs_java
def test_caption_scores_equal_direct_pycocoevalcap(scored: tuple[dict[str, float], list[str]]) -> None:
    scores, _ = scored
    direct = _direct_pycocoevalcap()
    assert {k: v for k, v in scores.items() if k != "SPICE"} == pytest.approx(direct, rel=1e-12)
    assert all(isinstance(v, float) and v > 0 for v in scores.values())
    assert not _java_children(), "METEOR's java subprocess was left running"


@pytest.mark.java
@needs_java
def test_spice_only_with_its_models(scored: tuple[dict[str, float], list[str]]) -> None:
    scores, messages = scored
    spice_warnings = [m for m in messages if "SPICE" in m]
    spice_dir = Path(spice_mod.__file__).parent
    if not (spice_dir / "lib" / "stanford-corenlp-3.6.0-models.jar").is_file():
        assert "SPICE" not in scores
        assert len(spice_warnings) == 1 and "stanford-corenlp-3.6.0" in spice_warnings[0]
    assert ("SPICE" in scores) == (not spice_warnings)


@pytest.mark.java
@needs_java
def test_skip_meteor_and_single_caption(scored: tuple[dict[str, float], list[str]]) -> None:
    scores, _ = scored
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        no_meteor = caption_scores(PREDS, REFS, skip_meteor=True)
    assert not [w for w in caught if "SPICE" in str(w.message)], "the SPICE warning is once per process"
    expected = {k: v for k, v in scores.items() if k != "METEOR"}
    assert no_meteor == pytest.approx(expected, rel=1e-12)
    with pytest.warns(RuntimeWarning, match="CIDEr over a single caption"):
        single = caption_scores({"img1": PREDS["img1"]}, {"img1": REFS["img1"]}, skip_meteor=True)
    assert single["CIDEr"] == 0.0 and single["BLEU-1"] > 0


def test_grouped_caption_scores_equal_one_call_per_group() -> None:
    from free_bench.evaluation.metrics.captions import caption_scores_by_group

    refs = {"a": ["a red cube left of a ball", "a cube"], "b": ["two blue balls", "blue balls on the floor"],
            "c": ["a green cone", "one green cone"]}  # fmt: skip
    groups = {"1": {"a": "a cube", "b": "blue balls", "c": "a cone"},
              "2": {"a": "a red cube", "b": "two balls", "c": "a green cone"}}  # fmt: skip
    together = caption_scores_by_group(groups, refs)
    for g, preds in groups.items():
        alone = caption_scores(preds, refs, skip_meteor=True)
        assert together[g] == pytest.approx({k: v for k, v in alone.items() if k != "SPICE"})
    with pytest.raises(FreeBenchError, match="without references"):
        caption_scores_by_group({"1": {"zz": "a cube"}}, refs)
