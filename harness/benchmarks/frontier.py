"""The learning frontier on this machine: which demo designs get past MLM's early plateau in the fewest CPU-minutes.

Each candidate is configs/demo.yaml plus a few overrides, trained exactly as `pretrain` trains (the real module,
data module and Trainer) in a process of its own on one thread, two candidates at a time (one per core, as
`grid run --workers 2` runs cells). Every `val_every` steps the yardstick is scored (harness.data.yardstick), and
a callback notes the process's CPU-seconds spent training (validation excluded), so each candidate gives a curve of
ratio = yardstick ppl / unigram ppl against CPU-minutes and tokens. CPU-seconds of a one-thread process are what a
run costs whatever else the machine does; a neighbour still slows them a little (shared caches), so the table also
gives tokens, which nothing distorts.

`python -m harness bench --sections frontier` (make bench-frontier) runs the candidates not yet in
runs/frontier/ (delete a candidate's folder to rerun it), writes the curves into the bench report, a table
(runs/frontier/frontier.md) and a plot (docs/frontier.png), then times one cell on 2 threads against two cells on
1 thread each (`thread_layout`; FRONTIER_THREADS=0 skips it). Designs are chosen on reference arms' curves only
(FULL-SENTENCES, then each table's reference arm), never on a comparison between arms. `FRONTIER=name,name` runs
only those candidates.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as L

OUT = Path("runs/frontier")
PLOT = Path("docs/frontier.png")
BASE = "configs/demo.yaml"
CHECKPOINTS_MIN = (2, 4, 6, 8)  # table columns: the ratio reached within this many training CPU-minutes
# What every candidate shares unless it overrides it (pinned here, so that the demo config's own choices do not leak
# in): the reference run (tiny, batch 16, dropout 0, post-LN, LR 1e-3) with the log-unigram output bias.
COMMON = {"model.preset": "tiny", "model.max_positions": 128, "model.dropout": 0.0, "model.norm": "post",
          "model.position_init": "normal", "model.output_bias_init": "unigram", "data.mask_prob": 0.15,
          "optim.batch_size": 16, "optim.micro_batch_size": 16, "optim.warmup_steps": 100, "optim.decay_fraction": 1.0,
          "train.val_every": 250, "train.log_every": 50, "train.num_workers": 0, "train.wandb": "disabled"}
WSD = {"optim.max_steps": 4000, "optim.warmup_steps": 100, "optim.decay_fraction": 0.2}  # warmup-stable-decay
NSP_OFF = "diagnostic.nsp_loss_off"  # not a config field: train_candidate drops the NSP head from the loss
DEMO = {"data.mask_prob": 0.4, "model.position_init": "sinusoidal", "optim.decay_fraction": 0.2}  # demo.yaml's
T2 = {**DEMO, "data.input_format": "segment_pair_nsp", "optim.max_steps": 3600}  # Table 2's reference arm
SEQ64 = {"data.max_seq_len": 64, "optim.batch_size": 32, "optim.micro_batch_size": 32}  # ~the tokens of 16 x 128
# name -> (the lever it moves, overrides on COMMON). Order: the pairs run in this order, two at a time.
CANDIDATES: dict[str, tuple[str, dict]] = {
    "linear-1e-3": ("schedule: the paper's linear decay over the whole run",
                    {"optim.peak_lr": 1e-3, "optim.max_steps": 4000, "optim.warmup_steps": 100}),
    "wsd-1e-3": ("schedule: hold the peak, decay over the last 20%", {**WSD, "optim.peak_lr": 1e-3}),
    "wsd-decay50": ("decay over the last 50% instead of 20%",
                    {**WSD, "optim.peak_lr": 1e-3, "optim.decay_fraction": 0.5}),
    "wsd-bs32": ("batch 32 x 2000 steps (the same tokens)",
                 {**WSD, "optim.peak_lr": 1e-3, "optim.batch_size": 32, "optim.micro_batch_size": 32,
                  "optim.max_steps": 2000, "train.val_every": 125}),
    "wsd-5e-4": ("peak LR 5e-4", {**WSD, "optim.peak_lr": 5e-4}),
    "wsd-2e-3": ("peak LR 2e-3", {**WSD, "optim.peak_lr": 2e-3}),
    "wsd-mask40": ("mask rate 40% (Wettig et al. 2023)", {**WSD, "optim.peak_lr": 1e-3, "data.mask_prob": 0.4}),
    "wsd-mask60": ("mask rate 60%", {**WSD, "optim.peak_lr": 1e-3, "data.mask_prob": 0.6}),
    "wsd-pre-3e-3": ("pre-LN at peak LR 3e-3", {**WSD, "optim.peak_lr": 3e-3, "model.norm": "pre"}),
    "wsd-bs8": ("batch 8 x 8000 steps (the same tokens)",
                {**WSD, "optim.peak_lr": 1e-3, "optim.batch_size": 8, "optim.micro_batch_size": 8,
                 "optim.max_steps": 8000, "train.val_every": 500}),
    "wsd-zero-bias": ("output bias from zero (BERT) instead of log-unigram",
                      {**WSD, "optim.peak_lr": 1e-3, "model.output_bias_init": "zero"}),
    "wsd-sinusoidal": ("positions start as sinusoids", {**WSD, "optim.peak_lr": 1e-3,
                                                         "model.position_init": "sinusoidal"}),
    "wsd-L4": ("4 layers (L4 H128), 2400 steps for about the same CPU time",
               {**WSD, "optim.peak_lr": 1e-3, "model.preset": "custom", "model.n_layers": 4, "model.hidden": 128,
                "model.n_heads": 2, "optim.max_steps": 2400}),
    "wsd-mini": ("the mini encoder (L4 H256), 1200 steps for about the same CPU time",
                 {**WSD, "optim.peak_lr": 1e-3, "model.preset": "mini", "optim.max_steps": 1200,
                  "train.val_every": 100}),
    # The demo design itself (configs/demo.yaml) on each table's reference arm, at the table's demo steps:
    "demo-t2-reference": ("Table 2's reference arm (SEGMENT-PAIR+NSP) at its demo design", T2),
    "demo-t1-reference": ("Table 1's first demo design: static masks, SEGMENT-PAIR+NSP, 180K-token subset (replaced "
                          "by t1-full-500k-4masks)",
                          {**T2, "data.masking": "static", "data.data_tokens": 180000, "optim.max_steps": 4000}),
    "demo-t2-reference-long": ("Table 2's reference arm at the demo design for 12,000 steps: when does it leave?",
                               {**T2, "optim.max_steps": 12000, "train.val_every": 500}),
    # Why the NSP arms stay on the plateau: the same arm without its NSP loss, and a format without NSP.
    "diag-nsp-off": ("diagnostic: SEGMENT-PAIR at the demo design with the NSP loss weighted 0, 2,000 steps",
                     {**T2, "optim.max_steps": 2000, NSP_OFF: True}),
    "diag-doc": ("DOC-SENTENCES at the demo design, 2,000 steps",
                 {**DEMO, "data.input_format": "doc_sentences", "optim.max_steps": 2000}),
    # Table 2's reference arm (SEGMENT-PAIR+NSP) at the demo design and 3,600 steps, with one lever moved each: which
    # gets the paper's baseline format off the plateau, where FULL-SENTENCES already leaves it?
    "t2-heads4": ("Table 2's reference arm, 4 attention heads of 32 instead of 2 of 64",
                  {**T2, "model.n_heads": 4}),
    "t2-pre-2e-3": ("Table 2's reference arm, pre-LN at peak LR 2e-3 (cramming)",
                    {**T2, "model.norm": "pre", "optim.peak_lr": 2e-3}),
    "t2-bs32": ("Table 2's reference arm, batch 32 x 1,800 steps (same tokens, twice the NSP pairs a step)",
                {**T2, "optim.batch_size": 32, "optim.micro_batch_size": 32, "optim.max_steps": 1800,
                 "train.val_every": 125}),
    "t2-seq64": ("Table 2's reference arm, 64-token sequences, batch 32 (its yardstick: 64-token windows)",
                 {**T2, **SEQ64}),
    "t2-seq64-bs16": ("Table 2's reference arm, 64-token sequences, batch 16 (half the tokens; 64-token yardstick)",
                      {**T2, "data.max_seq_len": 64}),
    # Table 1's reference arm (static masks) on FULL-SENTENCES, since SEGMENT-PAIR+NSP does not leave the plateau in
    # the table's budget (above): a subset seen ~4 times per static mask, as the paper's 10 masks over 40 epochs are.
    "t1-full-500k-4masks": ("Table 1's reference arm on FULL-SENTENCES: static, 4 masks, 500K-token subset (13 epochs)",
                            {**DEMO, "data.masking": "static", "data.static_masks": 4, "data.data_tokens": 500000,
                             "optim.max_steps": 4000}),
    "t1-full-1m-2masks": ("Table 1's reference arm on FULL-SENTENCES: static, 2 masks, 1M-token subset (7 epochs)",
                          {**DEMO, "data.masking": "static", "data.static_masks": 2, "data.data_tokens": 1000000,
                           "optim.max_steps": 4000}),
    # The arms of Tables 3 and 4 that the demo design puts nearest the plateau, each at its table's demo setting:
    "demo-t3-bs128": ("Table 3's middle arm: batch 128 x 720 steps, peak LR 2e-3, warmup 36 (~9.7M tokens)",
                      {**DEMO, "optim.batch_size": 128, "optim.micro_batch_size": 128, "optim.max_steps": 720,
                       "optim.peak_lr": 2e-3, "optim.warmup_steps": 36, "train.val_every": 60}),
    "demo-t3-bs512": ("Table 3's largest arm: batch 512 x 180 steps, peak LR 3e-3, warmup 9 (~9.7M tokens)",
                      {**DEMO, "optim.batch_size": 512, "optim.micro_batch_size": 128, "optim.max_steps": 180,
                       "optim.peak_lr": 3e-3, "optim.warmup_steps": 9, "train.val_every": 20}),
    "demo-t4-small": ("Table 4's reference arm: 1,600 steps over a 160K-token subset (~16 epochs)",
                      {**DEMO, "data.data_tokens": 160000, "optim.max_steps": 1600, "train.val_every": 200}),
    "t1-sp-seq64": ("Table 1's reference arm on the paper's SEGMENT-PAIR+NSP at Table 2's 64 x 32: static, 4 masks, "
                    "500K-token subset",
                    {**T2, **SEQ64, "data.masking": "static", "data.static_masks": 4, "data.data_tokens": 500000}),
    "wsd-seq64": ("64-token sequences, batch 32 (its yardstick has 64-token windows: not comparable)",
                  {**WSD, "optim.peak_lr": 1e-3, **SEQ64}),
}


class CpuClock(L.Callback):
    """CPU-seconds of this process spent training (validation excluded), written with the step to cpu.csv after
    every validation."""

    def __init__(self, path: Path):
        self.path, self.excluded, self.start, self.paused = path, 0.0, 0.0, 0.0
        path.write_text("step,train_cpu_s\n")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.process_time()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.paused = time.process_time()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = time.process_time()
        self.excluded += now - self.paused
        with open(self.path, "a") as f:
            f.write(f"{trainer.global_step},{now - self.excluded - self.start:.2f}\n")


def train_candidate(name: str) -> None:
    """One candidate, in this process, on one thread (called in a child process by `run`)."""
    import torch

    from harness.config import load_config
    from harness.pretrain import pretrain

    torch.set_num_threads(1)
    overrides = dict(CANDIDATES[name][1])
    if overrides.pop(NSP_OFF, False):  # the model keeps its NSP head (and segments); only its loss is left out
        _without_nsp_loss()
    values = {**COMMON, **overrides, "train.study": "frontier", "train.arm": name, "train.runs_dir": "runs"}
    cfg = load_config(BASE, [f"{k}={v}" for k, v in values.items()])
    run_dir = OUT / name / "seed_0"
    run_dir.mkdir(parents=True, exist_ok=True)
    pretrain(cfg, callbacks=(CpuClock(run_dir / "cpu.csv"),))


def _without_nsp_loss() -> None:
    """Diagnostic: PretrainModule's loss as if the model had no NSP head (it still has one, and segment embeddings)."""
    from harness.pretrain import PretrainModule

    loss = PretrainModule._loss

    def mlm_only(self, batch, sums, n_predicted=None, n_sequences=None):
        head, self.model.nsp_head = self.model.nsp_head, None
        try:
            return loss(self, batch, sums, n_predicted, n_sequences)
        finally:
            self.model.nsp_head = head

    PretrainModule._loss = mlm_only


