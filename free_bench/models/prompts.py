"""The prompts a backbone is asked with, per task: part of what a number means, so every manifest
records them.

A real BLIP-2 gets LAVIS's prompts for its language-model family (the ones BLIP-2's and FREE's VQAv2
and COCO numbers were made with: `lavis/configs/models/blip2/*` and the `prompt` arguments of
`blip2_opt.py` / `blip2_t5.py`). The embedded backbone was pretrained on its own prompts, and a
checkpoint folder may carry prompts of its own in `prompts.json` (an exported embedded backbone does);
an explicit override beats both.

A VQA prompt is a template with one `{}` where the question goes (LAVIS's `prompt.format(question)`);
a caption prompt is the text the caption continues.
"""

from __future__ import annotations

import json
from pathlib import Path

from free_bench.core.errors import FreeBenchError

PROMPTS_FILE = "prompts.json"  # in a checkpoint folder: {"vqa": "...{}...", "caption": "..."}

#: LAVIS's BLIP-2 prompts per language-model family.
LAVIS: dict[str, dict[str, str]] = {
    "opt": {"vqa": "Question: {} Answer:", "caption": "a photo of"},
    "t5": {"vqa": "Question: {} Short answer:", "caption": "a photo of"},
}

#: The embedded backbone's pretraining prompts (its word-level tokenizer lower-cases, so the OPT VQA
#: prompt of LAVIS gives the same token ids).
EMBEDDED: dict[str, str] = {"vqa": "question: {} answer:", "caption": "a picture of"}


def check_prompts(prompts: dict[str, str], where: str = "prompt") -> dict[str, str]:
    """The prompts given (None values dropped), checked: a VQA template holds exactly one `{}` and
    formats; texts are non-empty."""
    prompts = {k: v for k, v in prompts.items() if v is not None}
    bad = sorted(set(prompts) - {"vqa", "caption"})
    if bad:
        raise FreeBenchError(f"{where}: unknown task(s) {bad}; prompts are given for vqa and caption")
    for task, text in prompts.items():
        if not isinstance(text, str) or not text.strip():
            raise FreeBenchError(f"{where}: the {task} prompt must be a non-empty text, got {text!r}")
    vqa = prompts.get("vqa")
    if vqa is not None:
        try:
            ok = vqa.count("{}") == 1 and vqa.format("q") == vqa.replace("{}", "q")
        except (IndexError, KeyError, ValueError):
            ok = False
        if not ok:
            raise FreeBenchError(
                f"{where}: the VQA prompt {vqa!r} must hold exactly one '{{}}' where the question goes "
                "(and no other braces), e.g. 'Question: {} Answer:'"
            )
    return dict(prompts)


def read_prompts(folder: str | Path) -> dict[str, str] | None:
    """A checkpoint folder's own prompts (`prompts.json`), checked; None when it has none."""
    path = Path(folder) / PROMPTS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FreeBenchError(f"{path} is unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise FreeBenchError(f"{path} must hold a JSON object {{'vqa': ..., 'caption': ...}}")
    return check_prompts(data, str(path))


def write_prompts(prompts: dict[str, str], folder: str | Path) -> Path:
    path = Path(folder) / PROMPTS_FILE
    path.write_text(json.dumps(check_prompts(prompts), indent=2, sort_keys=True) + "\n")
    return path


def resolve_prompts(lm_type: str, *, own: dict[str, str] | None = None,
                    override: dict[str, str] | None = None) -> dict[str, str]:  # fmt: skip
    """LAVIS's prompts for `lm_type`, then the checkpoint's `own`, then `override`, task by task."""
    prompts = dict(LAVIS[lm_type])
    prompts.update(own or {})
    prompts.update(check_prompts(override or {}, "--prompt"))
    return prompts
