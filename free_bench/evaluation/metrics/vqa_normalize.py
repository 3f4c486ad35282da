"""Answer normalisation shared by both VQA scoring rules (see `free_bench.evaluation.metrics.vqa`).

The tables and steps are those of GT-Vision-Lab/VQA ``vqaEval.py`` (HEAD a013f00) and LAVIS
``lavis/common/vqa_tools/vqa_eval.py`` (506965b), which are identical but for one thing: HEAD is Python 2
code, where ``\\d`` matches ASCII digits only, while LAVIS runs on Python 3, where it matches any Unicode
decimal digit. `process_punctuation` therefore takes ``unicode_digits``.
"""

from __future__ import annotations

import re

__all__ = ["clean_whitespace", "process_digit_article", "process_punctuation"]

# Data copied from the official script; LAVIS's copy (vqa_eval.py) holds the very same tables.
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
_PERIOD_STRIP = {False: re.compile(r"(?!<=\d)(\.)(?!\d)", re.ASCII), True: re.compile(r"(?!<=\d)(\.)(?!\d)")}
_COMMA_STRIP = {False: re.compile(r"(\d)(\,)(\d)", re.ASCII), True: re.compile(r"(\d)(\,)(\d)")}
_PERIOD_STRIP_COUNT = 32  # int(re.UNICODE), passed positionally (so as `count`) by both originals


def clean_whitespace(text: str) -> str:
    """Newlines and tabs to spaces, then strip (HEAD: prediction and answers; LAVIS: prediction only)."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str, *, unicode_digits: bool) -> str:
    """The originals' ``processPunctuation``: conditions are tested on the input, edits build the output.

    Each mark is deleted if it touches a space anywhere in the input, or if the input holds a
    digit-comma-digit; otherwise it becomes a space. Then at most 32 periods not followed by a digit go.
    """
    out = text
    digit_comma = _COMMA_STRIP[unicode_digits].search(text) is not None
    for mark in _PUNCT:
        if mark + " " in text or " " + mark in text or digit_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_STRIP[unicode_digits].sub("", out, count=_PERIOD_STRIP_COUNT)


def process_digit_article(text: str) -> str:
    """The originals' ``processDigitArticle``: lower-case, number words to digits, no articles, contractions.

    Contractions are looked up after lower-casing, so the map's capitalised keys ("Im", "Ive") never match.
    """
    words = [_MANUAL_MAP.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words)
