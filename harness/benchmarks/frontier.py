"""The learning frontier on this machine: which demo designs get past MLM's early plateau in the fewest CPU-minutes.

Each candidate is configs/demo.yaml plus a few overrides, trained exactly as `pretrain` trains (the real module,
data module and Trainer) in a process of its own on one thread, two candidates at a time (one per core, as
`grid run --workers 2` runs cells). Every `val_every` steps the yardstick is scored (harness.data.yardstick), and
a callback notes the process's CPU-seconds spent training (validation excluded), so each candidate gives a curve of
ratio = yardstick ppl / unigram ppl against CPU-minutes and tokens. CPU-seconds of a one-thread process are what a
run costs whatever else the machine does; a neighbour still slows them a little (shared caches), so the table also
gives tokens, which nothing distorts.

`python -m harness bench --sections frontier` (make bench-frontier) runs the candidates not yet in
runs/frontier/ (delete a candidate's folder to rerun it), writes the curves into the bench report, a committed data
file (docs/frontier.json: per candidate its lever and its points), a table (runs/frontier/frontier.md) and a plot
(docs/frontier.png), then times one cell on 2 threads against two cells on 1 thread each (`thread_layout`;
FRONTIER_THREADS=0 skips it). `python -m harness.benchmarks.frontier --redraw` redraws the plot from
docs/frontier.json alone, without training. Designs are chosen on reference arms' curves only
(FULL-SENTENCES, then each table's reference arm), never on a comparison between arms. `FRONTIER=name,name` runs
only those candidates.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import NamedTuple

import lightning.pytorch as L

from harness.benchmarks.processes import two_at_a_time

OUT = Path("runs/frontier")
PLOT = Path("docs/frontier.png")
DATA = Path("docs/frontier.json")  # the curves the plot is drawn from, committed
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


class Panel(NamedTuple):
    """One row of the plot: the candidates that move one lever, against `baseline` (drawn grey: the run they change)."""

    title: str
    names: tuple[str, ...]
    baseline: str | None = None


# Every candidate in one panel, grouped by the lever it tests (the comments of CANDIDATES above).
PANELS = (
    Panel("Schedule and peak LR (FULL-SENTENCES, batch 16 x 4,000 steps)",
          ("wsd-1e-3", "linear-1e-3", "wsd-decay50", "wsd-5e-4", "wsd-2e-3")),
    Panel("Mask rate and initialisation (FULL-SENTENCES)",
          ("wsd-mask40", "wsd-mask60", "wsd-zero-bias", "wsd-sinusoidal"), baseline="wsd-1e-3"),
    Panel("Batch, norm, model shape and sequence length (FULL-SENTENCES)",
          ("wsd-bs8", "wsd-bs32", "wsd-pre-3e-3", "wsd-L4", "wsd-mini", "wsd-seq64"), baseline="wsd-1e-3"),
    Panel("Table 2's reference arm (SEGMENT-PAIR+NSP), one lever moved each",
          ("t2-seq64", "demo-t2-reference", "demo-t2-reference-long", "t2-heads4", "t2-pre-2e-3", "t2-bs32",
           "t2-seq64-bs16")),
    Panel("Table 1's reference arm (static masks over a subset)",
          ("t1-full-500k-4masks", "t1-full-1m-2masks", "demo-t1-reference", "t1-sp-seq64")),
    Panel("Tables 3 and 4: the arms nearest the plateau", ("demo-t3-bs128", "demo-t3-bs512", "demo-t4-small")),
    Panel("Diagnostics: why SEGMENT-PAIR+NSP stays on the plateau", ("diag-nsp-off", "diag-doc"),
          baseline="demo-t2-reference"),
)
# The demo's chosen design, drawn bold and labelled at its line's end: the candidates closest to configs/demo.yaml
# on FULL-SENTENCES, and each table's arm at the design its experiment file runs.
CHOSEN = {"wsd-1e-3": "demo schedule", "wsd-mask40": "demo design", "t2-seq64": "Table 2 ref.",
          "t1-sp-seq64": "Table 1 ref.", "demo-t3-bs128": "Table 3, b128", "demo-t3-bs512": "Table 3, b512",
          "demo-t4-small": "Table 4 ref."}


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
    """[{step, tokens, cpu_min, ratio}] at each validation of a finished candidate.

    Tokens are logged every train.log_every steps (and at the last), validations come every train.val_every: a
    validation step without a logged row (val_every 60 against log_every 50) takes its tokens by linear interpolation
    between the logged rows around it, from (0, 0), so the tokens never decrease along a curve."""
    import numpy as np

    run_dir = OUT / name / "seed_0"
    result = json.loads((run_dir / "result.json").read_text())
    unigram = result["yardstick_unigram_ppl"]
    cpu = {int(r["step"]): float(r["train_cpu_s"]) for r in csv.DictReader(open(run_dir / "cpu.csv"))}
    tokens, ratios = {0: 0}, {}
    for row in csv.DictReader(open(run_dir / "metrics.csv")):
        step = int(row["step"])
        if row.get("train/tokens"):
            tokens[step] = int(float(row["train/tokens"]))
        if row.get("val/yardstick_ppl") and step in cpu:
            ratios[step] = float(row["val/yardstick_ppl"]) / unigram
    logged = sorted(tokens)
    steps = sorted(ratios)
    at = np.interp(steps, logged, [tokens[s] for s in logged])
    return [{"step": s, "tokens": int(round(t)), "cpu_min": round(cpu[s] / 60, 2), "ratio": round(ratios[s], 4)}
            for s, t in zip(steps, at)]


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


def curves_data(curves: dict[str, list[dict]], results: dict[str, dict]) -> dict:
    """What docs/frontier.json holds: per candidate its panel (the lever it tests), its description, its yardstick's
    unigram perplexity and left-bigram ratio, and its points."""
    lever = {name: panel.title for panel in PANELS for name in panel.names}
    candidates = {}
    for name, points in curves.items():
        r = results[name]
        bigram = r.get("yardstick_bigram_ppl")
        candidates[name] = {"lever": lever[name], "description": CANDIDATES[name][0],
                            "unigram_ppl": round(r["yardstick_unigram_ppl"], 1),
                            "bigram_ratio": round(bigram / r["yardstick_unigram_ppl"], 4) if bigram else None,
                            "points": points}
    return {"about": "python -m harness bench --sections frontier; seed 0; ratio = yardstick ppl / unigram ppl; "
                     "cpu_min: training CPU-minutes of one thread (validation excluded)", "candidates": candidates}


def write_data(data: dict, path: Path = DATA) -> None:
    """docs/frontier.json with one point a line: short, and its diffs read point by point."""
    entries = []
    for name, entry in data["candidates"].items():
        head = json.dumps({k: v for k, v in entry.items() if k != "points"})[:-1]
        points = ",\n      ".join(json.dumps(p) for p in entry["points"])
        entries.append(f'    {json.dumps(name)}: {head}, "points": [\n      {points}]}}')
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'{{"about": {json.dumps(data["about"])},\n  "candidates": {{\n' + ",\n".join(entries) + "}}\n")


def plot(data: dict, path: Path = PLOT) -> None:
    """One row per lever (PANELS), the ratio against training CPU-minutes (left) and tokens seen (right); the demo's
    chosen design bold and labelled at its line's end, each row's baseline grey, the legend beside each row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    candidates = data["candidates"]
    panels = [p for p in PANELS if any(n in candidates for n in p.names)]
    fig, axes = plt.subplots(len(panels), 2, figsize=(17, 2.6 * len(panels) + 1.2), sharey=True, sharex="col",
                             squeeze=False)
    palette = plt.get_cmap("tab10").colors
    bigram = next((c["bigram_ratio"] for c in candidates.values() if c["bigram_ratio"]), None)
    for row, panel in zip(axes, panels):
        lines = [(panel.baseline, "0.6", "baseline")] if panel.baseline in candidates else []
        lines += [(n, palette[i], "chosen" if n in CHOSEN else "") for i, n in enumerate(panel.names)
                  if n in candidates]
        for name, colour, kind in lines:
            points = candidates[name]["points"]
            label = textwrap.shorten(f"{name}: {candidates[name]['description']}", 95)
            label = "\n    ".join(textwrap.wrap(label, 52))
            if kind == "baseline":
                label = f"{name} (the row's baseline)"
            style = {"baseline": dict(lw=3, alpha=0.45, zorder=1), "chosen": dict(lw=3, zorder=3),
                     "": dict(lw=1.2, marker=".", ms=4, zorder=2)}[kind]
            for ax, x, scale in zip(row, ("cpu_min", "tokens"), (1, 1e6)):
                xs, ys = [p[x] / scale for p in points], [p["ratio"] for p in points]
                ax.plot(xs, ys, color=colour, label=label, **style)
                if kind == "chosen":
                    ax.annotate(f"{CHOSEN[name]}: {ys[-1]:.2f}", (xs[-1], ys[-1]), xytext=(6, 0),
                                textcoords="offset points", va="center", fontsize=9, fontweight="bold", color=colour,
                                bbox=dict(boxstyle="square,pad=0.1", fc="white", ec="none", alpha=0.8), zorder=4)
        for ax in row:
            ax.axhline(1.0, color="grey", lw=0.8, ls="--")
            ax.axhline(0.9, color="grey", lw=0.8, ls=":")
            if bigram:
                ax.axhline(bigram, color="black", lw=0.8, ls="-.")
            ax.set_ylim(0, 1.25)  # step 0 of a zero-bias run (~4.2) lies above
            ax.grid(alpha=0.3)
        row[0].set_title(panel.title, loc="left", fontsize=11, fontweight="bold")
        row[0].set_ylabel("yardstick / unigram")
        row[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
    for ax, x, scale in zip(axes[0], ("cpu_min", "tokens"), (1, 1e6)):  # room right of the lines for their labels
        ax.set_xlim(0, 1.25 * max(c["points"][-1][x] for c in candidates.values()) / scale)
    axes[-1][0].set_xlabel("training CPU-minutes (one thread)")
    axes[-1][1].set_xlabel("tokens seen (millions)")
    refs = [plt.Line2D([], [], color="grey", lw=0.8, ls="--", label="1.0: the unigram (no context)"),
            plt.Line2D([], [], color="grey", lw=0.8, ls=":", label="0.9: the signal threshold")]
    if bigram:
        refs.append(plt.Line2D([], [], color="black", lw=0.8, ls="-.", label=f"{bigram:.3f}: the left-bigram model"))
    refs += [plt.Line2D([], [], color="black", lw=3, label="bold, labelled: the demo's chosen design"),
             plt.Line2D([], [], color="0.6", lw=3, alpha=0.45, label="grey: the run a row's levers change")]
    fig.legend(handles=refs, loc="upper center", ncol=len(refs), bbox_to_anchor=(0.5, 0.985), frameon=False)
    fig.suptitle("The learning frontier of the demo designs on the demo corpus (FULL-SENTENCES unless named; seed 0)",
                 fontsize=13, y=0.998)
    fig.tight_layout(rect=(0, 0, 1, 0.975))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def redraw(data_path: Path = DATA, path: Path = PLOT) -> None:
    """The plot and the table from the committed curves alone, without training."""
    data = json.loads(data_path.read_text())
    plot(data, path)
    print(table({name: c["points"] for name, c in data["candidates"].items()}))


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
    OUT.mkdir(parents=True, exist_ok=True)
    two_at_a_time([(["-m", "harness.benchmarks.frontier", name], OUT / f"{name}.log") for name in todo], "frontier")
    done = [n for n in CANDIDATES if (OUT / n / "seed_0" / "result.json").is_file()]
    curves = {n: curve(n) for n in done}
    data = curves_data(curves, {n: json.loads((OUT / n / "seed_0" / "result.json").read_text()) for n in done})
    write_data(data)
    text = table(curves)
    (OUT / "frontier.md").write_text(text + "\n")
    print(text)
    plot(data)
    layout = thread_layout() if os.environ.get("FRONTIER_THREADS", "1") != "0" else None
    print(f"threads: {layout}")
    return {"curves": curves, "table": str(OUT / "frontier.md"), "plot": str(PLOT), "threads": layout}


if __name__ == "__main__":
    if sys.argv[1:] == ["--redraw"]:
        redraw()
    else:
        train_candidate(sys.argv[1])
