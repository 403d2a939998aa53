"""Pretraining step throughput: our MaskedLM vs transformers' RobertaForMaskedLM in a plain PyTorch loop.

Same architecture (vocab 50,265, H 256, 4 layers, 4 heads, FFN 1024), sequences of 128, batch 32, 15% of tokens
predicted, dropout 0.1 in both. HF runs as a user would by default: full-vocabulary LM head, fp32, AdamW with
torch's defaults. Ours runs as the pretraining module does (settings from `harness.speed`). Both share one
process and its allocator settings; runs are interleaved (ours, HF, ours, HF, ...) so a noisy neighbour slows both,
and every figure is a median of per-step times after warmup. MFU is taken against the matmul peak of the dtype the
step runs in, measured in the same rounds with a 2048^2 matmul, and the key names that dtype: ours `mfu_bf16` when
`speed.autocast_dtype` puts the step in bf16, else `mfu_fp32`; HF's `hf_mfu_fp32`. A second, shorter pass times CPU
seconds on one thread (`*_1thread_cpu`, its peak a matmul in the same dtype): on a machine shared with other jobs,
the wall-clock figures measure the neighbours as well.
"""

from __future__ import annotations

import os
import statistics
import time

import torch
import torch.nn.functional as F

from harness import speed
from harness.config import ModelConfig
from harness.model import MaskedLM
from harness.tokens import BOS, EOS, IGNORE_INDEX, MASK, SPECIAL_TOKENS

VOCAB, HIDDEN, LAYERS, HEADS, SEQ, BATCH, MASK_PROB = 50_265, 256, 4, 4, 128, 32, 0.15
ROUNDS, OURS_PER_ROUND, HF_PER_ROUND = 5, 3, 1
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16"}


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(SPECIAL_TOKENS), VOCAB, (BATCH, SEQ), generator=g)  # ordinary tokens
    ids[:, 0], ids[:, -1] = BOS, EOS
    selected = torch.rand(BATCH, SEQ, generator=g) < MASK_PROB
    selected[:, 0] = selected[:, -1] = False
    labels = torch.where(selected, ids, IGNORE_INDEX)
    return torch.where(selected, MASK, ids), labels  # selected tokens shown as <mask>


def _ours(ids: torch.Tensor, labels: torch.Tensor):
    torch.manual_seed(0)
    cfg = ModelConfig(preset="custom", n_layers=LAYERS, hidden=HIDDEN, n_heads=HEADS)
    model = MaskedLM(cfg, VOCAB, seed=0).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **speed.adamw_kwargs("cpu"))
    dtype = speed.autocast_dtype("cpu")

    def step() -> None:
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(ids, None, None, labels)  # no padding: attention_mask=None
        F.cross_entropy(out.mlm_logits.float(), out.mlm_targets).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return model, step, dtype


