"""`grid plan`: what a grid costs before anything is submitted. Per scale: its cells, their tokens and FLOPs (tuning
trials, pretraining and fine-tuning), GPU-hours on A100 and H100 SXM at a stated MFU, the SLURM resources each array
task would request with the exact submitit parameters and #SBATCH lines, and warnings for fine-tuning data that this
machine cannot reach (where `grid run` stops with an error, the preview only warns).

Nothing is prepared, recorded or submitted, so a paper-scale file is priced on a machine that has no corpus at that
scale. Every figure is therefore computed from the configs alone (analytically), never from data:
  - steps: optim.max_steps, as the config states them (exact);
  - tokens per step: optim.batch_size x data.max_seq_len, an upper bound: every sequence full. `grid run`'s plan
    (harness.grid.plan) measures the real mean on the prepared data; FULL-SENTENCES stops a sequence at a sentence
    boundary, so it falls a little short of max_seq_len, and the other formats are filled to the same mean;
  - a tuning trial: its arm's steps up to tune.tokens (rounded up to a whole step), the whole run without a budget;
    an upper bound too, as a pruned trial stops earlier;
  - fine-tuning, per fine-tuned init (the random-init baseline arms fine-tune twice), task, seed and (LR, batch size)
    of the protocol: `epochs` passes over the training examples and a forward pass over dev after each, every input
    counted at the protocol's max_seq_len (an upper bound: a batch is padded only to its longest input); example
    counts are the official sets' (EXAMPLES), or the offline stand-in's where `grid run` would use it;
  - FLOPs: tokens x `MaskedLM.flops_per_token`, the count the training MFU is logged with; for fine-tuning the same
    formula at every position and without the vocabulary projection. Validation during pretraining is left out
    (forward passes over a held-out split whose size is your corpus's).
GPU-hours = FLOPs / (bf16 dense peak x MFU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from harness.cluster import slurm_preview
from harness.config import ModelConfig, read_yaml
from harness.errors import UserError
from harness.grid.experiment import Experiment, load_experiment

PEAK_FLOPS = {"A100": 312e12, "H100 SXM": 989e12}  # bf16 dense tensor-core peaks (NVIDIA data sheets)
# The MFU assumed for GPU-hours. No GPU has measured ours yet (README, Performance), so it is stated, not measured:
# tuned training of large transformers reaches 46% of the bf16 peak (PaLM 540B, Chowdhery et al. 2022) to 52%
# (Megatron-LM at 1T parameters, Narayanan et al. 2021), on matmuls thousands wide. BERT-base/large are 768-1024 wide
# at 512 tokens: smaller matmuls, proportionally more attention, LayerNorm, GELU and optimizer work (none of it in
# `flops_per_token`'s count), and a gradient all-reduce that a 355M model hides less well; hence 35%, below those.
# `grid plan --mfu` takes a measured figure instead (`train/mfu` in a run's metrics.csv, or `make gpu-check`).
MFU = 0.35
# Official (train, dev) examples per task (the HF datasets' split sizes: glue, squad, squad_v2, race/all), and the
# offline stand-ins' (harness.finetune.standins: 12,752 / 5,381 / 2,125 texts, 10% held out as dev).
EXAMPLES = {
    "sst2": (67_349, 872), "cola": (8_551, 1_043), "mnli": (392_702, 9_815), "mnli_mm": (392_702, 9_832),
    "qnli": (104_743, 5_463), "qqp": (363_846, 40_430), "rte": (2_490, 277), "mrpc": (3_668, 408),
    "stsb": (5_749, 1_500), "squad1": (87_599, 10_570), "squad2": (130_319, 11_873), "race": (87_866, 4_887),
    "rt_sentiment": (11_477, 1_275), "trec6": (4_858, 523), "bbc_news": (1_910, 215),
    # built from the held-out documents of the run's corpus (harness.finetune.built): the demo corpus's counts
    "gap_sentence": (3_627, 1_202), "sentence_relation": (10_904, 3_606),
}
# Encoder inputs per example: RACE scores each of its 4 options as its own sequence. A SQuAD context longer than one
# window gives several; at 512 tokens nearly all fit in one, so QA counts one (slightly under).
SEQUENCES_PER_EXAMPLE = {"race": 4, "gap_sentence": 4}
KINDS = ("tuning", "pretraining", "fine-tuning")


@dataclass(frozen=True)
class Part:
    """One kind of work of one arm: `cells` alike, each of `tokens` tokens and `flops` FLOPs."""

    kind: str  # one of KINDS
    arm: str
    cells: int  # tuning trials or seeds; fine-tuning runs inside each seed's cell
    tokens: float
    flops: float
    how: str  # how the tokens were counted


def flops_per_token(model: ModelConfig, seq_len: int, vocab_size: int, predicted: float, nsp: bool) -> float:
    """`MaskedLM.flops_per_token` from the config alone: the formula reads only the model settings, the vocabulary
    size and NSP, so it runs on a stand-in object instead of a model of hundreds of millions of weights."""
    from harness.model import MaskedLM

    return MaskedLM.flops_per_token(SimpleNamespace(cfg=model, vocab_size=vocab_size, nsp=nsp), seq_len, predicted)


def pretrain_parts(exp: Experiment) -> list[Part]:
    """Tuning trials (arms x tune.trials, where the scale tunes) and seed runs (arms x seeds)."""
    parts = []
    for arm in exp.arms:
        cfg = exp.config(arm, exp.seeds[0], "runs")
        d, o = cfg.data, cfg.optim
        per_step = o.batch_size * d.max_seq_len
        fpt = flops_per_token(cfg.model, d.max_seq_len, d.vocab_size, d.mask_prob, d.nsp)
        if exp.tune.trials and exp.nuisance:  # as prepare_study: no search space, no trials
            steps = min(o.max_steps, math.ceil(exp.tune.tokens / per_step)) if exp.tune.tokens else o.max_steps
            parts.append(Part("tuning", arm.name, exp.tune.trials, steps * per_step, steps * per_step * fpt,
                              f"{steps:,} steps x {o.batch_size:,} seq x {d.max_seq_len}"))
        tokens = o.max_steps * per_step
        parts.append(Part("pretraining", arm.name, len(exp.seeds), tokens, tokens * fpt,
                          f"{o.max_steps:,} steps x {o.batch_size:,} seq x {d.max_seq_len}"))
    return parts


def finetune_parts(exp: Experiment, data_dir: str | None) -> list[Part]:
    """Per arm and task: the fine-tuning inside each of the arm's seed cells (cells = seeds)."""
    if not exp.finetune_tasks:
        return []
    from harness.finetune.protocol import load_protocol

    protocol = load_protocol(exp.finetune_protocol)
    baselines = set(exp.random_init_baselines.values())
    parts = []
    for arm in exp.arms:
        cfg = exp.config(arm, exp.seeds[0], "runs")
        inits = 2 if arm.name in baselines else 1
        for task in exp.finetune_tasks:
            p = protocol.for_task(task)
            data = finetune_data(task, data_dir)
            train, dev = EXAMPLES[data]
            train, dev = min(train, p.max_train_examples or train), min(dev, p.max_dev_examples or dev)
            seq = min(p.max_seq_len, cfg.model.max_positions)
            per_example = SEQUENCES_PER_EXAMPLE.get(data, 1) * seq
            fits = len(p.grid()) * p.seeds * inits  # configurations x seeds x inits
            train_tokens, dev_tokens = (fits * p.epochs * n * per_example for n in (train, dev))
            fpt = flops_per_token(cfg.model, seq, 0, 1.0, False)  # every position; no vocabulary projection
            name = task if data == task else f"{task} (stand-in {data})"
            parts.append(Part("fine-tuning", arm.name, len(exp.seeds), train_tokens + dev_tokens,
                              (train_tokens + dev_tokens / 3) * fpt,  # dev: forward only
                              f"{name}: ({len(p.grid())} configs x {p.seeds} seeds x {inits} inits) x "
                              f"{p.epochs} epochs x ({train:,} + {dev:,} dev) x {per_example}"))
    return parts


