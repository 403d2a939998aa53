"""Speed settings for the training layer (systems code stays out of model.py): precision, optimiser, allocator.

What `harness.benchmarks.pretrain` measures is exactly what these give; pretraining and fine-tuning use them:

    speed.tune_cpu_allocator()                                # once, at process start (CPU runs)
    precision = speed.resolve_precision("auto", accelerator)  # "bf16-mixed" only where bf16 matmuls are faster
    opt = torch.optim.AdamW(groups, ..., **speed.adamw_kwargs(device_type))
    loss = F.cross_entropy(out.mlm_logits.float(), out.mlm_targets)   # logits are bf16 under autocast

torch.compile is not used on CPU: compiling even a lone dropout took 35 s cold on the (loaded) 2-core dev box and
the compiled dropout was no faster (its RNG is as slow as eager's); the eager model already projects only masked
positions and draws cheap dropout masks. Under DDP on CPU, decide `auto_precision` once (rank 0) and pass it on:
each process probing on its own could pick differently.
"""

from __future__ import annotations

import ctypes
import functools
import os
import statistics
import sys
import time
from typing import Literal

import torch


def matmul_gflops(dtype: torch.dtype, n: int = 2048, reps: int = 3, device: str = "cpu") -> float:
    """Throughput of an (n x n) @ (n x n) matmul in `dtype`, in GFLOP/s (median of `reps` after one warmup)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    times = []
    for i in range(reps + 1):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        if i:
            times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


@functools.cache
def cpu_bf16_speedup(m: int = 4096, k: int = 256, n: int = 1024, rounds: int = 5) -> float:
    """How much faster a model-shaped bf16 linear layer runs than fp32 on this CPU (>1 = bf16 faster).

    Depends on the CPU, not on torch: AMX or full-rate AVX-512-BF16 cores (e.g. Zen 5) run bf16 ~2x fp32, while
    CPUs whose bf16 dot product runs at half rate run it at ~0.5x, so autocast there would slow every matmul down.
    """
    x, w = torch.randn(m, k), torch.randn(n, k)
    xb, wb = x.bfloat16(), w.bfloat16()
    times: dict[torch.dtype, list[float]] = {torch.float32: [], torch.bfloat16: []}
    for i in range(rounds + 1):  # interleaved, first round discarded as warmup
        for dtype, (a, b) in ((torch.float32, (x, w)), (torch.bfloat16, (xb, wb))):
            t = time.perf_counter()
            for _ in range(3):
                torch.nn.functional.linear(a, b)
            if i:
                times[dtype].append(time.perf_counter() - t)
    return statistics.median(times[torch.float32]) / statistics.median(times[torch.bfloat16])


def auto_precision(device_type: str, min_speedup: float = 1.3) -> Literal["32", "bf16-mixed"]:
    """Lightning precision for `train.precision=auto`: bf16-mixed on GPUs that support it; on CPU only when a
    probe (~0.3 s) finds bf16 matmuls at least `min_speedup` x faster than fp32."""
    if device_type == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32"
    if device_type == "cpu":
        return "bf16-mixed" if cpu_bf16_speedup() >= min_speedup else "32"
    return "32"


def resolve_precision(precision: str, accelerator: str) -> str:
    """The Lightning precision a `precision` setting means on `accelerator` ("gpu" or "cpu"): "auto" is
    `auto_precision`'s choice, any other value is used as given."""
    if precision != "auto":
        return precision
    return auto_precision("cuda" if accelerator == "gpu" else "cpu")


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype matching `auto_precision` (None = plain fp32), for loops outside Lightning."""
    return torch.bfloat16 if auto_precision(device_type) == "bf16-mixed" else None


def adamw_kwargs(device_type: str) -> dict[str, bool]:
    """Fused AdamW where torch has it (CUDA, and CPU since torch 2.4): one kernel over all tensors."""
    return {"fused": True} if _has_fused_adamw(device_type) else {}


@functools.cache
def _has_fused_adamw(device_type: str) -> bool:
    try:
        p = torch.zeros(2, device=device_type, requires_grad=True)
        p.grad = torch.ones(2, device=device_type)
        torch.optim.AdamW([p], lr=1e-3, fused=True).step()
        return True
    except (RuntimeError, TypeError, ValueError):
        return False


def tune_cpu_allocator() -> bool:
    """Keep freed memory in the process instead of unmapping it (glibc only; a no-op elsewhere).

    glibc serves every allocation over 32 MB with a fresh mmap and unmaps it on free, so each training step
    page-faults in the full-vocabulary tensors again (0.9 GB/step at vocab 50K: ~220K page faults). Turning mmap
    off (M_MMAP_MAX=0) and raising the trim threshold keeps those pages. Returns whether the settings were applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))


def cpu_description() -> str:
    """'<model name>, <n> cores, AMX|AVX512-BF16|no bf16 units' from /proc/cpuinfo (Linux; else the platform)."""
    import platform

    try:
        info = open("/proc/cpuinfo").read()
    except OSError:
        return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    bf16 = "AMX" if "amx_bf16" in flags else "AVX512-BF16, no AMX" if "avx512_bf16" in flags else "no bf16 units"
    return f"{name}, {os.cpu_count()} cores, {bf16}"


def sync(device: str) -> None:
    """Wait for the device's queued work (a timer around GPU work measures nothing without it); no-op on CPU."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