def _hf(ids: torch.Tensor, labels: torch.Tensor):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import RobertaConfig, RobertaForMaskedLM

    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                        intermediate_size=4 * HIDDEN, max_position_embeddings=SEQ + 2, type_vocab_size=1)
    model = RobertaForMaskedLM(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return model, step


def _timed(step, n: int, clock=time.perf_counter) -> list[float]:
    times = []
    for _ in range(n):
        t = clock()
        step()
        times.append(clock() - t)
    return times


def _single_thread_cpu_seconds(ours_step, hf_step, dtype: torch.dtype) -> tuple[float, float, float]:
    """Median CPU seconds per step of ours and HF, and of a 2048^2 matmul in `dtype` (our step's), on one thread.

    On a shared machine other processes take cores away mid-step; with two threads every one of the step's
    hundreds of parallel ops then waits for the descheduled thread, which inflates wall-clock times by seconds.
    CPU time on one thread is nearly immune to that, so this is the number to trust when the load was high."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ours, hf, mm = [], [], []
        a, b = torch.randn(2048, 2048).to(dtype), torch.randn(2048, 2048).to(dtype)
        for _ in range(2):
            ours += _timed(ours_step, 2, time.process_time)
            hf += _timed(hf_step, 1, time.process_time)
            mm += _timed(lambda: a @ b, 3, time.process_time)
        return statistics.median(ours), statistics.median(hf), statistics.median(mm)
    finally:
        torch.set_num_threads(threads)


def run() -> dict:
    started, load = time.perf_counter(), os.getloadavg()[0]
    allocator = speed.tune_cpu_allocator()
    ids, labels = _batch()
    model, ours_step, dtype = _ours(ids, labels)
    step_dtype = dtype or torch.float32  # what our step's matmuls run in: its MFU's denominator
    name = DTYPE_NAMES[step_dtype]
    _, hf_step = _hf(ids, labels)
    _timed(ours_step, 3)  # warmup: allocator, MKL/oneDNN buffers, first-touch of optimiser state
    _timed(hf_step, 1)
    ours, hf = [], []
    peaks: dict[torch.dtype, list[float]] = {torch.float32: [], step_dtype: []}  # HF's fp32, ours
    for _ in range(ROUNDS):
        ours += _timed(ours_step, OURS_PER_ROUND)
        hf += _timed(hf_step, HF_PER_ROUND)
        for d in peaks:
            peaks[d].append(speed.matmul_gflops(d))

    ours_cpu, hf_cpu, mm_cpu = _single_thread_cpu_seconds(ours_step, hf_step, step_dtype)

    tokens = BATCH * SEQ
    predicted = float((labels != IGNORE_INDEX).float().mean())
    flops = model.flops_per_token(SEQ, predicted)
    hf_flops = model.flops_per_token(SEQ, 1.0)  # HF projects every position to the vocabulary
    tps, hf_tps = tokens / statistics.median(ours), tokens / statistics.median(hf)
    p32, peak = statistics.median(peaks[torch.float32]), statistics.median(peaks[step_dtype])
    mm = "oneDNN brgemm (bf16)" if dtype is not None else "MKL sgemm (fp32)"
    notes = (
        f"CPU: {speed.cpu_description()}; threads={torch.get_num_threads()}. Ours: "
        f"{'bf16 autocast' if dtype is not None else 'fp32'} (probe: bf16 linear runs "
        f"{speed.cpu_bf16_speedup():.2f}x fp32 here), every Linear and the LM head via addmm/mm -> {mm}; "
        f"LM head at the {predicted:.1%} masked positions only, last block's queries there too; attention in "
        "training = bmm (same path) + softmax + 16-bit-mask dropout (SDPA's CPU kernels do not fuse dropout); "
        f"AdamW fused={speed.adamw_kwargs('cpu').get('fused', False)}. HF: fp32, MKL sgemm everywhere incl. the "
        f"(4096x256)@(256x50265) head ({hf_flops / flops:.1f}x our FLOPs/token), SDPA math path with dropout, "
        f"AdamW defaults (foreach). Shared: glibc mmap off ({allocator}); {ROUNDS} interleaved rounds, medians; "
        f"MFU against the peak of the dtype the step runs in (ours {name}, HF fp32) = median 2048^2 matmul in that "
        "dtype per round. *_1thread_cpu: CPU seconds on one thread, its peak a matmul in our step's dtype, robust to "
        f"other processes (1-min load average at start: {load:.1f} on {os.cpu_count()} cores)."
    )
    return {
        "tokens_per_s": round(tps, 1),
        "hf_tokens_per_s": round(hf_tps, 1),
        "speedup_vs_hf": round(tps / hf_tps, 2),
        f"mfu_{name}": round(tps * flops / (peak * 1e9), 3),
        "hf_mfu_fp32": round(hf_tps * hf_flops / (p32 * 1e9), 3),
        **{f"matmul_peak_gflops_{DTYPE_NAMES[d]}": round(statistics.median(v), 1) for d, v in peaks.items()},
        "flops_per_token": flops,
        "hf_flops_per_token": hf_flops,
        "tokens_per_cpu_s_1thread": round(tokens / ours_cpu, 1),
        "hf_tokens_per_cpu_s_1thread": round(tokens / hf_cpu, 1),
        "speedup_vs_hf_1thread_cpu": round(hf_cpu / ours_cpu, 2),
        f"mfu_{name}_1thread_cpu": round(flops * tokens / ours_cpu / (2 * 2048**3 / mm_cpu), 3),
        "load_avg_at_start": round(load, 2),
        "step_s": round(statistics.median(ours), 4),
        "hf_step_s": round(statistics.median(hf), 4),
        "wall_s": round(time.perf_counter() - started, 1),
        "notes": notes,
    }


if __name__ == "__main__":
    print(run())
