"""Timing on CPU or GPU: medians after warm-up, and the device's matmul peak that MFU is measured
against. Used by `make bench` and by the quality run's report."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def on_cuda(device: str | torch.device) -> bool:
    return torch.device(device).type == "cuda"


def sync(device: str | torch.device) -> None:
    """Wait for the device's queued kernels, so a timer around the call sees them."""
    if on_cuda(device):
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> dict:
    """Seconds per call of `fn` (which must itself wait for the device): the median of `repeats`
    calls after `warmup` untimed ones, with the fastest and slowest."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "runs": repeats}


def matmul_peak(device: str | torch.device, n: int | None = None, repeats: int = 5) -> dict:
    """The device's practical matmul peak, the denominator of MFU: FLOP/s of an n x n matmul, median
    after warm-up; bf16 on CUDA (the tensor cores autocast uses), fp32 on the CPU."""
    cuda = on_cuda(device)
    n = n or (8192 if cuda else 2048)
    dtype = torch.bfloat16 if cuda else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))

    def matmul():
        a @ b
        sync(device)

    t = timed(matmul, repeats, warmup=2)
    return {
        "n": n,
        "dtype": str(dtype).removeprefix("torch."),
        "TFLOP_per_s": 2 * n**3 / t["median_s"] / 1e12,
    }
