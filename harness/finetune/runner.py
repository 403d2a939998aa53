"""Fine-tune one pretraining run on one task under a protocol, and write the results into the run folder.

  <run>/finetune/<task>/seed_<j>.json   one fine-tuning seed: every (lr, batch) configuration's best dev epoch
                                        and metrics, the seed's best configuration, data source, wall time
  <run>/finetune/<task>/summary.json    the configuration with the best median over seeds, its per-seed values,
                                        median / min / max, data source, protocol (its name and settings), the
                                        majority-class score (what
                                        a constant prediction scores); "n/a offline" when the task has no data
                                        offline
With `init="random"` the same encoder is fine-tuned from a random init, into <run>/finetune-random-init/<task>/.
Each file is written atomically when complete; a seed already on disk under the same settings is not re-run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import statistics
import time
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from harness import speed
from harness.errors import UserError
from harness.files import read_json, write_json
from harness.finetune import features as feats
from harness.finetune import metrics, qa
from harness.finetune.heads import make_head
from harness.finetune.module import FinetuneModule
from harness.finetune.protocol import Protocol, load_protocol
from harness.finetune.tasks import NA_OFFLINE, Task, TaskData, get_task, load_task_data
from harness.model import MaskedLM
from harness.pretrain import PretrainedRun, load_run

INITS = ("pretrained", "random")


def build_model(run: PretrainedRun, seed: int, dropout: float) -> MaskedLM:
    # A random init differs per fine-tuning seed, as the head's does, and per pretraining run (its train.seed), so
    # the random-init baselines of an arm's seeds are as many different encoders as its pretrained runs.
    # Pretrained weights overwrite the init, so there it only matters for the global RNG the task head draws from.
    init_seed = seed if run.weights is not None else 1_000_003 * run.config.train.seed + seed
    torch.manual_seed(init_seed)
    cfg = dataclasses.replace(run.config.model, dropout=dropout)  # fine-tuning's dropout, not pretraining's
    model = MaskedLM(cfg, run.vocab_size, nsp=run.config.data.nsp, seed=init_seed)
    if run.weights is not None:
        model.load_state_dict(run.weights)
    return model


# ---- data -> features ------------------------------------------------------------------------------------


def _sample(examples: list, cap: int, salt: int) -> list:
    """A fixed random subset of at most `cap` examples, in their original order (cap 0 = all)."""
    if not cap or len(examples) <= cap:
        return examples
    keep = np.sort(np.random.default_rng(salt).choice(len(examples), cap, replace=False))
    return [examples[i] for i in keep]


@dataclass
class Prepared:
    train: list[dict]  # features (a QA example can give several)
    dev: list[dict]
    score: Any  # dev outputs -> metrics
    n_examples: tuple[int, int]  # (train, dev) examples used, after the protocol's caps
    majority: float | None  # the task's metric for a constant prediction (majority_score)


def majority_score(task: Task, train: list, dev: list) -> float | None:
    """The task's metric on `dev` for one constant prediction: the training examples' most frequent label (the first
    of a tie; for multiple choice, the most frequent answer position; for regression, their mean label). An encoder
    whose fine-tuning only found the label prior scores this; the analysis checks random-init baselines against it.
    None for QA, which has no single constant answer."""
    if task.kind == "qa":
        return None
    gold = np.array([e.label for e in dev])
    if task.kind == "regression":
        constant = np.full(len(dev), float(np.mean([e.label for e in train])))
        return metrics.regression_metrics(constant, gold)[task.metric]
    n_out = task.n_outputs if task.kind == "classification" else max(len(e.options) for e in [*train, *dev])
    logits = np.zeros((len(dev), n_out))
    logits[:, int(np.bincount([e.label for e in train], minlength=n_out).argmax())] = 1.0
    return metrics.classification_metrics(logits, gold)[task.metric]


def prepare(task: Task, data: TaskData, run: PretrainedRun, protocol: Protocol) -> Prepared:
    tok = feats.load_tokenizer(run.tokenizer_path)
    max_len = min(protocol.max_seq_len, run.config.model.max_positions)
    nsp = run.config.data.nsp
    train = _sample(data.train, protocol.max_train_examples, 0)
    dev = _sample(data.dev, protocol.max_dev_examples, 1)
    if not train or not dev:
        raise UserError(f"--task {task.name}: no {'training' if not train else 'dev'} examples in {data.origin}")
    if task.kind == "qa":
        make = partial(qa.qa_features, tok, max_len=max_len, max_query_len=protocol.max_query_len,
                       doc_stride=protocol.doc_stride, nsp=nsp)
        train_f, _ = make(train, train=True)
        dev_f, _ = make(dev, train=False)
        score = partial(_score_qa, dev_f, dev, protocol.max_answer_len, task.name == "squad2")
    else:
        make = feats.choice_features if task.kind == "multiple_choice" else feats.text_features
        train_f, dev_f = make(tok, train, max_len, nsp), make(tok, dev, max_len, nsp)
        gold = np.array([e.label for e in dev])
        score = partial(_score_regression if task.kind == "regression" else _score_classes, gold)
    return Prepared(train_f, dev_f, score, (len(train), len(dev)), majority_score(task, train, dev))


def _score_classes(gold: np.ndarray, outputs: list[Tensor]) -> dict[str, float]:
    return metrics.classification_metrics(torch.cat(outputs).numpy(), gold)


def _score_regression(gold: np.ndarray, outputs: list[Tensor]) -> dict[str, float]:
    return metrics.regression_metrics(torch.cat(outputs).numpy(), gold)


def _score_qa(features, examples, max_answer_len: int, v2: bool, outputs: list[Tensor]) -> dict[str, float]:
    rows = [row for batch in outputs for row in batch.numpy()]  # (T_batch, 2) per feature, in dev order
    rows = [row[: len(f["input_ids"])] for row, f in zip(rows, features)]
    answers = qa.predict_answers(features, [r[:, 0] for r in rows], [r[:, 1] for r in rows], examples,
                                 max_answer_len, allow_no_answer=v2)
    return metrics.squad_metrics(answers, [[text for text, _ in e.answers] for e in examples])


# ---- training ----------------------------------------------------------------------------------------------


class _StepBar(L.Callback):
    """Advances the task's progress bar by one per optimizer step."""

    def __init__(self, bar: tqdm):
        self.bar = bar

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.bar.update(1)


