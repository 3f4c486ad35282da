"""Data-parallel exit training with torch.distributed (NCCL on GPU, gloo on CPU), under torchrun.

Every rank holds the same exits; each takes its own contiguous share of every global batch, and
gradients are averaged across ranks before clipping, so a run on N processes follows the
single-process run on the same global batch (up to float rounding) whenever every share holds as
many loss tokens (one-word VQA answers); with captions of different lengths the per-rank token means
are averaged, as DDP does everywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from free_bench.core.errors import FreeBenchError


@dataclass(frozen=True)
class Dist:
    """This process's place in the group; the default is a single process."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, start: int, stop: int) -> range:
        """This rank's contiguous rows of the global batch [start, stop)."""
        n = stop - start
        per = -(-n // self.world)
        return range(start + self.rank * per, min(stop, start + (self.rank + 1) * per))


def init_from_env(device: str | None) -> tuple[Dist, str | None]:
    """Join the process group torchrun describes (WORLD_SIZE > 1); returns (Dist, this rank's device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and device != "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    return Dist(rank, world), device


def check_batch(batch_size: int, d: Dist) -> None:
    if batch_size % d.world:
        raise FreeBenchError(f"batch size {batch_size} does not split over {d.world} processes")


def average_gradients(params: list[torch.nn.Parameter], d: Dist) -> None:
    if d.world == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad.div_(d.world)


def average_scalars(values: dict[str, float], d: Dist) -> dict[str, float]:
    """The same logged numbers (and guard decisions) on every rank."""
    if d.world == 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return dict(zip(keys, (t / d.world).tolist(), strict=True))


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


def shutdown(d: Dist) -> None:
    """Leave the process group (torchrun ranks), so no rank exits with gloo's threads still running."""
    if d.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


SINGLE = Dist()