def finetune_data(task: str, data_dir: str | None) -> str:
    """The data a task fine-tunes on, as `grid run` chooses it: without --data-dir its stand-in where it has one."""
    from harness.finetune.tasks import get_task

    spec = get_task(task)
    return spec.standin if data_dir is None and spec.standin is not None else task


def data_warnings(exp: Experiment, data_dir: str | None) -> list[str]:
    """What `grid run`'s check_data_dir would refuse, one warning per task, plus where a stand-in replaces a task."""
    from harness.finetune.tasks import check_files, get_task

    out = []
    if exp.finetune_tasks and data_dir == "hf":
        return ["--data-dir hf: HF datasets' local cache is not checked here; `grid run` reads it on each worker"]
    if data_dir is not None and exp.finetune_tasks and not Path(data_dir).is_dir():
        return [f"--data-dir {data_dir}: not a folder on this machine; `grid run` here would stop with exit 2"]
    for task in exp.finetune_tasks:
        spec = get_task(task)
        if data_dir is None and spec.standin is None:
            out.append(f"{task}: no offline stand-in and no --data-dir: `grid run` would stop with exit 2; give "
                       f"--data-dir DIR with {' and '.join(spec.files)} (counted above at the official size)")
        elif data_dir is None and spec.standin != task:
            out.append(f"{task}: without --data-dir it fine-tunes on its stand-in {spec.standin} (counted so)")
        elif data_dir is not None:
            try:
                check_files(spec, Path(data_dir).resolve())
            except UserError as e:
                out.append(f"{e}; `grid run` would stop with exit 2")
    return out


