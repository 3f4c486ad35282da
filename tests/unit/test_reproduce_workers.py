"""How many exit chains `reproduce` runs side by side: the profile's count, fewer on a smaller GPU."""

from __future__ import annotations

import dataclasses

import torch

from free_bench.config import ReproduceConfig
from free_bench.pipeline.stages import fitting_workers


def test_workers_fit_the_free_gpu_memory(monkeypatch, caplog) -> None:
    cfg = dataclasses.replace(ReproduceConfig(), exit_workers=6, exit_worker_gib=12.0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert fitting_workers(cfg) == 6  # on CPU nothing caps them
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (130 * 2**30, 141 * 2**30))
    assert fitting_workers(cfg) == 6  # an H200 holds them all
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (30 * 2**30, 40 * 2**30))
    assert fitting_workers(cfg) == 2 and "2 exit workers instead of 6" in caplog.text
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (5 * 2**30, 24 * 2**30))
    assert fitting_workers(cfg) == 1  # one chain always runs
    assert fitting_workers(dataclasses.replace(cfg, exit_workers=1)) == 1