def train_one(task: Task, prepared: Prepared, run: PretrainedRun, protocol: Protocol, lr: float,
              batch_size: int, seed: int, bar: tqdm | None = None) -> dict[str, Any]:
    """One configuration, one seed: fine-tune for protocol.epochs, score dev after each epoch, keep the best."""
    start = time.time()
    L.seed_everything(seed, verbose=False)
    model = build_model(run, seed, protocol.dropout)
    head = make_head(task.kind, run.config.model.hidden, task.n_outputs, protocol.dropout)
    module = FinetuneModule(model, head, task.kind, lr, protocol.warmup_ratio, protocol.weight_decay,
                            protocol.beta2, protocol.eps, prepared.score)
    batches = feats.LengthGroupedBatches(prepared.train, batch_size, seed)
    train = DataLoader(prepared.train, batch_sampler=batches, collate_fn=feats.collate)
    dev = DataLoader(prepared.dev, batch_size=max(batch_size, 64), collate_fn=feats.collate)
    accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    # As pretraining's train.precision=auto: bf16-mixed on a GPU, and on a CPU whose bf16 matmuls the probe finds
    # faster (once per process; measured 1.75x on a fit of the gap task, the same score), else fp32.
    precision = speed.resolve_precision("auto", accelerator)
    trainer = L.Trainer(
        accelerator=accelerator, devices=1, precision=precision,
        max_epochs=protocol.epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[_StepBar(bar)] if bar is not None else [],
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(num_workers|does not have many workers).*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)  # Lightning vs new torch
        trainer.fit(module, train, dev)
    history = module.history
    scores = [row[task.metric] for row in history]
    best = int(np.nanargmax(scores)) if not all(math.isnan(s) for s in scores) else len(history) - 1
    diverged = not all(math.isfinite(row["train_loss"]) for row in history)
    return {"lr": lr, "batch_size": batch_size, "best_epoch": history[best]["epoch"], "score": scores[best],
            "metrics": {k: v for k, v in history[best].items() if k not in ("epoch", "train_loss")},
            "diverged": diverged, "history": history, "wall_s": round(time.time() - start, 2)}


# ---- results -----------------------------------------------------------------------------------------------


def results_dir(run_dir: Path, task: str, init: str = "pretrained") -> Path:
    return Path(run_dir) / ("finetune" if init == "pretrained" else "finetune-random-init") / task


