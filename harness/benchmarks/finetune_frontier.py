"""The fine-tuning frontier: under which fine-tuning protocol a demo encoder's downstream score shows what its
pretraining bought.

What pretraining buys at demo scale is sample efficiency: fine-tuned on few examples, a pretrained tiny encoder beats
the same architecture from random weights; with enough examples the random weights catch up (issue 31). So a demo
column measures something only under a protocol where (a) the encoder from random weights is clearly above the
majority class (else it certifies nothing) and (b) the table's reference arm beats it by a margin. This benchmark
measures that gap, per task, against the fine-tuning budget (examples x epochs) and the protocol's other settings,
on each demo table's *reference arm* (its first arm, at its demo design) and that encoder's random-init twin. The
protocol is chosen on those gaps only, never on a comparison between arms.

  encoders   each table's reference arm, pretrained exactly as its demo grid's cell (`Experiment.config`), seed 0
             (FT_ENCODER_SEEDS=0,1,2 for more), into runs/ftfrontier/<table>/<arm>/seed_<k>/
  candidates (task, protocol): configs/finetune.yaml's `grid_demo` with a few settings changed (CANDIDATES); by
             default only `grid-demo`, the chosen protocol, on every table and task (~70 fits, ~45 min on 2 cores);
             FT_CANDIDATES=all (or names) for the rest (~190 fits at 3 tables' tasks: hours)
  each      fine-tuned from the pretrained weights and from random weights, FT_SEEDS fine-tuning seeds, one thread
             per process, two processes at a time; every fit appended to runs/ftfrontier/fits.jsonl (a fit already
             there is not rerun), with its CPU-seconds

`python -m harness bench --sections finetune_frontier` (make bench-finetune-frontier) writes the table (runs/ftfrontier/
frontier.md; docs/results.md quotes it) and the plot (docs/ftfrontier.png).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

OUT = Path("runs/ftfrontier")
FITS = OUT / "fits.jsonl"
PLOT = Path("docs/ftfrontier.png")
BASE_PROTOCOL = "grid_demo"  # configs/finetune.yaml: what a candidate changes settings of
TASKS = ("trec6", "rt_sentiment", "gap_sentence", "sentence_relation")
INITS = ("pretrained", "random")
B16 = {"batch_sizes": (16,), "max_dev_examples": 1000}
GAP_WINDOW = "gap_window"  # a candidate setting that is not the protocol's: gap_sentence's passage length
GAP_WINDOW_DEFAULT = 5  # gap_sentence's passages where a candidate names none (the first fits, made before it was 3)
# name -> (what it moves, settings replacing grid_demo's, or None: grid_demo as configs/finetune.yaml has it).
# Budget = examples x epochs. The candidates before "grid-demo" were run before grid_demo was re-chosen from them.
CANDIDATES: dict[str, tuple[str, dict | None]] = {
    "grid-demo": ("the chosen protocol, configs/finetune.yaml grid_demo (per-task settings included)", None),
    "n500-e4": ("500 examples x 4 epochs, LR 1e-3 (issue 31's measurement)",
                {"max_train_examples": 500, "epochs": 4, "lrs": (1e-3,)}),
    "n1000-e4": ("1,000 examples x 4 epochs", {"max_train_examples": 1000, "epochs": 4, "lrs": (1e-3,)}),
    "n2000-e4": ("2,000 examples x 4 epochs", {"max_train_examples": 2000, "epochs": 4, "lrs": (1e-3,)}),
    "n4000-e4": ("4,000 examples x 4 epochs", {"max_train_examples": 4000, "epochs": 4, "lrs": (1e-3,)}),
    "n1000-e8": ("1,000 examples x 8 epochs", {"max_train_examples": 1000, "epochs": 8, "lrs": (1e-3,)}),
    "n1000-e4-lr3e-4": ("1,000 examples x 4 epochs at LR 3e-4",
                        {"max_train_examples": 1000, "epochs": 4, "lrs": (3e-4,)}),
    "n500-e4-lr3e-4": ("500 examples x 4 epochs at LR 3e-4", {"max_train_examples": 500, "epochs": 4, "lrs": (3e-4,)}),
    "n2000-e4-lr3e-4": ("2,000 examples x 4 epochs at LR 3e-4",
                        {"max_train_examples": 2000, "epochs": 4, "lrs": (3e-4,)}),
    "n2000-e4-lr1e-4": ("2,000 examples x 4 epochs at LR 1e-4",
                        {"max_train_examples": 2000, "epochs": 4, "lrs": (1e-4,)}),
    # Batch 16 (more optimizer steps for the same examples x epochs), dev capped at 1,000 (scored every epoch)
    "b16-n500-e10-lr1e-4": ("batch 16, 500 examples x 10 epochs, LR 1e-4", {**B16, "max_train_examples": 500,
                                                                           "epochs": 10, "lrs": (1e-4,)}),
    "b16-n500-e10-lr3e-4": ("batch 16, 500 examples x 10 epochs, LR 3e-4", {**B16, "max_train_examples": 500,
                                                                           "epochs": 10, "lrs": (3e-4,)}),
    "b16-n1000-e5-lr3e-4": ("batch 16, 1,000 examples x 5 epochs, LR 3e-4", {**B16, "max_train_examples": 1000,
                                                                            "epochs": 5, "lrs": (3e-4,)}),
    "b16-n2000-e5-lr1e-4": ("batch 16, 2,000 examples x 5 epochs, LR 1e-4", {**B16, "max_train_examples": 2000,
                                                                            "epochs": 5, "lrs": (1e-4,)}),
    # Fine-tuning without dropout, as the demo encoders were pretrained (configs/demo.yaml: dropout 0)
    "d0-n500-e4": ("no dropout, 500 examples x 4 epochs, LR 1e-3", {"dropout": 0.0, "max_train_examples": 500,
                                                                   "epochs": 4, "lrs": (1e-3,)}),
    "d0-b16-n500-e10-lr3e-4": ("no dropout, batch 16, 500 examples x 10 epochs, LR 3e-4",
                               {**B16, "dropout": 0.0, "max_train_examples": 500, "epochs": 10, "lrs": (3e-4,)}),
    "d0-b16-n1000-e5-lr3e-4": ("no dropout, batch 16, 1,000 examples x 5 epochs, LR 3e-4",
                               {**B16, "dropout": 0.0, "max_train_examples": 1000, "epochs": 5, "lrs": (3e-4,)}),
    # gap_sentence with 3-sentence passages (one sentence each side of the gap): ~half the tokens of 5
    "w3-n1000-e4": ("gap passages of 3 sentences, 1,000 examples x 4 epochs, max 96 tokens",
                    {GAP_WINDOW: 3, "max_train_examples": 1000, "epochs": 4, "lrs": (1e-3,), "max_seq_len": 96,
                     "max_dev_examples": 1000}),
    "w3-n2000-e4": ("gap passages of 3 sentences, 2,000 examples x 4 epochs, max 96 tokens",
                    {GAP_WINDOW: 3, "max_train_examples": 2000, "epochs": 4, "lrs": (1e-3,), "max_seq_len": 96,
                     "max_dev_examples": 1000}),
}
COMMON = {"max_seq_len": 128, "max_dev_examples": 2000, "seeds": 1}  # every candidate's, unless it says otherwise
TABLES = {1: "experiments/table1_masking.yaml", 2: "experiments/table2_nsp.yaml", 3: "experiments/table3_batch.yaml",
          4: "experiments/table4_data.yaml"}


def encoder_config(table: int, seed: int):
    """The resolved config of table `table`'s reference arm (its first) at the demo scale, seed `seed`: the cell its
    grid would train, in runs/ftfrontier/ instead of runs/."""
    from harness.grid.experiment import load_experiment

    exp = load_experiment(TABLES[table], "demo")
    extra = {"train.wandb": "disabled", "train.study": f"table{table}"}
    return exp.config(exp.arms[0], seed, str(OUT), extra=extra)


def encoder_dir(table: int, seed: int) -> Path:
    from harness.pretrain import run_dir_of

    return run_dir_of(encoder_config(table, seed))


def train_encoder(table: int, seed: int) -> None:
    """Pretrain one reference encoder in this process, on one thread."""
    import torch

    from harness.pretrain import pretrain

    torch.set_num_threads(1)
    pretrain(encoder_config(table, seed))


def protocol(candidate: str, task: str):
    """The protocol a candidate fine-tunes `task` with: BASE_PROTOCOL itself, with its per-task settings (a candidate
    of settings None), or COMMON and the candidate's settings over BASE_PROTOCOL's others, for every task alike."""
    from harness.finetune.protocol import load_protocol

    base = load_protocol(BASE_PROTOCOL)
    if CANDIDATES[candidate][1] is None:
        return base.for_task(task)
    settings = {k: v for k, v in {**COMMON, **CANDIDATES[candidate][1]}.items() if k != GAP_WINDOW}
    return dataclasses.replace(base, name=f"ftfrontier:{candidate}", tasks={}, **settings)


def fit_key(row: dict) -> tuple:
    return tuple(row[k] for k in ("table", "encoder_seed", "task", "candidate", "init", "ft_seed"))


def done_fits() -> set[tuple]:
    if not FITS.is_file():
        return set()
    return {fit_key(json.loads(line)) for line in FITS.read_text().splitlines() if line.strip()}


def run_fits(jobs: list[dict]) -> None:
    """Fine-tune every job (table, encoder_seed, task, candidate, init, ft_seed) in this process, on one thread, each
    (encoder, task, candidate, init) prepared once; append each result to FITS as it finishes."""
    import torch

    from harness.finetune import built, runner
    from harness.finetune.tasks import get_task, load_task_data
    from harness.pretrain import load_run

    torch.set_num_threads(1)
    groups: dict[tuple, list[dict]] = {}
    for job in jobs:
        groups.setdefault(tuple(job[k] for k in ("table", "encoder_seed", "task", "candidate", "init")), []).append(job)
    for (table, enc_seed, task, candidate, init), group in groups.items():
        run = load_run(encoder_dir(table, enc_seed), weights=init == "pretrained")
        spec, proto = get_task(task), protocol(candidate, task)
        settings = CANDIDATES[candidate][1]
        window = built.GAP_WINDOW if settings is None else settings.get(GAP_WINDOW, GAP_WINDOW_DEFAULT)
        prepared = runner.prepare(spec, load_task_data(spec, None, run.config.data, window), run, proto)
        for job in group:
            cpu = time.process_time()
            out = runner.train_one(spec, prepared, run, proto, proto.lrs[0], proto.batch_sizes[0], job["ft_seed"])
            row = {**job, "score": out["score"], "best_epoch": out["best_epoch"], "diverged": out["diverged"],
                   "history": out["history"], "wall_s": out["wall_s"], "cpu_s": round(time.process_time() - cpu, 2),
                   "majority": prepared.majority, "n_train": prepared.n_examples[0], "n_dev": prepared.n_examples[1],
                   "examples_x_epochs": prepared.n_examples[0] * proto.epochs, "gap_window": window}
            with open(FITS, "a") as f:  # one line per write: two processes append whole lines
                f.write(json.dumps(row) + "\n")
            print(f"{fit_key(row)}: {row['score']:.1f} ({row['cpu_s']:.0f} CPU-s)", flush=True)


def _env_list(name: str, default: tuple, cast=str) -> tuple:
    return tuple(cast(x) for x in os.environ.get(name, "").split(",") if x) or default


def random_twin(table: int, seed: int) -> tuple[int, int]:
    """The encoder whose random-init fits stand for this one's: a random init depends only on the encoder's shape
    (model settings, NSP's segment embeddings, vocabulary) and the seed, so tables that share a shape share them."""
    def shape(t: int) -> str:
        cfg = encoder_config(t, seed)
        return json.dumps([cfg.to_dict()["model"], cfg.data.nsp, cfg.data.corpus, *cfg.data.tokenizer_settings])

    return min((t for t in TABLES if shape(t) == shape(table)), default=table), seed


def jobs(tables: tuple, encoder_seeds: tuple, tasks: tuple, candidates: tuple, ft_seeds: int) -> list[dict]:
    out, seen = [], set()
    for table in tables:
        for enc_seed in encoder_seeds:
            for task in tasks:
                for candidate in candidates:
                    for init in INITS:
                        t, s = random_twin(table, enc_seed) if init == "random" else (table, enc_seed)
                        for ft_seed in range(ft_seeds):
                            job = {"table": t, "encoder_seed": s, "task": task, "candidate": candidate, "init": init,
                                   "ft_seed": ft_seed}
                            if fit_key(job) not in seen:
                                seen.add(fit_key(job))
                                out.append(job)
    return out


def _in_processes(argv_lists: list[list[str]], label: str) -> None:
    """Run `python -m harness.benchmarks.finetune_frontier ARGS` for each ARGS, two at a time on one thread each."""
    from harness.benchmarks.processes import two_at_a_time

    two_at_a_time([(["-m", "harness.benchmarks.finetune_frontier", *args],
                    OUT / f"{label}-{'-'.join(Path(a).stem for a in args)}.log") for args in argv_lists], "ftfrontier")


def _cost(group: list[dict]) -> float:
    """A group's relative CPU cost: examples x epochs per fit, x 16 for the gap task's 4 long options."""
    p = protocol(group[0]["candidate"], group[0]["task"])
    return p.max_train_examples * p.epochs * (16 if group[0]["task"] == "gap_sentence" else 1) * len(group)


def summary(rows: list[dict]) -> list[dict]:
    """Per (table, task, candidate): the pretrained and random-init medians over every fit (encoder seeds x
    fine-tuning seeds), their spread across fine-tuning seeds, the gap, the majority class, CPU-seconds per fit."""
    import numpy as np

    by = {}
    for r in rows:
        by.setdefault((r["table"], r["encoder_seed"], r["task"], r["candidate"], r["init"]), []).append(r)
    out = []
    for table in sorted({r["table"] for r in rows if r["init"] == "pretrained"}):
        for task in TASKS:
            for candidate in CANDIDATES:
                pre = [r for (t, _, k, c, i), rs in by.items() if (t, k, c, i) == (table, task, candidate,
                                                                                    "pretrained") for r in rs]
                seeds = sorted({r["encoder_seed"] for r in pre})
                rnd = [r for s in seeds for r in by.get((*random_twin(table, s), task, candidate, "random"), [])]
                if not pre or not rnd:
                    continue
                p, q = (np.array([r["score"] for r in x]) for x in (pre, rnd))
                within = [np.std([r["score"] for r in rs], ddof=1) for (t, _, k, c, i), rs in by.items()
                          if (t, k, c, i) == (table, task, candidate, "pretrained") and len(rs) > 1]
                out.append({"table": table, "task": task, "candidate": candidate, "pretrained": float(np.median(p)),
                            "random": float(np.median(q)), "gap": float(np.median(p) - np.median(q)),
                            "majority": pre[0]["majority"], "random_over_majority": float(np.median(q))
                            - pre[0]["majority"], "ft_seed_sd": float(np.mean(within)) if within else None,
                            "fits": len(pre) + len(rnd), "examples_x_epochs": pre[0]["examples_x_epochs"],
                            "cpu_s_per_fit": float(np.mean([r["cpu_s"] for r in pre + rnd]))})
    return out


def table(summaries: list[dict]) -> str:
    lines = ["| table | task | candidate | budget (examples x epochs) | pretrained | random init | gap | random - "
             "majority | sd over fine-tuning seeds | CPU-s per fit |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        sd = "" if s["ft_seed_sd"] is None else f"{s['ft_seed_sd']:.1f}"
        lines.append(f"| {s['table']} | {s['task']} | {s['candidate']} | {s['examples_x_epochs']:,} | "
                     f"{s['pretrained']:.1f} | {s['random']:.1f} | **{s['gap']:+.1f}** | "
                     f"{s['random_over_majority']:+.1f} | {sd} | {s['cpu_s_per_fit']:.0f} |")
    return "\n".join(lines)


def family(candidate: str) -> tuple[str, str]:
    """(what a candidate's protocol family is, its marker) for the plot."""
    for prefix, label, marker in (("grid-demo", "chosen: grid_demo", "*"), ("d0", "no dropout", "X"),
                                  ("b16", "batch 16", "^"), ("w3", "3-sentence passages", "D")):
        if candidate.startswith(prefix):
            return label, marker
    return ("LR 3e-4", "s") if "lr3e-4" in candidate else ("LR 1e-4", "v") if "lr1e-4" in candidate else (
        "LR 1e-3, batch 32", "o")


def plot(summaries: list[dict]) -> None:
    """Per task, each candidate's gap (pretrained - random init) against its budget, coloured by table (the reference
    arm fine-tuned), shaped by protocol family; hollow where the random-init score is less than 2 points above the
    majority class (it certifies nothing). The chosen protocol is the large star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    tasks = [t for t in TASKS if any(s["task"] == t for s in summaries)]
    tables = sorted({s["table"] for s in summaries})
    colour = {t: f"C{i}" for i, t in enumerate(tables)}
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.4 * len(tasks), 4.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for s in (s for s in summaries if s["task"] == task):
            _, marker = family(s["candidate"])
            sound = s["random_over_majority"] >= 2
            ax.plot(s["examples_x_epochs"], s["gap"], marker, color=colour[s["table"]],
                    markersize=14 if marker == "*" else 7, markerfacecolor=colour[s["table"]] if sound else "white")
        ax.axhline(5, color="grey", ls=":", lw=0.8)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_title(task)
        ax.set_xlabel("fine-tuning budget: examples x epochs")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("pretrained - random init (points; dotted: the 5-point target)")
    handles = [Line2D([], [], color=colour[t], marker="o", ls="", label=f"Table {t}'s reference arm") for t in tables]
    families = dict.fromkeys(family(s["candidate"]) for s in summaries)
    handles += [Line2D([], [], color="black", marker=m, ls="", markerfacecolor="none", label=label)
                for label, m in families]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    fig.suptitle("The fine-tuning frontier: what each table's reference arm gains over the same encoder from random "
                 "weights (hollow: random init < 2 points above the majority class)", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)


def report() -> dict:
    rows = [json.loads(line) for line in FITS.read_text().splitlines() if line.strip()] if FITS.is_file() else []
    summaries = summary(rows)
    text = table(summaries)
    (OUT / "frontier.md").write_text(text + "\n")
    print(text)
    if summaries:
        plot(summaries)
    return {"summary": summaries, "table": str(OUT / "frontier.md"), "plot": str(PLOT)}


def run() -> dict:
    tables = _env_list("FT_TABLES", tuple(TABLES), int)
    encoder_seeds = _env_list("FT_ENCODER_SEEDS", (0,), int)
    tasks = _env_list("FT_TASKS", TASKS)
    candidates = _env_list("FT_CANDIDATES", ("grid-demo",))
    candidates = tuple(CANDIDATES) if candidates == ("all",) else candidates
    unknown = sorted(set(candidates) - set(CANDIDATES)) + sorted(set(tasks) - set(TASKS))
    if unknown:
        from harness.errors import UserError

        raise UserError(f"FT_CANDIDATES / FT_TASKS: unknown {unknown}; expected 'all' or names from "
                        f"{list(CANDIDATES)}, tasks from {list(TASKS)}")
    ft_seeds = int(os.environ.get("FT_SEEDS", "3"))
    OUT.mkdir(parents=True, exist_ok=True)
    missing = [(t, s) for t in tables for s in encoder_seeds if not (encoder_dir(t, s) / "result.json").is_file()]
    _in_processes([["encoder", str(t), str(s)] for t, s in missing], "encoder")
    done = done_fits()
    todo = [j for j in jobs(tables, encoder_seeds, tasks, candidates, ft_seeds) if fit_key(j) not in done]
    groups: dict[tuple, list[dict]] = {}  # each group is prepared once, so it stays in one process
    for job in todo:
        groups.setdefault(tuple(job[k] for k in ("table", "encoder_seed", "task", "candidate")), []).append(job)
    halves: list[list[dict]] = [[], []]
    cost = [0.0, 0.0]
    for group in sorted(groups.values(), key=_cost, reverse=True):  # the larger first, each to the lighter process
        i = cost.index(min(cost))
        halves[i] += group
        cost[i] += _cost(group)
    files = []
    for i, half in enumerate(halves):
        if half:
            files.append(OUT / f"jobs{i}.json")
            files[-1].write_text(json.dumps(half))
    print(f"ftfrontier: {len(todo)} fits to run", flush=True)
    _in_processes([["fits", str(f)] for f in files], "fits")
    return report()


if __name__ == "__main__":
    if sys.argv[1] == "encoder":
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        train_encoder(int(sys.argv[2]), int(sys.argv[3]))
    elif sys.argv[1] == "fits":
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        run_fits(json.loads(Path(sys.argv[2]).read_text()))
