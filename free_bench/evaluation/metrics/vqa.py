"""VQA accuracy under one of two scoring rules; both replicate their reference's quirks on purpose.

``scorer="lavis"`` (the default): LAVIS ``lavis/common/vqa_tools/vqa_eval.py`` (salesforce/LAVIS 506965b,
file last changed in c2cfb00), the local evaluation that BLIP-2's and FREE's VQAv2 numbers come from.

* The prediction is *always* cleaned (newlines/tabs to spaces, strip) and fully normalised: punctuation,
  then lower-case, number words to digits, articles dropped, contractions.
* The human answers are used as given (no strip, no lower-casing). Only when they disagree
  (``len(set(answers)) > 1``, on the raw strings) is each one punctuation-processed; digit/article
  normalisation never touches them. So ``"Two"`` against ten ``"2"`` scores 1, but ``"two"`` against ten
  ``"two"`` scores 0 (the prediction becomes ``"2"``), as do ``"Yes"`` against eight ``"Yes"`` and two
  ``"no"``, and ``"yes"`` against ten ``"yes "``.
* ``\\d`` in its regexes matches any Unicode decimal digit (Python 3).

``scorer="vqa-head"``: GT-Vision-Lab/VQA, PythonEvaluationTools/vqaEvaluation/vqaEval.py (HEAD, commit
a013f00, "Fixed processing answers bug").

* Newlines/tabs become spaces and both ends are stripped, for the prediction and every answer.
* Punctuation and digit/article normalisation runs on the answers *and* the prediction only when the
  stripped human answers disagree. When they all agree nothing else is normalised, so ``"Two"`` against
  ten ``"2"`` scores 0.
* Digits in its regexes are ASCII only (Python 2).

Shared by both (see `vqa_normalize`): each punctuation mark is deleted if it touches a space anywhere in
the (original) text, or if the text holds a digit-comma-digit; otherwise it becomes a space. A period not
followed by a digit is removed, at most 32 of them: both pass ``re.UNICODE`` (== 32) positionally, which
``Pattern.sub`` takes as ``count``. Contractions are mapped after lower-casing, so capitalised keys such as
"Im" never match. Accuracy is the mean, over leaving each human answer out in turn, of
``min(#matches among the rest / 3, 1)`` (both drop the left-out answer record by dict inequality; VQAv2
records carry distinct ``answer_id`` values, so that is leave-one-out by position, as done here).
"""

from __future__ import annotations

from free_bench.core.errors import FreeBenchError, check_choice
from free_bench.evaluation.metrics.vqa_normalize import (
    clean_whitespace,
    process_digit_article,
    process_punctuation,
)

__all__ = ["DEFAULT_SCORER", "SCORERS", "normalize_answer", "vqa_accuracy", "vqa_accuracy_batch"]

SCORERS: tuple[str, ...] = ("lavis", "vqa-head")
DEFAULT_SCORER = "lavis"  # BLIP-2's and FREE's reported VQAv2 numbers come from LAVIS's evaluation


def normalize_answer(text: str) -> str:
    """Full official (HEAD) normalisation of one answer: whitespace, punctuation, digits, articles, contractions.

    HEAD applies this only when the human answers disagree. LAVIS applies the same steps to every
    prediction (with Unicode digits) and only the punctuation step to disagreeing answers.
    """
    return process_digit_article(process_punctuation(clean_whitespace(text), unicode_digits=False))


def _check_inputs(prediction: object, answers: object) -> None:
    if not isinstance(prediction, str):
        raise FreeBenchError(f"VQA prediction must be a string, got {type(prediction).__name__}")
    if not isinstance(answers, list | tuple):
        raise FreeBenchError(f"VQA answers must be a list of strings, got {type(answers).__name__}")
    if not answers:
        raise FreeBenchError("VQA answers list is empty: each question needs its human answers (usually 10)")
    if len(answers) == 1:
        raise FreeBenchError(
            "VQA accuracy needs at least 2 human answers: it leaves each answer out in turn, so with one "
            "answer every prediction would score 0; use exact match for single-answer datasets"
        )
    bad = [type(a).__name__ for a in answers if not isinstance(a, str)]
    if bad:
        raise FreeBenchError(f"VQA answers must all be strings; got {', '.join(sorted(set(bad)))}")


def _check_scorer(scorer: object) -> str:
    if not isinstance(scorer, str):
        raise FreeBenchError(f"VQA scorer must be one of {', '.join(SCORERS)}; got {scorer!r}")
    return check_choice("VQA scorer", scorer, SCORERS)


def _head_strings(prediction: str, answers: list[str]) -> tuple[str, list[str]]:
    """What HEAD compares: everything stripped; everything normalised only if the answers disagree."""
    pred = clean_whitespace(prediction)
    gts = [clean_whitespace(answer) for answer in answers]
    if len(set(gts)) > 1:
        gts = [process_digit_article(process_punctuation(a, unicode_digits=False)) for a in gts]
        pred = process_digit_article(process_punctuation(pred, unicode_digits=False))
    return pred, gts


def _lavis_strings(prediction: str, answers: list[str]) -> tuple[str, list[str]]:
    """What LAVIS compares: the prediction always fully normalised; raw answers, punctuation-processed
    only if they disagree."""
    pred = process_digit_article(process_punctuation(clean_whitespace(prediction), unicode_digits=True))
    gts = list(answers)
    if len(set(gts)) > 1:
        gts = [process_punctuation(a, unicode_digits=True) for a in gts]
    return pred, gts


def vqa_accuracy(prediction: str, answers: list[str], *, scorer: str = DEFAULT_SCORER) -> float:
    """VQA accuracy in [0, 1] of one prediction against its human answers, under `scorer` (see `SCORERS`).

    With the usual 10 answers, 3 or more matching answers give 1.0, 2 give 0.6 and 1 gives 0.3. Other list
    lengths use the same leave-one-out over however many answers there are (so fewer than 4 answers can
    never reach 1.0). Raises `FreeBenchError` for an empty or single-answer list or an unknown scorer.
    """
    _check_scorer(scorer)
    _check_inputs(prediction, answers)
    strings = _lavis_strings if scorer == "lavis" else _head_strings
    pred, gts = strings(prediction, list(answers))
    n_match = sum(gt == pred for gt in gts)
    # Leaving out answer i leaves n_match - [answer i matches] matches among the others.
    per_subset = [min(1, float(n_match - (gt == pred)) / 3) for gt in gts]
    return float(sum(per_subset)) / len(per_subset)


def vqa_accuracy_batch(
    predictions: list[str], answers: list[list[str]], *, scorer: str = DEFAULT_SCORER
) -> list[float]:
    """`vqa_accuracy` for each (prediction, answers) pair; the two lists must have the same length."""
    _check_scorer(scorer)
    if len(predictions) != len(answers):
        raise FreeBenchError(
            f"VQA batch has {len(predictions)} predictions but {len(answers)} answer lists; they must pair up"
        )
    return [vqa_accuracy(pred, ans, scorer=scorer) for pred, ans in zip(predictions, answers, strict=True)]
