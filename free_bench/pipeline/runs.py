"""The exit trainings of `reproduce` as chains (train-exits -> eval-exits -> simulated sweeps), run in
this process or by worker processes sharing the one device.

Why workers: an exit training moves small modules over cached hidden states, so kernel launches, not
the GPU, bound it; several trainings side by side finish the stage sooner on one H200. Nothing in a
chain is timed for a speedup (train seconds become wall time shared with the other workers, and the
manifest says how many there were). Workers take chains, heaviest first, by creating a claim file;
a chain's done file lets a resumed stage skip it. Plans are plain JSON, so workers need no profile.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from free_bench.core.errors import FreeBenchError
from free_bench.core.records import atomic_path, write_json
from free_bench.pipeline.plans import run_planned

log = logging.getLogger(__name__)

def run_chain(plan: dict) -> None:
    """Train (unless trained), evaluate (unless evaluated), then its sweeps (each resumes itself)."""
    from free_bench.evaluation.per_exit import evaluate_exit_run
    from free_bench.training.run import train_exit_run

    train_exit_run(**plan["train"])  # a finished run with the same settings is reused as it is
    if not all(Path(f).exists() for f in plan["eval_outputs"]):  # a killed eval runs again
        for job in plan["eval"]:
            evaluate_exit_run(**{**job, "splits": tuple(job["splits"]), "tasks": tuple(job["tasks"])})
    for sweep in plan["sweeps"]:
        run_planned(sweep)


def _done(folder: Path, name: str) -> Path:
    return folder / f"{name}.done"


def run_chains(plans: list[dict], workers: int, folder: Path) -> None:
    """Every chain, `workers` at a time; an error names the failed chain's worker log."""
    folder.mkdir(parents=True, exist_ok=True)
    todo = [p for p in plans if not _done(folder, p["name"]).exists()]
    if workers <= 1 or len(todo) <= 1:
        for plan in tqdm(todo, desc="exit chains"):
            run_chain(plan)
            _done(folder, plan["name"]).write_text("done\n")
        return
    for claim in folder.glob("*.claim"):  # left by killed workers: nobody holds them now
        claim.unlink()
    queue = folder / "plans.json"
    write_json(sorted(todo, key=lambda p: -p["weight"]), queue)
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "TQDM_MININTERVAL": "30"}
    logs = [folder / f"worker-{k}.log" for k in range(min(workers, len(todo)))]
    procs = []
    try:
        for k, log in enumerate(logs):
            with open(log, "ab") as fh:
                cmd = [sys.executable, "-m", "free_bench.pipeline.runs", str(queue), str(k)]
                procs.append(subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env))
        bar = tqdm(total=len(todo), desc=f"exit chains ({len(procs)} workers)")
        while True:
            bar.update(sum(_done(folder, p["name"]).exists() for p in todo) - bar.n)
            for k, proc in enumerate(procs):
                if proc.poll() not in (None, 0):
                    tail = logs[k].read_text(errors="replace")[-3000:]
                    raise FreeBenchError(
                        f"exit worker {k} failed (exit {proc.returncode}); {logs[k]} ends:\n{tail}"
                    )
            if all(proc.poll() == 0 for proc in procs):
                break
            time.sleep(1.0)
        bar.close()
    finally:  # an error or a time limit (SIGTERM -> SystemExit) takes the workers down too
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    missing = [p["name"] for p in todo if not _done(folder, p["name"]).exists()]
    if missing:
        raise FreeBenchError(f"exit chains not finished by the workers: {', '.join(missing)}")


def _work(queue: Path, worker: int) -> None:
    """A worker: claim the next unclaimed chain, run it, mark it done; stop when none is left."""
    for plan in json.loads(queue.read_text()):
        name = plan["name"]
        try:
            os.close(os.open(queue.parent / f"{name}.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue
        t0 = time.perf_counter()
        log.info("[worker %d] %s", worker, name)
        run_chain(plan)
        with atomic_path(_done(queue.parent, name)) as tmp:
            tmp.write_text(f"worker {worker}, {time.perf_counter() - t0:.1f} s\n")
        log.info("[worker %d] %s done in %.1f s", worker, name, time.perf_counter() - t0)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout, force=True)
    _work(Path(sys.argv[1]), int(sys.argv[2]))