def summarize(seeds: list[dict], common: dict) -> dict:
    """Choose the configuration with the best median over seeds (ties: the first in the protocol's grid)."""
    configs = [(g["lr"], g["batch_size"]) for g in seeds[0]["grid"]]
    per_config = [[s["grid"][i]["score"] for s in seeds] for i in range(len(configs))]
    chosen = max(range(len(configs)), key=lambda i: statistics.median(per_config[i]))
    values = per_config[chosen]
    lrs = sorted({lr for lr, _ in configs})
    return {
        **common, "status": "complete", "n_seeds": len(seeds), "values": values,
        "median": statistics.median(values), "min": min(values), "max": max(values),
        "config": {"lr": configs[chosen][0], "batch_size": configs[chosen][1]},
        "lr_on_edge": len(lrs) > 1 and configs[chosen][0] in (lrs[0], lrs[-1]),
        "metrics_median": {k: statistics.median(s["grid"][chosen]["metrics"][k] for s in seeds)
                           for k in seeds[0]["grid"][chosen]["metrics"]},
        "n_diverged": sum(g["diverged"] for s in seeds for g in s["grid"]),
        "wall_s": round(sum(s["wall_s"] for s in seeds), 2),
    }  # fmt: skip


def finetune(run_dir: Path, task: str, data_dir: Path | str | None = None, protocol: str = "demo",
             init: str = "pretrained", progress: bool = True) -> dict:
    """Fine-tune `run_dir`'s encoder on `task` under `protocol` for every seed; return (and write) the summary.
    data_dir: a folder of official files, "hf" for HF datasets' local cache, or None (stand-in or n/a offline)."""
    spec, proto = get_task(task), load_protocol(protocol).for_task(task)  # the task's own settings, where it has any
    if init not in INITS:
        raise UserError(f"--init {init}: expected one of {list(INITS)}")
    run = load_run(run_dir, weights=init == "pretrained")
    out = results_dir(run_dir, task, init)
    data = load_task_data(spec, data_dir, run.config.data)
    common = {"task": task, "metric": spec.metric, "protocol": proto.name, "protocol_settings": proto.to_dict(),
              "init": init, "pretrain_status": run.status}
    if data is None:
        summary = {**common, "data_source": NA_OFFLINE, "status": NA_OFFLINE, "n_seeds": 0, "values": [],
                   "median": None, "min": None, "max": None}
        write_json(out / "summary.json", summary)
        return summary
    common |= {"data_source": data.source, "data_origin": data.origin}
    # What a finished seed must match to be reused: the data, the protocol and the weights it started from.
    checkpoint = run.dir / "checkpoints" / "last.ckpt"
    weights = f"{checkpoint.stat().st_size}:{checkpoint.stat().st_mtime_ns}" if run.weights is not None else init
    settings = json.loads(json.dumps({**common, "weights": weights}))
    prepared = prepare(spec, data, run, proto)
    common |= {"n_train": len(data.train), "n_dev": len(data.dev), "n_train_used": prepared.n_examples[0],
               "n_dev_used": prepared.n_examples[1], "majority_score": prepared.majority}
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no per-fit banner lines
    grid = proto.grid()
    steps = {bs: math.ceil(len(prepared.train) / bs) * proto.epochs for _, bs in grid}  # optimizer steps per fit
    bar = tqdm(total=proto.seeds * sum(steps[bs] for _, bs in grid), desc=f"finetune {task}", disable=not progress,
               unit="step")
    seeds = []
    for seed in range(proto.seeds):
        path = out / f"seed_{seed}.json"
        previous = read_json(path)
        if previous is not None and previous.get("settings") == settings:
            seeds.append(previous)
            bar.update(sum(steps[bs] for _, bs in grid))
            continue
        start, results = time.time(), []
        for lr, batch_size in grid:
            results.append(train_one(spec, prepared, run, proto, lr, batch_size, seed, bar))
            bar.set_postfix({"seed": seed, spec.metric: f"{results[-1]['score']:.1f}"})
        best = max(results, key=lambda g: g["score"])
        record = {**common, "seed": seed, "epochs": proto.epochs, "score": best["score"], "metrics": best["metrics"],
                  "best_config": {"lr": best["lr"], "batch_size": best["batch_size"], "epoch": best["best_epoch"]},
                  "grid": results, "wall_s": round(time.time() - start, 2), "settings": settings}
        write_json(path, record)
        seeds.append(record)
    bar.close()
    summary = summarize(seeds, common)
    write_json(out / "summary.json", summary)
    return summary
