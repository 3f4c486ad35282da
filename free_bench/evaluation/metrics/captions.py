"""COCO caption metrics (BLEU-1..4, METEOR, ROUGE_L, CIDEr, optional SPICE) through pycocoevalcap.

Captions go through pycocoevalcap's PTBTokenizer first, as in its ``COCOEvalCap.evaluate``. The tokenizer,
METEOR and SPICE are Java programs, so Java must be on PATH.
"""

from __future__ import annotations

import math
import shutil
import threading
import warnings
from pathlib import Path

from free_bench.core.errors import FreeBenchError

__all__ = ["MetricUnavailable", "caption_scores"]

JAVA_INSTALL_HINT = (
    "install a Java runtime, e.g. `apt-get install default-jre-headless`, and put `java` on PATH"
)
# Files pycocoevalcap's SPICE needs; its Spice() would otherwise try to download CoreNLP (~400 MB).
_SPICE_FILES = (
    "spice-1.0.jar",
    "lib/stanford-corenlp-3.6.0.jar",
    "lib/stanford-corenlp-3.6.0-models.jar",
)
_spice_warned = False


class MetricUnavailable(FreeBenchError):
    """A metric's runtime dependency (Java) is missing."""


def _check_inputs(predictions: dict[str, str], references: dict[str, list[str]]) -> None:
    """Raise `FreeBenchError` unless both dicts are non-empty, share their ids and hold non-empty strings."""
    if not isinstance(predictions, dict) or not isinstance(references, dict):
        raise FreeBenchError(
            "caption_scores takes two dicts: predictions {id: caption}, references {id: [captions]}"
        )
    if not predictions:
        raise FreeBenchError("caption_scores got no predictions")
    if not references:
        raise FreeBenchError("caption_scores got no references")
    no_ref = sorted(map(str, predictions.keys() - references.keys()))
    no_pred = sorted(map(str, references.keys() - predictions.keys()))
    if no_ref or no_pred:
        parts = []
        if no_ref:
            parts.append(f"{len(no_ref)} prediction id(s) lack references: {', '.join(no_ref[:10])}")
        if no_pred:
            parts.append(f"{len(no_pred)} reference id(s) lack predictions: {', '.join(no_pred[:10])}")
        raise FreeBenchError("caption ids differ between predictions and references; " + "; ".join(parts))
    for key, caption in predictions.items():
        if not isinstance(caption, str):
            raise FreeBenchError(f"prediction for id {key!r} must be a string, got {type(caption).__name__}")
    for key, refs in references.items():
        if isinstance(refs, str) or not isinstance(refs, list | tuple):
            kind = type(refs).__name__
            raise FreeBenchError(f"references for id {key!r} must be a list of strings, got {kind}")
        if not refs:
            raise FreeBenchError(f"reference list for id {key!r} is empty")
        if not all(isinstance(ref, str) and ref.strip() for ref in refs):
            raise FreeBenchError(f"references for id {key!r} must all be non-blank strings")


def _require_java(skip_meteor: bool) -> None:
    if shutil.which("java") is not None:
        return
    if skip_meteor:
        raise MetricUnavailable(
            "Java is required even with skip_meteor=True: every caption metric first runs pycocoevalcap's "
            f"PTB tokenizer, which is a Java program; {JAVA_INSTALL_HINT}"
        )
    raise MetricUnavailable(
        f"Java is required for the PTB tokenizer and METEOR (pycocoevalcap); {JAVA_INSTALL_HINT}"
    )


def _one_line(text: str) -> str:
    """Join every kind of line break into spaces: the tokenizer maps captions to ids by line number."""
    return " ".join(text.splitlines())


def _tokenize(captions: dict[str, list[str]]) -> dict[str, list[str]]:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    wrapped = {key: [{"caption": _one_line(c)} for c in caps] for key, caps in captions.items()}
    tokenized = PTBTokenizer().tokenize(wrapped)
    if any(len(tokenized.get(key, ())) != len(caps) for key, caps in captions.items()):
        raise FreeBenchError("PTB tokenizer (java) returned a wrong number of lines; check the Java install")
    return tokenized


def _meteor(gts: dict[str, list[str]], res: dict[str, list[str]]) -> float:
    """METEOR through its java subprocess, which is always shut down afterwards."""
    from pycocoevalcap.meteor.meteor import Meteor

    meteor = Meteor()
    proc = meteor.meteor_p
    try:
        score, _ = meteor.compute_score(gts, res)
        return float(score)
    except (OSError, ValueError) as exc:
        proc.kill()
        stderr = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
        raise FreeBenchError(f"METEOR (java subprocess) failed: {exc!r}; stderr: {stderr.strip()}") from exc
    finally:
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        proc.kill()
        proc.wait(timeout=30)
        # compute_score may have failed while holding its lock; Meteor.__del__ takes it again, so a fresh
        # lock keeps garbage collection from blocking forever.
        meteor.lock = threading.Lock()


