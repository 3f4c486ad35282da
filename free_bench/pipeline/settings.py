"""A reproduce run's settings from a file (YAML or TOML): a named profile with the fields a user's
checkpoint and data need changed.

    profile: gpu            # the profile whose settings the rest overrides (default: gpu)
    name: blip2-opt-vqav2   # results/<name>/ (default: the profile's name)
    exits: {steps: 2000, batch_size: 16, dense: "every:2", sparse: "8,16,24", keep_mib: 0}
    reproduce: {runs: ["free:semi", "deebert:semi"], seeds: [0], live_rows: 1000,
                tasks: [vqa], perturbations: [gaussian_noise], severities: [1, 3, 5]}

Only the `exits` (ExitTrainConfig) and `reproduce` (ReproduceConfig) sections can be set; an unknown
section or field is an error naming it, so a typo never silently keeps a default.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from free_bench.config import Profile, get_profile
from free_bench.core.errors import FreeBenchError

SECTIONS = ("exits", "reproduce")


def read_settings(path: str | Path) -> dict[str, Any]:
    """The file's mapping; YAML (.yaml, .yml) or TOML (.toml), by suffix."""
    path = Path(path)
    if not path.is_file():
        raise FreeBenchError(f"config file not found: {path}")
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(path.read_text()) or {}
        elif path.suffix == ".toml":
            data = tomllib.loads(path.read_text())
        else:
            raise FreeBenchError(f"{path}: a config file is .yaml, .yml or .toml, not {path.suffix or 'no suffix'!r}")
    except FreeBenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - yaml and tomllib raise their own types
        raise FreeBenchError(f"{path} is not valid {path.suffix[1:].upper()}: {exc}") from None
    if not isinstance(data, dict):
        raise FreeBenchError(f"{path}: expected a mapping at top level, got {type(data).__name__}")
    return data


def apply_settings(data: dict[str, Any], where: str = "config") -> Profile:
    """The base profile with `data`'s sections applied, named `data["name"]` (default: the profile's)."""
    unknown = sorted(set(data) - {"profile", "name", *SECTIONS})
    if unknown:
        raise FreeBenchError(f"{where}: unknown key(s) {unknown}; valid: profile, name, {', '.join(SECTIONS)}")
    base = get_profile(str(data.get("profile", "gpu")))
    changes: dict[str, Any] = {}
    for section in SECTIONS:
        given = data.get(section) or {}
        if not isinstance(given, dict):
            raise FreeBenchError(f"{where}: section {section!r} must be a mapping, got {type(given).__name__}")
        changes[section] = _replace(getattr(base, section), given, f"{where}: {section}")
    name = str(data.get("name", base.name))
    if not name or "/" in name or name.startswith("."):
        raise FreeBenchError(f"{where}: name {name!r} must be a plain folder name")
    return dataclasses.replace(base, name=name, extras={**base.extras, "base": base.name}, **changes)


def _replace(obj: Any, given: dict[str, Any], where: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(obj)}
    bad = sorted(set(given) - set(fields))
    if bad:
        raise FreeBenchError(f"{where}: unknown field(s) {bad}; valid: {', '.join(fields)}")
    values = {}
    for key, value in given.items():
        current = getattr(obj, key)
        if isinstance(value, list):
            value = tuple(value)
        if current is not None and value is not None and not _compatible(current, value):
            raise FreeBenchError(f"{where}.{key}: expected {type(current).__name__} like {current!r}, got {value!r}")
        values[key] = value
    return dataclasses.replace(obj, **values)


def _compatible(current: Any, value: Any) -> bool:
    if isinstance(current, bool) or isinstance(value, bool):
        return isinstance(current, bool) and isinstance(value, bool)
    if isinstance(current, (int, float)):
        return isinstance(value, (int, float))
    return isinstance(value, type(current))


def load_settings(path: str | Path) -> Profile:
    return apply_settings(read_settings(path), str(path))
