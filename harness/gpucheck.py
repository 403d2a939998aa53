"""`make gpu-check`: what only a GPU shows, in one command of a few minutes, ready for the first session lent one.

On a CUDA machine (docs/gpu.md holds the exact `device` call: one H200, a 15-minute budget, a bare machine each time):
  environment  versions of torch, CUDA, transformers, lightning, tokenizers; the visible GPUs
  peak         the bf16 matmul rate measured here (8192^3), the MFU denominator, beside the data sheet's
  numerics     our encoder vs transformers' RobertaForMaskedLM in fp32 with TF32 off (max |logit difference|
               <= 1e-4), and 50 training steps in bf16 autocast vs the same 50 in fp32 (every loss within 2%)
  throughput   the paper's shape: BERT-base (L12 H768 A12), 512 tokens, bf16 autocast, our training step vs
               RobertaForMaskedLM with SDPA on the same batch, interleaved rounds, medians: tokens/s, MFU, memory
  real_path    Table 2's smoke grid through the Lightning Trainer (bf16-mixed, W&B disabled), and its table,
               from the $HARNESS_CACHE carried with the call (corpus, binarized data, fine-tuning stand-in)
  ddp          a 2-GPU DDP/NCCL smoke cell where two GPUs are visible; otherwise the report says why not
  compile      torch.compile of ours, then of HF, each only while the time budget leaves room for a cold compile

Without CUDA the same code runs at tiny shapes on the CPU, without compile, and says it is a rehearsal: that is
how the script is tested before a device appears. Nothing here imports wandb, optuna or submitit, which the
device machine lacks; nltk and mwparserfromhell (the corpus cache key names their versions) travel as wheels
(`make gpu-wheels`). The report (gpu_check.json, gpu_check.md, the smoke table and the grid's log) goes to
--out: $OUT when set (the device tool returns what is there), else runs/gpu-check/. It is rewritten after every
section, so a command stopped at its limit still returns what it measured. Exit 1 when a check failed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from harness import speed
from harness.config import ModelConfig
from harness.files import read_json, write_json
from harness.grid.provenance import package_versions
from harness.model import MaskedLM
from harness.schedule import lr_factor
from harness.tokens import BOS, EOS, IGNORE_INDEX, MASK, PAD, SPECIAL_TOKENS

SECTIONS = ("environment", "peak", "numerics", "throughput", "real_path", "ddp", "compile")
NOMINAL_H200_BF16 = 989e12  # dense bf16 FLOP/s, NVIDIA's H100/H200 SXM data sheet
FP32_LOGIT_TOL = 1e-4  # the bar: fp32 kernels that differ only in summation order agree to ~1e-6 here
# bf16 keeps 8 significant bits (unit roundoff 2^-9 = 0.2%); fp32 accumulation inside the matmuls keeps the loss
# within a few roundoffs of fp32's over 50 steps. 2% per step is ~10 roundoffs: wide enough for that drift, far
# below what a wrong cast does (a bf16 loss reduction or bf16 softmax moves the curve by several percent).
BF16_CURVE_TOL = 0.02
CURVE_STEPS = 50
COMPILE_RESERVE_S = 100  # a cold torch.compile of BERT-base takes 1-2 minutes; the call's timeout leaves 3 more


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    heads: int
    seq: int
    batch: int
    vocab: int


BATCH_WHY = ("32 x 512 = 16,384 tokens: the paper's ablation batch (256 sequences of 512) split over an 8-GPU node, "
             "what one GPU of such a node runs per step; both models fit with room to spare (HF's full-vocabulary "
             "logits, 32 x 512 x 50,265 in fp32, are 3.3 GB)")
GPU_SHAPE = Shape(layers=12, hidden=768, heads=12, seq=512, batch=32, vocab=50_265)
CPU_SHAPE = Shape(layers=2, hidden=64, heads=2, seq=64, batch=4, vocab=1_000)  # the rehearsal: seconds on 2 cores
MASK_PROB = 0.15


class Report:
    """gpu_check.json and gpu_check.md under `out`, rewritten after every section."""

    def __init__(self, out: Path, rehearsal: bool, budget_s: float):
        self.out, self.t0 = out, time.perf_counter()
        self.data: dict = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rehearsal": rehearsal, "budget_s": budget_s,
                           "sections": {}, "checks": {}}
        self.budget_s = budget_s
        out.mkdir(parents=True, exist_ok=True)

    def left_s(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def section(self, name: str, result: dict, checks: dict[str, bool] | None = None) -> None:
        self.data["sections"][name] = result
        self.data["checks"].update(checks or {})
        self.data["wall_s"] = round(time.perf_counter() - self.t0, 1)
        write_json(self.out / "gpu_check.json", self.data)
        (self.out / "gpu_check.md").write_text(summary(self.data))
        print(f"[gpu-check] {name}: {'; '.join(f'{k}={v}' for k, v in _flat(result).items())}", flush=True)

    @property
    def passed(self) -> bool:
        return all(self.data["checks"].values())


def environment(device: str) -> dict:
    versions = package_versions(("torch", "lightning", "transformers", "tokenizers", "numpy", "pandas", "nltk",
                                 "mwparserfromhell"))
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    info = {"python": platform.python_version(), "versions": versions, "device": device, "cuda": torch.version.cuda,
            "gpus": gpus}
    if device == "cpu":
        info["cpu"] = speed.cpu_description()
    return info


def peak(device: str) -> dict:
    n = 8192 if device == "cuda" else 512  # bf16 without bf16 units is slow: the rehearsal only runs the code
    measured = max(speed.matmul_gflops(torch.bfloat16, n=n, reps=5, device=device) for _ in range(2)) * 1e9
    out = {"matmul": f"{n}^3 bf16, best of 2 medians of 5", "measured_bf16_flops": measured}
    if device == "cuda":
        out["nominal_bf16_flops"] = NOMINAL_H200_BF16
    return out


# ---------------------------------------------------------------------------------------------------------------
# Models and batches


def ours(shape: Shape, device: str, dropout: float = 0.1) -> MaskedLM:
    cfg = ModelConfig(preset="custom", n_layers=shape.layers, hidden=shape.hidden, n_heads=shape.heads,
                      max_positions=shape.seq, dropout=dropout)
    return MaskedLM(cfg, shape.vocab, seed=0).to(device)


def batch(shape: Shape, device: str, seed: int = 0, learnable: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels) as the data module makes them: 15% of positions selected and shown as <mask>.
    learnable: each row repeats a random motif of 4 tokens out of 32, so the loss can fall within 50 steps (first to
    the 32 tokens' entropy, then by copying from 4 positions away); else uniform random tokens."""
    g = torch.Generator().manual_seed(seed)
    n = len(SPECIAL_TOKENS)
    if learnable:
        motif = torch.randint(n, n + 32, (shape.batch, 4), generator=g)
        ids = motif.repeat(1, shape.seq // 4 + 1)[:, : shape.seq]
    else:
        ids = torch.randint(n, shape.vocab, (shape.batch, shape.seq), generator=g)
    ids[:, 0], ids[:, -1] = BOS, EOS
    selected = torch.rand(shape.batch, shape.seq, generator=g) < MASK_PROB
    selected[:, 0] = selected[:, -1] = False
    labels = torch.where(selected, ids, IGNORE_INDEX)
    return torch.where(selected, MASK, ids).to(device), labels.to(device)


def _autocast(device: str, enabled: bool = True):
    return torch.autocast(device, dtype=torch.bfloat16, enabled=enabled)


def train_step(loss_of, model, opt, device: str, bf16: bool = True):
    """One optimizer step as a closure: `loss_of(model)` under bf16 autocast (or fp32), backward, AdamW."""

    def step() -> torch.Tensor:
        with _autocast(device, bf16):
            loss = loss_of(model)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def our_loss(ids, labels):
    """The pretraining module's loss (harness.pretrain): MLM logits at the masked positions only, taken in fp32."""

    def loss_of(model):
        out = model(ids, None, None, labels)
        return F.cross_entropy(out.mlm_logits.float(), out.mlm_targets)

    return loss_of


def hf_loss(ids, labels):
    """RobertaForMaskedLM as a user trains it: every position projected to the vocabulary, loss from `labels`."""
    return lambda model: model(input_ids=ids, labels=labels).loss


def hf_model(model: MaskedLM, device: str):
    """transformers' RobertaForMaskedLM with our weights (harness.export) on `device`; attention through SDPA."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from harness.export import to_hf

    return to_hf(model).to(device)


def adamw(model, device: str) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-4, **speed.adamw_kwargs(device))


def _timed(step, n: int, device: str) -> list[float]:
    times = []
    for _ in range(n):
        speed.sync(device)
        t = time.perf_counter()
        step()
        speed.sync(device)
        times.append(time.perf_counter() - t)
    return times


# ---------------------------------------------------------------------------------------------------------------
# Sections


@contextlib.contextmanager
def _no_tf32():
    """fp32 as fp32: pretraining turns TF32 on for whatever still runs in fp32 (harness.pretrain.build_trainer)."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.set_float32_matmul_precision(saved[2])


def numerics(shape: Shape, device: str) -> tuple[dict, dict[str, bool]]:
    with _no_tf32():
        small = dataclasses.replace(shape, batch=4, seq=min(shape.seq, 128))
        model = ours(shape, device).eval()
        hf = hf_model(model, device).eval()
        ids, _ = batch(small, device, seed=1)
        mask = torch.ones_like(ids, dtype=torch.bool)
        mask[1, small.seq // 2:] = False  # one padded row: the attention mask path too
        ids = ids.masked_fill(~mask, PAD)
        with torch.no_grad():
            theirs = hf(input_ids=ids, attention_mask=mask.long()).logits[mask]  # (N, V) at real tokens
            mine = model(ids, mask).mlm_logits.view(small.batch, small.seq, -1)[mask]
        diff = float((mine - theirs).abs().max())
        del hf

        curves = {}
        for name, bf16 in (("fp32", False), ("bf16", True)):
            torch.manual_seed(0)
            m = ours(shape, device, dropout=0.0).train()  # no dropout: precision is the only difference
            opt = torch.optim.AdamW(m.parameters(), lr=1e-3, **speed.adamw_kwargs(device))
            sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(lr_factor, warmup=10, total=CURVE_STEPS))
            curve = []
            for k in range(CURVE_STEPS):
                b_ids, b_labels = batch(dataclasses.replace(shape, batch=min(shape.batch, 8)), device, seed=100 + k,
                                        learnable=True)
                curve.append(float(train_step(our_loss(b_ids, b_labels), m, opt, device, bf16)()))
                sched.step()
            curves[name] = curve
            del m, opt
    rel = [abs(b - f) / f for f, b in zip(curves["fp32"], curves["bf16"])]
    result = {
        "fp32_vs_hf_max_abs_logit_diff": diff, "fp32_tolerance": FP32_LOGIT_TOL, "logit_shape": list(theirs.shape),
        "bf16_vs_fp32_max_rel_loss_diff": max(rel), "bf16_vs_fp32_mean_rel_loss_diff": statistics.fmean(rel),
        "bf16_tolerance": BF16_CURVE_TOL, "curve_steps": CURVE_STEPS,
        "fp32_loss_first_last": [round(curves["fp32"][0], 4), round(curves["fp32"][-1], 4)],
        "bf16_loss_first_last": [round(curves["bf16"][0], 4), round(curves["bf16"][-1], 4)],
        "curve_setting": "ours, dropout 0, AdamW peak lr 1e-3 (pretraining's schedule, 10 warmup steps), batch <= 8, "
                         "rows repeating a 4-token motif",
    }
    return result, {"numerics.fp32_matches_hf": diff <= FP32_LOGIT_TOL,
                    "numerics.bf16_curve_within_tolerance": max(rel) <= BF16_CURVE_TOL}


def _peak_memory(device: str, build):
    """Build a model and step it warm; returns (model, step, GiB this model's step held at its peak)."""
    if device != "cuda":
        model, step = build()
        _timed(step, 2, device)
        return model, step, None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    model, step = build()
    _timed(step, 3, device)
    return model, step, (torch.cuda.max_memory_allocated() - base) / 2**30


def throughput(shape: Shape, device: str, peak_flops: float, rounds: int = 5, per_round: int = 4) -> dict:
    ids, labels = batch(shape, device)

    def build_ours():
        m = ours(shape, device).train()
        return m, train_step(our_loss(ids, labels), m, adamw(m, device), device)

    def build_hf():
        m = hf_model(ours(shape, "cpu"), device).train()  # built on the CPU: no extra GPU copy
        return m, train_step(hf_loss(ids, labels), m, adamw(m, device), device)

    model, step, mem = _peak_memory(device, build_ours)
    hf, hstep, hf_mem = _peak_memory(device, build_hf)
    t_ours, t_hf = [], []
    for _ in range(rounds):  # interleaved: a slow moment slows both
        t_ours += _timed(step, per_round, device)
        t_hf += _timed(hstep, per_round, device)
    tokens = shape.batch * shape.seq
    predicted = float((labels != IGNORE_INDEX).float().mean())
    flops, hf_flops = model.flops_per_token(shape.seq, predicted), model.flops_per_token(shape.seq, 1.0)
    tps, hf_tps = tokens / statistics.median(t_ours), tokens / statistics.median(t_hf)
    out = {
        "shape": dataclasses.asdict(shape), "batch_why": BATCH_WHY if device == "cuda" else "the rehearsal's",
        "tokens_per_step": tokens, "steps_timed_each": rounds * per_round,
        "ours_tokens_per_s": round(tps), "hf_tokens_per_s": round(hf_tps), "speedup_vs_hf": round(tps / hf_tps, 3),
        "ours_flops_per_token": flops, "hf_flops_per_token": hf_flops,
        "hf_attn_implementation": hf.config._attn_implementation,
        "ours_peak_gib": mem and round(mem, 2), "hf_peak_gib": hf_mem and round(hf_mem, 2),
        "precision": "bf16 autocast, fp32 master weights and loss; fused AdamW for both" if device == "cuda"
        else "bf16 autocast on CPU (rehearsal)",
    }
    if device != "cuda":  # a CPU without bf16 units emulates it: its small bf16 matmul is no peak for this run
        out["mfu"] = "not computed in the rehearsal"
        return out
    for who, rate, per_token in (("ours", tps, flops), ("hf", hf_tps, hf_flops)):
        out[f"{who}_mfu_vs_measured"] = round(rate * per_token / peak_flops, 4)
        out[f"{who}_mfu_vs_nominal_989"] = round(rate * per_token / NOMINAL_H200_BF16, 4)
    return out


def compiled(shape: Shape, device: str, which: str, eager_tps: float) -> dict:
    """torch.compile of one model: the cold compile's seconds and the compiled step's tokens/s."""
    ids, labels = batch(shape, device)
    model = ours(shape, device).train() if which == "ours" else hf_model(ours(shape, "cpu"), device).train()
    opt = adamw(model, device)
    fn = torch.compile(model)
    step = train_step((our_loss if which == "ours" else hf_loss)(ids, labels), fn, opt, device)
    t = time.perf_counter()
    _timed(step, 2, device)  # the first call compiles; the second settles any recompile
    compile_s = time.perf_counter() - t
    times = _timed(step, 10, device)
    tps = shape.batch * shape.seq / statistics.median(times)
    return {"compile_s": round(compile_s, 1), "tokens_per_s": round(tps), "vs_eager": round(tps / eager_tps, 3)}


REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], log: Path) -> tuple[int, str]:
    """`python -m ...` from this checkout (repository on PYTHONPATH), its output appended to `log` and returned."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", *cmd]
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        f.write(p.stdout)
    return p.returncode, p.stdout


def real_path(out: Path, workdir: Path, device: str) -> tuple[dict, dict[str, bool]]:
    """Table 2's smoke grid and its table, as `make ablation-nsp SCALE=smoke` runs them, with W&B disabled."""
    log = out / "grid.log"
    log.write_text("")
    t = time.perf_counter()
    rc, _ = _run(["harness", "grid", "run", str(REPO / "experiments/table2_nsp.yaml"), "--scale", "smoke",
                  "--wandb", "disabled", "--runs-dir", str(workdir)], log)
    grid_s = time.perf_counter() - t
    folder = workdir / "table2_nsp-smoke"
    rc_report, table = _run(["analysis", "report", str(folder)], log)
    (out / "table2_smoke.md").write_text(table)
    cells = []
    for result in sorted(folder.glob("*/seed_*/result.json")):
        system = read_json(result.parent / "system.json")
        cells.append({"cell": f"{result.parent.parent.name}/{result.parent.name}",
                      "status": read_json(result)["status"],
                      "accelerator": system["accelerator"], "precision": system["precision"]})
    wandb_dirs = list(folder.glob("*/seed_*/wandb"))
    result = {"grid_exit": rc, "report_exit": rc_report, "grid_s": round(grid_s, 1), "cells": cells,
              "wandb_folders": len(wandb_dirs), "table": "table2_smoke.md", "log": "grid.log"}
    ok = rc == 0 and rc_report == 0 and len(cells) == 8 and all(c["status"] == "finished" for c in cells)
    checks = {"real_path.grid_and_table": ok, "real_path.no_wandb": not wandb_dirs}
    if device == "cuda":  # train.precision=auto must have chosen the GPU and bf16-mixed for every cell
        checks["real_path.gpu_bf16_mixed"] = bool(cells) and all(
            c["accelerator"] == "gpu" and c["precision"] == "bf16-mixed" for c in cells)
    return result, checks


