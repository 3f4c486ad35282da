"""`StaticKV`: stacked and separate (one buffer per layer, for torch.compile) layouts hold the same K/V."""

from __future__ import annotations

import torch

from free_bench.engine.graphs.static import StaticKV


def test_separate_buffers_hold_what_the_stack_holds() -> None:
    n, b, h, c, d = 4, 1, 2, 8, 3
    caches = {s: StaticKV(n, b, c, torch.device("cpu"), separate=s) for s in (False, True)}
    torch.manual_seed(0)
    writes = [
        (torch.arange(3), None),
        (torch.tensor([3]), None),
        (torch.tensor([4]), 1),
    ]  # (positions, fill from)
    for positions, start in writes:
        q = len(positions)
        k, v = torch.randn(n, b, h, q, d), torch.randn(n, b, h, q, d)  # (n, B, H, q, Dh)
        for cache in caches.values():
            cache.index = positions
            if start is None:  # every layer through `update`, as attention writes
                returned = [cache.update(k[j], v[j], j) for j in range(n)]
                assert all(r[0].shape == (b, h, c, d) for r in returned)
            else:  # layers start.. without running them, as the propagate fill writes
                cache.update(k[0], v[0], 0)
                cache.write_layers(start, k[start:], v[start:])
    stacked, separate = caches[False], caches[True]
    assert isinstance(separate.keys, list) and len(separate.keys) == n
    assert torch.equal(torch.stack(separate.keys), stacked.keys)
    assert torch.equal(torch.stack(separate.values), stacked.values)
    assert torch.equal(stacked.keys[:, :, :, 4], k[:, :, :, 0]) and torch.equal(
        stacked.values[:, :, :, 4], v[:, :, :, 0]
    )
    assert stacked.keys[:, :, :, 5:].abs().sum() == 0  # slots never written stay zero
