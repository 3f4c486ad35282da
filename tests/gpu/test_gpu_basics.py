"""On a CUDA machine: the scenes pipeline's tensors move to the GPU and the manifest names the GPU."""

import torch

from free_bench.records import device_name


def test_device_name_is_the_gpu():
    assert device_name() == torch.cuda.get_device_name(0)
