"""VQA accuracy exactly as the official VQA evaluation script scores it.

Reference: GT-Vision-Lab/VQA, PythonEvaluationTools/vqaEvaluation/vqaEval.py (HEAD, commit a013f00,
"Fixed processing answers bug"). Behaviour replicated on purpose, quirks included:

* Newlines/tabs become spaces and both ends are stripped, for the prediction and every answer.
* Punctuation and digit/article normalisation runs on the answers *and* the prediction only when the
  human answers disagree (``len(set(answers)) > 1``). When all answers are identical nothing is
  normalised, so ``"Two"`` against ten ``"2"`` scores 0 (this is what the official script and LAVIS do).
* Each punctuation mark is deleted if it touches a space anywhere in the (original) text, or if the text
  holds a digit-comma-digit; otherwise it becomes a space.
* A period not followed by a digit is removed, at most 32 of them: the official code passes ``re.UNICODE``
  (== 32) positionally, which ``Pattern.sub`` takes as ``count``. Digits are ASCII only (Python 2 regex).
* Words are lower-cased, number words map to digits ('none' -> '0'), articles are dropped, then the
  contractions map is applied (its capitalised keys such as "Im" can never match after lower-casing).
* Accuracy is the mean, over leaving each human answer out in turn, of
  ``min(#matches among the rest / 3, 1)``.
"""

from __future__ import annotations

import re

from free_bench.core.errors import FreeBenchError

__all__ = ["normalize_answer", "vqa_accuracy", "vqa_accuracy_batch"]

# Data copied from the official script (its HEAD version, with ASCII apostrophes).
# fmt: off
_CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've",
    "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've",
    "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've",
    "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock",
    "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've",
    "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've",
    "youll": "you'll", "youre": "you're", "youve": "you've",
}
_MANUAL_MAP: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
_PUNCT = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)
# fmt: on
# "(?!<=\d)" is a typo for a look-behind in the original; as a look-ahead at a "." it never fails.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)", re.ASCII)
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)", re.ASCII)
_PERIOD_STRIP_COUNT = 32  # int(re.UNICODE), passed as `count` by the official script


def _clean_whitespace(text: str) -> str:
    """Newlines and tabs to spaces, then strip: applied to every answer before anything else."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def _process_punctuation(text: str) -> str:
    """The official ``processPunctuation``: conditions are tested on the input, edits build the output."""
    out = text
    digit_comma = _COMMA_STRIP.search(text) is not None
    for mark in _PUNCT:
        if mark + " " in text or " " + mark in text or digit_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def _process_digit_article(text: str) -> str:
    """The official ``processDigitArticle``: lower-case, number words to digits, no articles, contractions."""
    words = [_MANUAL_MAP.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words)


def normalize_answer(text: str) -> str:
    """Full official normalisation of one answer (whitespace, punctuation, digits, articles, contractions).

    Note `vqa_accuracy` only applies this when the human answers disagree, as the official script does.
    """
    return _process_digit_article(_process_punctuation(_clean_whitespace(text)))


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


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """Official VQA accuracy in [0, 1] of one prediction against its human answers.

    With the usual 10 answers, 3 or more matching answers give 1.0, 2 give 0.6 and 1 gives 0.3. Other list
    lengths use the same leave-one-out over however many answers there are (so fewer than 4 answers can
    never reach 1.0). Raises `FreeBenchError` for an empty or single-answer list.
    """
    _check_inputs(prediction, answers)
    pred = _clean_whitespace(prediction)
    gts = [_clean_whitespace(answer) for answer in answers]
    if len(set(gts)) > 1:
        gts = [_process_digit_article(_process_punctuation(answer)) for answer in gts]
        pred = _process_digit_article(_process_punctuation(pred))
    n_match = sum(gt == pred for gt in gts)
    # Leaving out answer i leaves n_match - [answer i matches] matches among the others.
    per_subset = [min(1, float(n_match - (gt == pred)) / 3) for gt in gts]
    return float(sum(per_subset)) / len(per_subset)


def vqa_accuracy_batch(predictions: list[str], answers: list[list[str]]) -> list[float]:
    """`vqa_accuracy` for each (prediction, answers) pair; the two lists must have the same length."""
    if len(predictions) != len(answers):
        raise FreeBenchError(
            f"VQA batch has {len(predictions)} predictions but {len(answers)} answer lists; they must pair up"
        )
    return [vqa_accuracy(pred, ans) for pred, ans in zip(predictions, answers, strict=True)]
