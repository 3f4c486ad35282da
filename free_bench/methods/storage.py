"""Saving and loading trained exits: safetensors weights + config.json naming the backbone they fit.

`save_method(method, folder)` and `load_exits(folder, backbone)` are free functions: storage imports
the registry and the protocol, and no method module imports storage (no import cycle).

The backbone identity includes a fingerprint of a few of its weights, because exits trained on one
checkpoint load without any shape error onto another checkpoint of the same architecture and then
silently produce garbage.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from free_bench.core.errors import FreeBenchError
from free_bench.core.records import Manifest, atomic_dir
from free_bench.methods.registry import get_method
from free_bench.models.base import Backbone

if TYPE_CHECKING:
    from free_bench.methods.protocol import ExitMethod

FORMAT = 1
CONFIG = "config.json"
WEIGHTS = "exits.safetensors"


def fingerprint(backbone: Backbone) -> str:
    """Short sha256 over the final norm weight and the first / last layer's first weight matrix."""
    tensors = [backbone.final_norm.weight] if getattr(backbone.final_norm, "weight", None) is not None else []
    for layer in (backbone.layers[0], backbone.layers[-1]):
        tensors.append(next(p for p in layer.parameters() if p.dim() == 2))
    digest = hashlib.sha256()
    for t in tensors:
        data = t.detach().to("cpu", torch.float32).contiguous()
        digest.update(str(tuple(data.shape)).encode())
        digest.update(data.numpy().tobytes())
    return digest.hexdigest()[:16]


def backbone_identity(backbone: Backbone) -> dict[str, Any]:
    cfg = backbone.lm_config
    return {
        "spec": backbone.spec,
        "seed": backbone.seed,
        "lm_type": backbone.lm_type,
        "num_layers": backbone.num_layers,
        "hidden_size": int(cfg.hidden_size),
        "vocab_size": int(cfg.vocab_size),
        "fingerprint": fingerprint(backbone),
    }


def save_method(method: ExitMethod, folder: str | Path, manifest: Manifest | None = None) -> Path:
    """Write the exit weights (safetensors), config.json and, when given, the run's manifest.json into
    `folder` at once (`records.atomic_dir`: an old folder is replaced whole). Returns `folder`."""
    folder = Path(folder)
    config = {
        "format": FORMAT,
        "method": method.name,
        "layers": list(method.layers),
        "options": method.options,
        "backbone": backbone_identity(method.backbone),
    }
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in method.state_dict().items()}
    with atomic_dir(folder) as tmp:
        save_file(state, str(tmp / WEIGHTS), metadata={"method": method.name})
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if manifest is not None:
            manifest.write(tmp / "manifest.json")
    return folder


def _named(identity: dict[str, Any]) -> str:
    """A backbone as a reader tells two apart: its spec and, for embedded ones, its pretraining seed."""
    spec = str(identity.get("spec"))
    return f"{spec!r} (seed {identity.get('seed', 0)})" if spec.startswith("embedded:") else repr(spec)


def _mismatch(saved: dict[str, Any], given: dict[str, Any]) -> list[str]:
    keys = ("lm_type", "num_layers", "hidden_size", "vocab_size", "fingerprint")
    return [k for k in keys if saved.get(k) != given[k]]


def load_exits(folder: str | Path, backbone: Backbone | None = None, **load_kw: Any) -> ExitMethod:
    """Rebuild a saved method on `backbone` (default: the backbone the exits name, loaded with
    `load_backbone(spec, **load_kw)`); FreeBenchError if the exits were trained on another one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FreeBenchError(f"exit folder {str(folder)!r} does not exist")
    cfg_path = folder / CONFIG
    if not cfg_path.is_file():
        raise FreeBenchError(f"{str(folder)!r} has no {CONFIG}: not a folder written by save_method")
    try:
        config = json.loads(cfg_path.read_text())
        name, layers, options, saved = (
            config["method"],
            config["layers"],
            config["options"],
            config["backbone"],
        )
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise FreeBenchError(f"{str(cfg_path)!r} is not a valid exit config: {exc}") from None
    if backbone is None:
        from free_bench.models.load import load_backbone

        backbone = load_backbone(saved.get("spec"), seed=int(saved.get("seed", 0)), **load_kw)
    given = backbone_identity(backbone)
    bad = _mismatch(saved, given)
    if bad:
        diffs = ", ".join(f"{k} {saved.get(k)!r} vs {given[k]!r}" for k in bad)
        raise FreeBenchError(
            f"exits in {str(folder)!r} were trained on backbone {_named(saved)} "
            f"(fingerprint {saved.get('fingerprint')}), not on the given backbone {_named(given)} "
            f"(fingerprint {given['fingerprint']}): {diffs}"
        )
    method = get_method(name)(backbone, tuple(layers), **options)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise FreeBenchError(f"{str(folder)!r} has no {WEIGHTS}")
    state = load_file(str(weights))
    try:
        method.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise FreeBenchError(
            f"exit weights in {str(folder)!r} do not fit {name} at {layers}: {exc}"
        ) from None
    return method