def curve(name: str) -> list[dict]:
    """[{step, tokens, cpu_min, ratio}] at each validation of a finished candidate."""
    run_dir = OUT / name / "seed_0"
    result = json.loads((run_dir / "result.json").read_text())
    unigram = result["yardstick_unigram_ppl"]
    cpu = {int(r["step"]): float(r["train_cpu_s"]) for r in csv.DictReader(open(run_dir / "cpu.csv"))}
    tokens, points = {}, []
    for row in csv.DictReader(open(run_dir / "metrics.csv")):
        if row.get("train/tokens"):
            tokens[int(row["step"])] = int(float(row["train/tokens"]))
        if row.get("val/yardstick_ppl") and int(row["step"]) in cpu:
            step = int(row["step"])
            points.append({"step": step, "tokens": tokens.get(step, 0), "cpu_min": round(cpu[step] / 60, 2),
                           "ratio": round(float(row["val/yardstick_ppl"]) / unigram, 4)})
    return points


def _at(points: list[dict], minutes: float) -> float | None:
    """The ratio of the last validation within `minutes` CPU-minutes (None if the run ended before them)."""
    if not points or points[-1]["cpu_min"] < minutes * 0.97:
        return None
    within = [p["ratio"] for p in points if p["cpu_min"] <= minutes * 1.03]
    return min(within[-1:] or [None])


