"""Where a command's rows come from: a data folder written by `free-bench data` (`--data DIR`), or
the generated `scenes` of a profile (the default for embedded backbones).

A `DataSource` carries the splits and a record of what they are (`ref`: the folder or the scenes
profile and seed, `hash`: their content hash), which train-exits writes into its manifest: eval-exits
and sweep then read the same rows by default, and a data folder rewritten with other rows is another
run, never a silent reuse.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from free_bench.core.errors import FreeBenchError
from free_bench.core.records import read_json

FOLDER_MANIFEST = "manifest.json"  # what `free-bench data` writes beside the splits


@dataclass(frozen=True)
class DataSource:
    splits: datasets.DatasetDict
    ref: dict[str, Any]  # {"folder": abs path} or {"profile": name, "seed": n}
    hash: str | None
    name: str  # for messages: the folder, or "scenes/<profile>"

    def split(self, name: str, *, need: str = "") -> datasets.Dataset:
        """One split, or an error naming the splits this source has (and what it was needed for)."""
        if name not in self.splits:
            why = f" for {need}" if need else ""
            raise FreeBenchError(
                f"{self.name} has no split {name!r}{why}; it has {', '.join(self.splits) or 'none'} "
                "(free-bench data --splits names the splits a data folder gets)"
            )
        return self.splits[name]


def open_folder(folder: str | Path) -> DataSource:
    """A folder written by `free-bench data` (its manifest says so), loaded without copying."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise FreeBenchError(f"data folder {str(path)!r} does not exist; write one with `free-bench data`")
    manifest = path / FOLDER_MANIFEST
    made = read_json(manifest) if manifest.is_file() else {}
    if made.get("command") != "data":
        raise FreeBenchError(
            f"{str(path)!r} is not a data folder written by `free-bench data` (no data manifest.json)"
        )
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001 - datasets raises several types for a damaged folder
        raise FreeBenchError(f"cannot read the data folder {str(path)!r}: {type(exc).__name__}: {exc}") from None
    if isinstance(loaded, datasets.Dataset):
        raise FreeBenchError(f"{str(path)!r} holds one dataset without splits, not a `free-bench data` folder")
    root = str(path.resolve())
    return DataSource(loaded, {"folder": root}, made.get("dataset_hash"), root)


def open_scenes(profile: str, seed: int, *, progress: bool = True) -> DataSource:
    """The profile's generated scenes (made and cached on first use)."""
    from free_bench.data.scenes_dataset import load_scenes, scenes_hash

    splits = load_scenes(profile, seed, progress=progress)
    return DataSource(splits, {"profile": profile, "seed": seed}, scenes_hash(profile, seed), f"scenes/{profile}")


def ref_hash(ref: dict[str, Any]) -> str | None:
    """The content hash a source's `ref` names, read from its record (nothing loaded)."""
    if ref.get("folder"):
        manifest = Path(ref["folder"]) / FOLDER_MANIFEST
        return read_json(manifest).get("dataset_hash") if manifest.is_file() else None
    from free_bench.data.scenes_dataset import scenes_hash

    return scenes_hash(ref["profile"], int(ref.get("seed", 0)))


def open_data(ref: dict[str, Any] | str | Path | None, *, progress: bool = True) -> DataSource:
    """A source from `--data DIR`, from a recorded `ref`, or an error when there is neither."""
    if ref is None:
        raise FreeBenchError("no data given: pass --data DIR (a folder written by `free-bench data`)")
    if isinstance(ref, (str, Path)):
        return open_folder(ref)
    if ref.get("folder"):
        return open_folder(ref["folder"])
    return open_scenes(ref["profile"], int(ref.get("seed", 0)), progress=progress)
