"""Results records: tidy long-format parquet with documented columns, and one manifest per run.

Every write goes to a temp file in the target folder and is renamed into place, so a killed run
never leaves a half-written file for a resume or an analysis to trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from free_bench.core.errors import FreeBenchError


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str  # pandas dtype family: "string", "float", "int", "bool", "object"
    doc: str


@dataclass(frozen=True)
class Schema:
    name: str
    columns: tuple[Column, ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def validate(self, df: pd.DataFrame) -> pd.DataFrame:
        """Check every documented column is present with a compatible dtype; extra columns are kept."""
        missing = [c for c in self.names if c not in df.columns]
        if missing:
            raise FreeBenchError(f"{self.name} table lacks columns {missing}")
        for c in self.columns:
            if len(df) and not _DTYPE_CHECKS[c.dtype](df[c.name]):
                raise FreeBenchError(
                    f"{self.name} column {c.name!r} should be {c.dtype}, got {df[c.name].dtype}"
                )
        return df[self.names + [c for c in df.columns if c not in self.names]]

    def doc(self) -> str:
        return "\n".join(f"- `{c.name}` ({c.dtype}): {c.doc}" for c in self.columns)


_DTYPE_CHECKS: dict[str, Callable[[pd.Series], bool]] = {
    "string": lambda s: pd.api.types.is_string_dtype(s) or pd.api.types.is_object_dtype(s),
    "float": lambda s: pd.api.types.is_numeric_dtype(s),
    "int": lambda s: pd.api.types.is_integer_dtype(s),
    "bool": lambda s: pd.api.types.is_bool_dtype(s),
    "object": lambda s: True,
}

SWEEP = Schema(
    "sweep",
    (
        Column("method", "string", "exit method name (free, deebert, pabee, distill, static, oracle, full)"),
        Column("regime", "string", "exit training regime: semi, unsupervised, or none"),
        Column("kv_policy", "string", "propagate, deferred or full"),
        Column("threshold", "float", "the rule's parameter (max-prob, entropy, patience or layer)"),
        Column("batch_size", "int", "rows decoded together"),
        Column("task", "string", "vqa or caption"),
        Column("split", "string", "dataset split"),
        Column("perturbation", "string", "NAME:SEVERITY, or 'none'"),
        Column("metric", "string", "e.g. vqa_accuracy, CIDEr, BLEU-4"),
        Column("value", "float", "the metric's value (accuracy in [0, 1])"),
        Column(
            "expected_speedup", "float", "full cost / spent cost in layer-equivalents, exit cost included"
        ),
        Column(
            "measured_speedup", "float", "faster full-model time / early-exit time, same run (NaN if untimed)"
        ),
        Column("latency_ms_median", "float", "median wall time per sample (batch 1) or per batch, in ms"),
        Column("latency_ms_p90", "float", "90th percentile of the same, in ms"),
        Column("mean_exit_layer", "float", "mean LM layer at which generated tokens exited"),
        Column("exit_layer_hist", "string", "JSON {layer: token count}"),
        Column("timer", "string", "cuda_event or cpu_wall; none for simulated (untimed) points"),
        Column("device", "string", "GPU or CPU name"),
        Column(
            "engine", "string", "decode engine of live points: eager or graphs; none for simulated points"
        ),
        Column(
            "n_samples",
            "int",
            "samples the point decoded (live) or evaluated (simulated): questions (vqa) or images (caption)",
        ),
    ),
)


SWEEP_SAMPLES = Schema(
    "sweep_samples",
    (
        *(
            c
            for c in SWEEP.columns
            if c.name
            in ("method", "regime", "kv_policy", "threshold", "batch_size", "task", "split", "perturbation")
        ),  # fmt: skip
        Column("sample_id", "string", "question id (vqa) or image id (caption)"),
        Column(
            "value",
            "float",
            "the sample's quality: VQA accuracy, or per-image CIDEr (corpus IDF); NaN if missing",
        ),
        Column("exit_layer_mean", "float", "mean exit layer over the sample's generated tokens"),
        Column("cost_layers", "float", "layer-equivalents spent on the sample (a batch's cost split evenly)"),
        Column("full_cost_layers", "float", "what the full model spends on the same tokens"),
        Column(
            "latency_ms",
            "float",
            "early-exit decode time attributed to the sample (batch time / rows); NaN if untimed",
        ),
        Column(
            "full_latency_ms",
            "float",
            "the faster full model's time for the same batch / rows; NaN if untimed",
        ),
        Column("batch", "int", "index of the batch the sample was decoded in"),
        Column(
            "prefix_ms",
            "float",
            "vision tower + Q-Former + projection time (batch / rows): what no exit skips",
        ),
    ),
)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it onto `path` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temp folder beside `path`; only if the block succeeds is it renamed onto `path` (an
    existing `path`, which the caller has decided may go, is swapped out whole and then removed), so
    a reader sees the old folder or the complete new one, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = path.with_name(f".{path.name}.{os.getpid()}.old")
    try:
        yield tmp
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def write_parquet(df: pd.DataFrame, path: str | Path, schema: Schema | None = None) -> Path:
    """Validate against `schema` (if given) and write atomically."""
    path = Path(path)
    if schema is not None:
        df = schema.validate(df)
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    return path


def read_json(path: str | Path) -> Any:
    """A JSON file written by this suite; a clear error when it is missing or not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FreeBenchError(f"{path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise FreeBenchError(f"{path} is not valid JSON: {exc}") from None


def write_json(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    return path


def git_state(cwd: str | Path | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the source tree, or nulls outside a git checkout."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=cwd,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
        return {"git_commit": commit, "git_dirty": dirty}
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": None, "git_dirty": None}


def source_hash(root: str | Path | None = None) -> str:
    """sha256 (16 hex) of the suite's Python sources (free_bench/, analyses/): names the code a run used
    where git cannot (a copied work tree, as on the GPU host, reports its base commit as dirty)."""
    root = Path(root or Path(__file__).resolve().parents[2])  # the folder holding free_bench/ and analyses/
    h = hashlib.sha256()
    for folder in ("free_bench", "analyses"):
        for f in sorted((root / folder).rglob("*.py")):
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


_LIBRARIES = (
    "torch",
    "transformers",
    "datasets",
    "pandas",
    "pyarrow",
    "numpy",
    "pycocoevalcap",
    "free-bench",
)


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return f"cpu:{platform.processor() or platform.machine()} x{os.cpu_count()}"


class Manifest:
    """Collects a run's provenance; `write()` stamps the end time and writes atomically."""

    def __init__(
        self, command: str, config: dict[str, Any], seeds: list[int], dataset_hash: str | None = None
    ):
        self.data: dict[str, Any] = {
            "command": command,
            "config": config,
            "seeds": seeds,
            "dataset_hash": dataset_hash,
            "device": device_name(),
            "libraries": library_versions(),
            "platform": platform.platform(),
            "start_time": _now(),
            "end_time": None,
            **git_state(),
            "source_hash": source_hash(),
        }

    def update(self, **fields: Any) -> None:
        self.data.update(fields)

    def write(self, path: str | Path) -> Path:
        self.data["end_time"] = _now()
        return write_json(self.data, path)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