def table(curves: dict[str, list[dict]]) -> str:
    head = " | ".join(f"{m} min" for m in CHECKPOINTS_MIN)
    lines = [f"| candidate | lever | {head} | end: ratio | steps | tokens | CPU-min | tokens/CPU-s |",
             "|---|---|" + "---|" * len(CHECKPOINTS_MIN) + "---|---|---|---|---|"]
    for name, points in curves.items():
        end = points[-1]
        at = " | ".join("" if (r := _at(points, m)) is None else f"{r:.3f}" for m in CHECKPOINTS_MIN)
        speed = end["tokens"] / max(end["cpu_min"] * 60, 1e-9)
        lines.append(f"| {name} | {CANDIDATES[name][0]} | {at} | **{end['ratio']:.3f}** | {end['step']} | "
                     f"{end['tokens'] / 1e6:.1f}M | {end['cpu_min']:.1f} | {speed:,.0f} |")
    return "\n".join(lines)


def plot(curves: dict[str, list[dict]], bigram: float | None = None) -> None:
    """Ratio against CPU-minutes and tokens, one line per candidate; `bigram`: the left-bigram reference's ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    for name, points in curves.items():
        for ax, x in zip(axes, ("cpu_min", "tokens")):
            ax.plot([p[x] / (1e6 if x == "tokens" else 1) for p in points], [p["ratio"] for p in points],
                    marker=".", label=name)
    for ax, label in zip(axes, ("training CPU-minutes (one thread)", "tokens seen (millions)")):
        ax.axhline(1.0, color="grey", lw=0.8, ls="--", label="unigram (no context)")
        ax.axhline(0.9, color="grey", lw=0.8, ls=":", label="0.9: the signal threshold")
        if bigram:
            ax.axhline(bigram, color="black", lw=0.8, ls="-.", label="left-bigram count model")
        ax.set_xlabel(label)
        ax.set_ylim(0, 1.25)  # step 0 of a zero-bias run (~4.2) lies above
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("yardstick ppl / unigram ppl")
    axes[1].legend(fontsize=7)
    fig.suptitle("The learning frontier of the demo designs on the demo corpus (FULL-SENTENCES unless named; seed 0)")
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)


def thread_layout(steps: int = 400) -> dict:
    """Tokens per wall-second of the demo design (FULL-SENTENCES) as one cell on 2 threads, then as two cells at once
    on 1 thread each (their sum): which layout `grid run` should use on this machine. Training time only
    (result.json's train_time_s), so start-up and validation do not count. Needs a quiet machine."""
    import shutil

    def launch(name: str, threads: int) -> subprocess.Popen:
        shutil.rmtree(OUT / "threads" / name, ignore_errors=True)
        values = {"optim.max_steps": steps, "train.val_every": steps, "train.num_workers": 0,
                  "train.wandb": "disabled", "train.study": "frontier/threads", "train.arm": name}
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        return subprocess.Popen([sys.executable, "-m", "harness", "pretrain", "--config", BASE,
                                 *[f"{k}={v}" for k, v in values.items()]], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    def speed(name: str) -> float:
        result = json.loads((OUT / "threads" / name / "seed_0" / "result.json").read_text())
        return result["tokens_seen"] / result["train_time_s"]

    launch("one_cell_2_threads", 2).wait()
    pair = [launch(f"two_cells_1_thread_{i}", 1) for i in (0, 1)]
    for p in pair:
        p.wait()
    one = speed("one_cell_2_threads")
    two = sum(speed(f"two_cells_1_thread_{i}") for i in (0, 1))
    return {"steps": steps, "one_cell_2_threads_tokens_per_s": round(one), "two_cells_1_thread_tokens_per_s":
            round(two), "two_cells_vs_one": round(two / one, 2)}


def run() -> dict:
    wanted = [n for n in os.environ.get("FRONTIER", "").split(",") if n] or list(CANDIDATES)
    unknown = sorted(set(wanted) - set(CANDIDATES))
    if unknown:
        from harness.errors import UserError

        raise UserError(f"FRONTIER: unknown candidates {unknown}; expected names from {list(CANDIDATES)}")
    todo = [n for n in wanted if not (OUT / n / "seed_0" / "result.json").is_file()]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    running: list[subprocess.Popen] = []
    OUT.mkdir(parents=True, exist_ok=True)
    try:
        while todo or running:
            while todo and len(running) < 2:
                name = todo.pop(0)
                log = open(OUT / f"{name}.log", "w")
                print(f"frontier: training {name}", flush=True)
                running.append(subprocess.Popen([sys.executable, "-m", "harness.benchmarks.frontier", name], env=env,
                                                stdout=log, stderr=subprocess.STDOUT))
            time.sleep(2)
            for p in [p for p in running if p.poll() is not None]:
                running.remove(p)
                if p.returncode:
                    print(f"frontier: {p.args[-1]} failed; see {OUT / (p.args[-1] + '.log')}", flush=True)
    finally:
        for p in running:  # stopped by its PID, never by name
            p.terminate()
            p.wait()
    done = [n for n in CANDIDATES if (OUT / n / "seed_0" / "result.json").is_file()]
    curves = {n: curve(n) for n in done}
    text = table(curves)
    (OUT / "frontier.md").write_text(text + "\n")
    print(text)
    results = [json.loads((OUT / n / "seed_0" / "result.json").read_text()) for n in done]
    bigram = next((r["yardstick_bigram_ppl"] / r["yardstick_unigram_ppl"] for r in results
                   if r.get("yardstick_bigram_ppl")), None)
    plot(curves, bigram)
    layout = thread_layout() if os.environ.get("FRONTIER_THREADS", "1") != "0" else None
    print(f"threads: {layout}")
    return {"curves": curves, "table": str(OUT / "frontier.md"), "plot": str(PLOT), "threads": layout}


if __name__ == "__main__":
    train_candidate(sys.argv[1])
