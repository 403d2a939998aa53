"""PNG figures per table, drawn with matplotlib's object API (no pyplot state, so nothing depends on the backend:
a headless cluster node, a test, or a notebook that shows the saved file).

  learning_curves.png   validation perplexity vs tokens seen per arm: median over seeds, band min-max; the
                        yardstick's unigram and left-bigram references as horizontal lines
  ppl_vs_batch.png      Table 3: final perplexity vs batch size at equal compute, ours and the paper's
  downstream.png        a panel per fine-tuning task: a bar per arm (median, error bar min-max over seeds, every
                        fine-tuning seed as a dot) and the paper's number as a red dash on the same 0-100 scale; a
                        dashed line per random-init baseline the study has (one per encoder shape) and a dotted one at
                        the task's majority-class score
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.load import BIGRAM, UNIGRAM
from analysis.paper import PPL
from analysis.tables import TableResult

DPI = 120


def _label(t: TableResult, arm: str) -> str:
    row = t.arm_rows.get(arm)
    return f"{arm} ({row})" if row and row.lower() != arm.lower() else arm


def _colors(t: TableResult) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {arm: cmap(i % 10) for i, arm in enumerate(t.study.arms)}


# result.json key -> (label, line style) of the yardstick's references, drawn as horizontal lines where recorded
REFERENCES = {UNIGRAM: ("no-context reference (unigram)", "--"),
              BIGRAM: ("local-context reference (left bigram)", ":")}


def learning_curves(t: TableResult, path: Path) -> Path | None:
    fig = learning_curves_figure(t)
    return _save(fig, path) if fig is not None else None


def learning_curves_figure(t: TableResult) -> Figure | None:
    """Yardstick perplexity vs tokens seen, with the yardstick's references as horizontal lines: the unigram (no
    context, dashed) and the left bigram (one word of left context, dotted; older runs lack it). x is the median over
    seeds of the tokens seen at each validation step (the formats that raise the batch size see more sequences per
    step)."""
    curves = t.study.curves
    curves = curves[curves["arm"].isin(t.study.arms)].dropna(subset=["val_ppl"])
    if curves.empty:
        return None
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    colors = _colors(t)
    for arm in t.study.arms:
        c = curves[curves["arm"] == arm]
        if c.empty:
            continue
        by_step = c.groupby("step").agg(tokens=("tokens", "median"), med=("val_ppl", "median"),
                                        lo=("val_ppl", "min"), hi=("val_ppl", "max"), n=("seed", "nunique"))
        x = by_step["tokens"].fillna(pd.Series(by_step.index, index=by_step.index)).to_numpy(float)
        ax.plot(x, by_step["med"], marker="o", ms=3, color=colors[arm], label=f"{_label(t, arm)}")
        ax.fill_between(x, by_step["lo"], by_step["hi"], color=colors[arm], alpha=0.2, lw=0)
    tidy = t.study.tidy
    for key, (label, style) in REFERENCES.items():  # one value per study (analysis.load checks it)
        value = pd.to_numeric(tidy.get(key, pd.Series(dtype=float)), errors="coerce").median()
        if math.isfinite(value):
            ax.axhline(value, color="grey", linestyle=style, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("tokens seen (training)")
    ax.set_ylabel("yardstick MLM perplexity (log)")
    n = len(t.study.seeds)
    ax.set_title(f"Table {t.number} ({t.settings['scale']}): learning curves, median over {n} seed(s), band min–max",
                 fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def ppl_vs_batch(t: TableResult, path: Path) -> Path | None:
    """Table 3: our final perplexity per batch size (median, error bar min-max over seeds) and the paper's on a
    second axis."""
    d = t.detail[t.detail["metric"] == PPL]
    sizes = {arm: t.settings["scientific"][arm].get("optim.batch_size") for arm in t.study.arms}
    if d.empty or any(s is None for s in sizes.values()):
        return None
    d = d.assign(bsz=d["arm"].map(sizes)).sort_values("bsz")
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    finite = d[np.isfinite(d["median"])]
    ax.errorbar(finite["bsz"], finite["median"], yerr=[finite["median"] - finite["min"],
                                                       finite["max"] - finite["median"]],
                marker="o", capsize=4, color="tab:blue", label="ours (median, min–max over seeds)")
    for r in d.itertuples():
        steps = t.settings["scientific"][r.arm].get("optim.max_steps")
        label = f"paper row: {r.paper_row or '–'}" + (f"\nours: {steps} steps" if steps else "")
        y = r.median if math.isfinite(r.median) else ax.get_ylim()[1]
        ax.annotate(label if math.isfinite(r.median) else f"{label}\n(diverged)", (r.bsz, y),
                    textcoords="offset points", xytext=(6, 6), fontsize=7)
    ax.set_xscale("log", base=2)
    ax.margins(x=0.2)  # room for the labels beside the outer points
    ax.set_xticks(d["bsz"], [str(b) for b in d["bsz"]])
    ax.set_xlabel("batch size (sequences), equal sequences seen")
    ax.set_ylabel("our validation perplexity", color="tab:blue")
    paper = d.dropna(subset=["paper"])
    if len(paper):
        ax2 = ax.twinx()
        ax2.plot(paper["bsz"], paper["paper"], marker="D", ls="--", mfc="none", color="tab:red",
                 label="paper (BERT-base, bsz 256/2K/8K)")
        ax2.set_ylabel("paper's perplexity", color="tab:red")
        ax2.legend(loc="upper right", fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"Table 3 ({t.settings['scale']}): perplexity vs batch size at equal compute", fontsize=10)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def downstream(t: TableResult, path: Path) -> Path | None:
    metrics = [m for m in t.metrics if m.downstream]
    if not metrics:
        return None
    fig = Figure(figsize=(max(8.0, 3.4 * len(metrics) + 1), 5.0))
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    colors = _colors(t)
    tidy = t.study.tidy
    for ax, m in zip(axes, metrics):
        d = t.detail[t.detail["metric"] == m.key].set_index("arm").loc[t.study.arms]
        x = np.arange(len(d))
        err = np.array([d["median"] - d["min"], d["max"] - d["median"]])
        ax.bar(x, d["median"], yerr=err, capsize=5, color=[colors[a] for a in d.index], alpha=0.85,
               label="ours: median, min–max over seeds")
        for i, arm in enumerate(d.index):
            runs = tidy[(tidy["arm"] == arm) & (tidy["metric"] == m.key) & tidy["expected"]]
            values = [v for vs in runs["values"] for v in (vs or [])]
            ax.scatter(i + np.linspace(-0.2, 0.2, len(values)), values, s=12, color="black", zorder=3,
                       label="every fine-tuning seed" if i == 0 else None)
        paper = d["paper"].to_numpy(float)
        if np.isfinite(paper).any():  # the paper's number on the same points scale, as a red dash per bar
            ax.scatter(x, paper, marker="_", s=900, linewidths=2.5, color="tab:red", zorder=4,
                       label="paper (BERT-base, real task)")
        baselines = [(arm, scores[m.key]) for arm, scores in t.random_init.items() if m.key in scores]
        for arm, (med, lo, hi) in baselines:  # what the encoder scores without pretraining, per encoder shape
            color = "grey" if len(baselines) == 1 else colors[arm]
            ax.axhspan(lo, hi, color=color, alpha=0.15)
            ax.axhline(med, color=color, linestyle="--",
                       label="no pretraining (random init): median, min–max" if len(baselines) == 1
                       else f"no pretraining, {arm}'s encoder: median, min–max")
        if m.key in t.majority:
            ax.axhline(t.majority[m.key], color="black", linestyle=":", label="majority class (a constant prediction)")
        ax.set_xticks(x, [_label(t, a).replace(" (", "\n(") for a in d.index], fontsize=7)
        ax.set_title(textwrap.fill(m.header, 40), fontsize=9)
        ax.set_ylabel(f"{m.task} dev score (points)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(textwrap.fill(f"Table {t.number} ({t.settings['scale']}): downstream scores per arm, bars from 0",
                               70), fontsize=10)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=8, frameon=False)
    return _save(fig, path, rect=(0, 0.1, 1, 1))  # room for the legend below the panels


def _save(fig: Figure, path: Path, rect: tuple[float, float, float, float] = (0, 0, 1, 1)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=DPI)
    return path


def plot_table(t: TableResult, outdir: str | Path) -> list[Path]:
    """Every figure for this table into outdir; returns the files written."""
    outdir = Path(outdir)
    figures = {"learning_curves": learning_curves, "ppl_vs_batch": ppl_vs_batch, "downstream": downstream}
    made = [figures[name](t, outdir / f"{name}.png") for name in t.paper.plots]  # the table's own list (paper.py)
    return [p for p in made if p is not None]
