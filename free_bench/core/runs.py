"""Run folders that are safe to reuse: what made them is recorded, compared before any reuse, and one
writer at a time.

Every command that writes an `--out` folder records its settings (the run's *provenance*: method,
regime, steps, seeds, backbone and data identity, ...) with its results. A rerun into the same folder
reuses or resumes only when every recorded field equals the asked one; otherwise it stops with the
fields that differ, unless `--overwrite` was given. A lock file beside the folder keeps a second
writer out while one is working.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from free_bench.core.errors import FreeBenchError


def _flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys ("train.steps"), so a difference names the exact field."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flat(value, name + "."))
        else:
            out[name] = value
    return out


def _normal(config: Mapping[str, Any]) -> dict[str, Any]:
    """JSON round trip: tuples become lists, keys strings, as they are when read back from disk."""
    return json.loads(json.dumps(config, sort_keys=True, default=str))


def differences(recorded: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """'field: recorded -> wanted' for every field whose value differs (missing on one side counts)."""
    old, new = _flat(_normal(recorded)), _flat(_normal(wanted))
    missing = object()
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, missing), new.get(key, missing)
        if a != b:
            show = lambda v: "(absent)" if v is missing else json.dumps(v)  # noqa: E731
            out.append(f"{key}: {show(a)} recorded, {show(b)} asked")
    return out


def check_same(what: str, where: Path, recorded: Mapping[str, Any], wanted: Mapping[str, Any]) -> None:
    """FreeBenchError naming every differing field when `where` was made with other settings."""
    diff = differences(recorded, wanted)
    if diff:
        raise FreeBenchError(
            f"{where} holds {what} made with other settings ({'; '.join(diff)}); "
            f"pass --overwrite to replace it, or choose another --out"
        )


def check_writable(out: Path) -> None:
    """Fail before any work when `out` cannot become a folder: it is a file, or its parent is not a
    writable folder (the first existing ancestor is checked, since missing parents are created)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FreeBenchError(f"--out {out} is a file, not a folder")
    parent = out if out.exists() else out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise FreeBenchError(f"--out {out}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise FreeBenchError(f"--out {out}: {parent} is not writable")


def remove_run(folder: Path, marker: str) -> None:
    """Delete a run folder this suite wrote (it holds `marker`, e.g. its manifest); anything else is
    refused, so `--overwrite` can never delete a user's unrelated folder."""
    folder = Path(folder)
    if not folder.exists():
        return
    if not (folder / marker).is_file():
        raise FreeBenchError(
            f"{folder} exists and is not a free-bench run (no {marker}); it is left alone: choose another --out"
        )
    shutil.rmtree(folder)


def lock_path(out: Path) -> Path:
    return Path(out).with_name(Path(out).name + ".lock")


@contextmanager
def writer_lock(out: Path) -> Iterator[None]:
    """Hold `<out>.lock` while writing `out`; a second writer gets a clear error at once.

    An advisory `flock` rather than a pid file: the kernel drops it when the holder dies, so a killed
    run never leaves a stale lock behind. The file is removed on release while still held, and a taker
    checks it locked the file that is still at the path (not one a releasing writer just removed).
    """
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise FreeBenchError(
                f"another free-bench run is writing {out} ({holder}); wait for it to finish or use another --out"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the releasing writer removed it between our open and our lock: take the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        try:
            os.unlink(path)
        finally:
            os.close(fd)