def _hours(flops: float, peak: float, mfu: float) -> float:
    return flops / (peak * mfu) / 3600


def _fmt(x: float) -> str:
    return f"{x:.3g}" if x < 1e5 else f"{x:.2e}"


def _num(x: float) -> str:
    """Hours or days: whole numbers with separators where large, three significant figures where small."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def scale_report(exp: Experiment, runs_dir: str, workers: int, slurm: dict, data_dir: str | None,
                 mfu: float) -> str:
    """The whole preview of one scale, as text."""
    parts = pretrain_parts(exp) + finetune_parts(exp, data_dir)
    cfg = exp.config(exp.arms[0], exp.seeds[0], runs_dir)
    m, d = cfg.model, cfg.data
    pretrain_fpt = flops_per_token(m, d.max_seq_len, d.vocab_size, d.mask_prob, d.nsp)
    lines = [f"== {exp.path} --scale {exp.scale}: {exp.folder}",
             f"model {m.preset} (L{m.n_layers} H{m.hidden} A{m.n_heads}), vocabulary {d.vocab_size:,}, "
             f"{d.max_seq_len} tokens per sequence, {d.mask_prob:.0%} predicted; FLOPs per token "
             f"(MaskedLM.flops_per_token): pretraining {_fmt(pretrain_fpt)}"
             + (f", fine-tuning {_fmt(flops_per_token(m, d.max_seq_len, 0, 1.0, False))} at {d.max_seq_len}"
                if exp.finetune_tasks else ""),
             "", _parts_table(parts), "", _totals_table(parts, mfu), ""]
    lines += _slurm_lines(exp, parts, runs_dir, workers, slurm, mfu)
    warnings = data_warnings(exp, data_dir)
    lines += ["", "warnings:" if warnings else "warnings: none", *(f"  - {w}" for w in warnings)]
    return "\n".join(lines)


def _parts_table(parts: list[Part]) -> str:
    width = max(len("arm"), *(len(p.arm) for p in parts))
    lines = ["per cell (analytic: from the configs, no data read; upper bounds, see harness/grid/cost.py):",
             f"{'kind':11}  {'arm':{width}}  {'cells':>5}  {'tokens/cell':>11}  {'FLOPs/cell':>10}  tokens counted as"]
    for p in parts:
        lines.append(f"{p.kind:11}  {p.arm:{width}}  {p.cells:>5}  {_fmt(p.tokens):>11}  {_fmt(p.flops):>10}  {p.how}")
    return "\n".join(lines)


def _totals_table(parts: list[Part], mfu: float) -> str:
    gpus = list(PEAK_FLOPS)
    head = f"{'total':11}  {'cells':>5}  {'tokens':>9}  {'FLOPs':>9}" + "".join(f"  {g + ' GPU-h':>15}" for g in gpus)
    lines = [f"in total (GPU-hours at {mfu:.0%} MFU of the bf16 dense peak: "
             + ", ".join(f"{g} {p / 1e12:.0f} TFLOP/s" for g, p in PEAK_FLOPS.items()) + "; --mfu to change):", head]
    rows = [(k, [p for p in parts if p.kind == k]) for k in KINDS] + [("all", parts)]
    for kind, ps in rows:
        if not ps:
            continue
        cells = sum(p.cells for p in ps if p.kind != "fine-tuning")
        tokens, flops = sum(p.cells * p.tokens for p in ps), sum(p.cells * p.flops for p in ps)
        cells_text = "(in)" if kind == "fine-tuning" else f"{cells}"
        lines.append(f"{kind:11}  {cells_text:>5}  {tokens:>9.2e}  {flops:>9.2e}"
                     + "".join(f"  {_num(_hours(flops, peak, mfu)):>15}" for peak in PEAK_FLOPS.values()))
    lines.append("cells: tuning trials and seed runs, as the store records them; each seed's fine-tuning runs inside "
                 "its cell (in)")
    if any(p.kind == "fine-tuning" for p in parts):
        lines.append("fine-tuning counts every input at the protocol's max_seq_len, an upper bound: batches are padded "
                     "only to their longest input, so short-input tasks (SST-2, MNLI pairs) cost several times less")
    return "\n".join(lines)


def _slurm_lines(exp: Experiment, parts: list[Part], runs_dir: str, workers: int, slurm: dict, mfu: float) -> list[str]:
    """The array `grid run --backend slurm` would submit, and how a cell fits the time limit it asks for."""
    folder = Path(runs_dir) / exp.folder
    params, script = slurm_preview(folder, workers, slurm)
    devices = max(exp.config(a, exp.seeds[0], runs_dir).train.devices for a in exp.arms)
    per_cell = {}  # arm -> GPU-hours of its longest cell on H100, pretraining and its fine-tuning together
    for p in parts:
        if p.kind != "tuning":
            per_cell[p.arm] = per_cell.get(p.arm, 0.0) + _hours(p.flops, PEAK_FLOPS["H100 SXM"], mfu)
    longest = max(per_cell.values())
    total = sum(p.cells * _hours(p.flops, PEAK_FLOPS["H100 SXM"], mfu) for p in parts)
    option = ",".join(f"{k}={v}" for k, v in slurm.items())
    lines = [f"SLURM (`grid run ... --backend slurm --workers {workers}" + (f" --slurm '{option}'" if option else "")
             + "`): one job array of "
             f"{workers} task(s), at most {workers} running; each task is one worker that runs one cell at a time on "
             f"train.devices = {devices} GPU(s), then claims the next, until none is left.",
             f"submitit: AutoExecutor(folder={str(folder / 'submitit')!r}, cluster='slurm').update_parameters("
             + ", ".join(f"{k}={v!r}" for k, v in params.items()) + f"); map_array over {workers} worker(s)",
             "sbatch script (as submitit writes it):",
             *(f"  {line}" for line in script.splitlines() if line.startswith(("#SBATCH", "srun"))),
             f"longest cell: ~{_num(longest)} GPU-hours on H100 SXM, pretraining and fine-tuning (on {devices} GPU(s): "
             f"~{_num(longest / devices)} h); all cells on {workers} worker(s): at least "
             f"~{_num(total / (workers * devices) / 24)} days on H100 SXM"]
    gpus = slurm.get("gpus_per_node", slurm.get("slurm_gpus_per_node"))
    if gpus is None:
        lines.append(f"  note: --slurm asks for no GPU; add gpus_per_node={devices}")
    timeout = slurm.get("timeout_min", slurm.get("slurm_time"))
    if timeout is None:
        lines.append("  note: --slurm sets no timeout_min: submitit's default limit is 5 minutes (#SBATCH --time=5)")
    if timeout and longest / devices * 60 > timeout:
        lines.append(f"  note: a cell outlasts timeout_min={timeout} about {longest / devices * 60 / timeout:.0f}x: "
                     f"it is requeued (submitit) and resumes from its last checkpoint each time")
    return lines


def scales_of(path: str) -> list[str]:
    """Every scale the file defines, in its order."""
    raw = read_yaml(Path(path), "experiment file")
    scales = raw.get("scales")
    if not isinstance(scales, dict) or not scales:
        raise UserError(f"{path}: scales: expected a mapping of scale names")
    return list(scales)


def plan_report(path: str, scale: str | None = None, runs_dir: str = "runs", workers: int = 1,
                slurm: dict | None = None, data_dir: str | None = None, mfu: float | None = None) -> str:
    """`grid plan`: the preview of one scale, or of every scale of the file; reads configs only."""
    mfu = MFU if mfu is None else mfu
    if not 0 < mfu <= 1:
        raise UserError(f"--mfu: expected a fraction in (0, 1], got {mfu}")
    reports = []
    for s in [scale] if scale else scales_of(path):
        reports.append(scale_report(load_experiment(path, s), runs_dir, workers, slurm or {}, data_dir, mfu))
    return ("grid plan: a cost preview; nothing is prepared, recorded or submitted\n\n" + "\n\n".join(reports))