def _warn_spice_once(reason: str) -> None:
    global _spice_warned
    if not _spice_warned:
        _spice_warned = True
        warnings.warn(f"SPICE is left out of caption scores: {reason}", RuntimeWarning, stacklevel=4)


def _spice(gts: dict[str, list[str]], res: dict[str, list[str]]) -> float | None:
    """SPICE where its CoreNLP jars are installed, else None with a one-time warning."""
    import pycocoevalcap.spice.spice as spice_mod

    spice_dir = Path(spice_mod.__file__).parent
    missing = [name for name in _SPICE_FILES if not (spice_dir / name).is_file()]
    if missing:
        _warn_spice_once(
            f"pycocoevalcap's SPICE needs Stanford CoreNLP 3.6.0; missing {', '.join(missing)} "
            f"under {spice_dir} "
            "(run `python -m pycocoevalcap.spice.get_stanford_models` with network access to fetch them)"
        )
        return None
    try:
        score, _ = spice_mod.Spice().compute_score(gts, res)
    except Exception as exc:  # SPICE is optional: any failure drops it, with a warning
        _warn_spice_once(f"the SPICE java run failed ({exc!r}); SPICE 1.0 is known to fail on Java 16+")
        return None
    if score is None or math.isnan(float(score)):
        _warn_spice_once("the SPICE java run returned no score")
        return None
    return float(score)


def _coco_scores(gts: dict[str, list[str]], res: dict[str, list[str]], skip_meteor: bool) -> dict[str, float]:
    """BLEU-1..4, METEOR (unless skipped), ROUGE_L and CIDEr of tokenized captions, as pycocoevalcap computes them."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores = {f"BLEU-{n}": float(v) for n, v in enumerate(bleu, start=1)}
    if not skip_meteor:
        scores["METEOR"] = _meteor(gts, res)
    scores["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    return scores


def caption_scores(
    predictions: dict[str, str], references: dict[str, list[str]], *, skip_meteor: bool = False
) -> dict[str, float]:
    """Corpus-level COCO caption scores of `predictions` {id: caption} against `references` {id: [captions]}.

    Returns BLEU-1..BLEU-4, METEOR (unless `skip_meteor`), ROUGE_L, CIDEr, and SPICE only where its Stanford
    CoreNLP models are installed. Raises `FreeBenchError` for bad input and `MetricUnavailable` without Java.
    """

    _check_inputs(predictions, references)
    _require_java(skip_meteor)
    if len(predictions) < 2:
        warnings.warn(
            "CIDEr over a single caption is always 0: its IDF weights come from the evaluated set itself",
            RuntimeWarning,
            stacklevel=2,
        )
    gts = _tokenize({key: list(refs) for key, refs in references.items()})
    res = _tokenize({key: [predictions[key]] for key in references})

    scores = _coco_scores(gts, res, skip_meteor)
    spice = _spice(gts, res)
    if spice is not None:
        scores["SPICE"] = spice
    return scores


def cider_per_image(predictions: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
    """CIDEr-D of each caption, with IDF weights from the whole evaluated set.

    Their mean is the corpus CIDEr of `caption_scores` (pycocoevalcap averages the same scores), so
    resampling images for a bootstrap CI keeps its estimate consistent with the reported value.
    """
    from pycocoevalcap.cider.cider import Cider

    _check_inputs(predictions, references)
    _require_java(skip_meteor=True)
    gts = _tokenize({key: list(refs) for key, refs in references.items()})
    res = _tokenize({key: [predictions[key]] for key in references})
    _, per = Cider().compute_score(gts, res)
    return {key: float(v) for key, v in zip(gts, per, strict=True)}


def caption_scores_by_group(
    predictions: dict[str, dict[str, str]], references: dict[str, list[str]], *, skip_meteor: bool = True
) -> dict[str, dict[str, float]]:
    """`caption_scores` of several prediction sets over the same images (e.g. one per exit layer), with
    one PTB tokenizer run for all of them: each Java start costs more than scoring a small set.

    `predictions`: {group: {id: caption}}, every group over ids of `references`. METEOR (a Java run of
    ~6 s per group) is left out unless asked for; SPICE is never computed here.
    """

    for group, preds in predictions.items():
        unknown = sorted(set(preds) - set(references))
        if unknown:
            raise FreeBenchError(f"group {group!r} predicts ids without references: {unknown[:5]}")
        _check_inputs(preds, {k: references[k] for k in preds})
    _require_java(skip_meteor)
    gts_all = _tokenize({key: list(refs) for key, refs in references.items()})
    sep = "\x1f"
    res_all = _tokenize({f"{g}{sep}{k}": [c] for g, preds in predictions.items() for k, c in preds.items()})
    out: dict[str, dict[str, float]] = {}
    for group, preds in predictions.items():
        gts = {k: gts_all[k] for k in preds}
        res = {k: res_all[f"{group}{sep}{k}"] for k in preds}
        out[group] = _coco_scores(gts, res, skip_meteor)
    return out