def ddp(out: Path, workdir: Path) -> tuple[dict, dict[str, bool]]:
    n = torch.cuda.device_count()
    if n < 2:
        why = "one GPU visible" if n == 1 else "no GPU (rehearsal); tests/test_ddp.py covers DDP on CPU (gloo)"
        return {"skipped": why}, {}
    rc, _ = _run(["harness", "pretrain", "--config", str(REPO / "configs/tiny.yaml"),
                  "train.devices=2", "optim.batch_size=16", "optim.micro_batch_size=8", "optim.max_steps=30",
                  "train.wandb=disabled", "train.study=gpu-check-ddp", f"train.runs_dir={workdir}"],
                 out / "grid.log")
    return {"gpus": n, "exit": rc}, {"ddp.two_gpu_cell": rc == 0}


# ---------------------------------------------------------------------------------------------------------------
# Report


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif not isinstance(v, list):
            out[f"{prefix}{k}"] = f"{v:.4g}" if isinstance(v, float) else v
    return out


def summary(data: dict) -> str:
    env = data["sections"].get("environment", {})
    where = ", ".join(env.get("gpus") or []) or env.get("cpu", "?")
    head = "REHEARSAL on CPU at tiny shapes (no GPU here): the figures test the script, not a GPU" \
        if data["rehearsal"] else f"on {where}"
    failed = [k for k, v in data["checks"].items() if not v]
    lines = [f"# gpu-check {data['when']}", "", head, "",
             f"checks: {'FAILED: ' + ', '.join(failed) if failed else 'all passed'}",
             f"wall: {data.get('wall_s')} s of a {data['budget_s']} s budget", ""]
    for k, v in data["checks"].items():
        lines.append(f"- [{'x' if v else ' '}] {k}")
    for name, section in data["sections"].items():
        lines += ["", f"## {name}", "", "| | |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in _flat(section).items()]
    return "\n".join(lines) + "\n"


def run(out: Path, sections: tuple[str, ...], budget_s: float) -> bool:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shape = GPU_SHAPE if device == "cuda" else CPU_SHAPE
    report = Report(out, rehearsal=device == "cpu", budget_s=budget_s)
    if device == "cpu":
        print("[gpu-check] no CUDA here: a REHEARSAL at tiny shapes on the CPU (no compile)", flush=True)
        torch.set_num_threads(1)  # tiny ops: a second thread only waits for cores other processes hold
    torch.manual_seed(0)
    workdir = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        report.section("environment", environment(device))
        peak_flops = None
        if "peak" in sections or "throughput" in sections:
            p = peak(device)
            peak_flops = p["measured_bf16_flops"]
            report.section("peak", p)
        if "numerics" in sections:
            report.section("numerics", *numerics(shape, device))
        eager = None
        if "throughput" in sections:
            eager = throughput(shape, device, peak_flops)
            report.section("throughput", eager)
        if "real_path" in sections:
            report.section("real_path", *real_path(out, workdir, device))
        if "ddp" in sections:
            report.section("ddp", *ddp(out, workdir))
        if "compile" in sections:
            results = {}
            for which in ("ours", "hf"):
                if device != "cuda":
                    results[which] = "skipped: no compile in the CPU rehearsal"
                elif eager is None:
                    results[which] = "skipped: needs the throughput section"
                elif report.left_s() < COMPILE_RESERVE_S:
                    results[which] = f"skipped: {report.left_s():.0f} s left of the budget, < {COMPILE_RESERVE_S} s"
                else:
                    try:
                        results[which] = compiled(shape, device, which, eager[f"{which}_tokens_per_s"])
                    except Exception as e:  # a compiler failure is a finding to report, not a crash
                        results[which] = f"failed: {type(e).__name__}: {str(e)[:300]}"
                report.section("compile", results)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"[gpu-check] {'all checks passed' if report.passed else 'SOME CHECKS FAILED'}; "
          f"report in {out}/gpu_check.md", flush=True)
    return report.passed


def gpu_check_from_cli(args: argparse.Namespace) -> int:
    from harness.errors import UserError

    sections = tuple(s.strip() for s in args.sections.split(",") if s.strip())
    for s in sections:
        if s not in SECTIONS:
            raise UserError(f"--sections: expected names from {list(SECTIONS)}, got {s!r}")
    out = Path(args.out or os.environ.get("OUT") or "runs/gpu-check")
    if not math.isfinite(args.budget_s) or args.budget_s <= 0:
        raise UserError(f"--budget-s: expected a positive number of seconds, got {args.budget_s}")
    return 0 if run(out, sections, args.budget_s) else 1
