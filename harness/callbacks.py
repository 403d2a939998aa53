"""What the pretraining Trainer runs beside the module: exact metrics per optimizer step, the progress bar, and the
run folder's metrics.csv logger (exact resume is harness.steps.StepBook)."""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from harness.config import Config


class Sums:
    """Token-weighted metric sums on one rank: losses stay on the device (no host sync per micro-batch),
    counts on the host. `reduce` adds them over ranks and starts again from zero."""

    KEYS = ("mlm_loss", "nsp_loss", "nsp_correct", "n_predicted", "n_sequences", "n_tokens")

    def __init__(self) -> None:
        self.dev: Tensor | None = None  # (3,) mlm loss, nsp loss, nsp correct
        self.host = [0, 0, 0]  # predicted tokens, sequences, real tokens

    def add(self, dev: Tensor, host: list[int]) -> None:
        self.dev = dev if self.dev is None else self.dev + dev
        self.host = [a + b for a, b in zip(self.host, host)]

    def reduce(self, strategy: Any, device: torch.device) -> dict[str, float]:
        dev = self.dev if self.dev is not None else torch.zeros(3, dtype=torch.float64, device=device)
        total = torch.cat([dev, torch.tensor(self.host, dtype=torch.float64, device=dev.device)])
        total = strategy.reduce(total, reduce_op="sum")
        self.__init__()
        return dict(zip(self.KEYS, total.tolist()))


def _emit(trainer: L.Trainer, metrics: dict[str, float], step: int) -> None:
    """Straight to the loggers at our own step numbers (optimizer steps), bypassing Lightning's per-micro-batch
    logging; loggers only act on rank zero."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=step)
        logger.save()


def _exp(x: float) -> float:
    return math.exp(min(x, 700.0))  # no OverflowError; nan stays nan


class StepMetrics(L.Callback):
    """Once per optimizer step, adds the module's sums over ranks; every train.log_every steps logs the window's
    MLM loss (train/loss) and perplexity, NSP loss and accuracy (NSP formats), learning rate, tokens seen, tokens/s
    and MFU; after each validation, the held-out perplexity on the yardstick (val/yardstick_ppl, the same sequences
    for every arm: harness.data.yardstick), on its short-context twin (val/short_yardstick_ppl: the same text one
    sentence at a time) and in the arm's own input format (val/ppl). A non-finite training
    objective stops the run as diverged."""

    def __init__(self, cfg: Config, peak_flops: float):
        self.cfg, self.peak_flops = cfg, peak_flops  # peak: FLOP/s of all devices together, the MFU denominator
        self.tokens_seen = 0
        self.train_time_s = 0.0  # optimizer steps only, validation excluded
        self.wall_time_s = 0.0  # whole fit calls, over all sessions of the run
        self.window = self._empty_window()
        self.last_train: dict[str, float] = {}
        self.last_val: dict[str, float] = {}
        self.diverged_at: int | None = None
        self.validating_step: int | None = None  # a validation outside fit scores this step (trainer.validate's is 0)
        self.bar: dict[str, str] = {}  # shown in the progress bar
        self._step = self._tick = self._fit_start = self._pause = None
        self._lr = math.nan

    @staticmethod
    def _empty_window() -> dict[str, float]:
        return dict.fromkeys((*Sums.KEYS, "time_s", "steps"), 0.0)

    def state_dict(self) -> dict:
        wall = self.wall_time_s + (time.perf_counter() - self._fit_start if self._fit_start else 0.0)
        return {"tokens_seen": self.tokens_seen, "train_time_s": self.train_time_s, "wall_time_s": wall,
                "window": dict(self.window), "last_train": dict(self.last_train), "last_val": dict(self.last_val),
                "diverged_at": self.diverged_at}

    def load_state_dict(self, state: dict) -> None:
        self.tokens_seen, self.train_time_s = int(state["tokens_seen"]), float(state["train_time_s"])
        self.wall_time_s, self.window = float(state["wall_time_s"]), dict(state["window"])
        self.last_train, self.last_val = dict(state["last_train"]), dict(state["last_val"])
        self.diverged_at = state["diverged_at"]

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_start = time.perf_counter()
        d = self.cfg.data
        self.flops_per_token = pl_module.model.flops_per_token(d.max_seq_len, d.mask_prob)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.wall_time_s += time.perf_counter() - self._fit_start
        self._fit_start = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._step, self._tick = trainer.global_step, time.perf_counter()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._tick = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pause = time.perf_counter()  # validation inside fit does not count as training time

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._tick is not None:
            self._tick += time.perf_counter() - self._pause

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        self._lr = optimizer.param_groups[0]["lr"]  # the rate this step uses

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step == self._step:
            return  # still accumulating micro-batches
        self._step = step = trainer.global_step
        sums = pl_module.train_sums.reduce(trainer.strategy, pl_module.device)  # identical on every rank
        now = time.perf_counter()
        dt, self._tick = now - self._tick, now
        for key, value in sums.items():
            self.window[key] += value
        self.window["time_s"] += dt
        self.window["steps"] += 1
        self.train_time_s += dt
        self.tokens_seen += int(sums["n_tokens"])
        if step % self.cfg.train.log_every == 0 or step >= trainer.max_steps:
            self._log_train(trainer, step)

    def _log_train(self, trainer: L.Trainer, step: int) -> None:
        w, self.window = self.window, self._empty_window()
        mlm = w["mlm_loss"] / max(w["n_predicted"], 1)
        tokens_per_s = w["n_tokens"] / max(w["time_s"], 1e-9)
        m = {"train/loss": mlm, "train/mlm_ppl": _exp(mlm), "train/lr": self._lr, "train/tokens": self.tokens_seen,
             "train/tokens_per_s": tokens_per_s, "train/mfu": self.flops_per_token * tokens_per_s / self.peak_flops}
        objective = mlm
        if self.cfg.data.nsp:
            n = max(w["n_sequences"], 1)
            m.update({"train/nsp_loss": w["nsp_loss"] / n, "train/nsp_acc": w["nsp_correct"] / n})
            objective += m["train/nsp_loss"]
        _emit(trainer, m, step)
        self.last_train = {**m, "step": step}
        self.bar.update({"loss": f"{mlm:.3f}", "tok/s": f"{tokens_per_s:,.0f}"})
        if not math.isfinite(objective) and self.diverged_at is None:
            self.diverged_at = step
            trainer.should_stop = True  # same decision on every rank: the sums were reduced

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sums = pl_module.val_sums.reduce(trainer.strategy, pl_module.device)
        mlm = sums["mlm_loss"] / max(sums["n_predicted"], 1)
        yard = pl_module.yardstick_sums.reduce(trainer.strategy, pl_module.device)
        y = yard["mlm_loss"] / max(yard["n_predicted"], 1)
        m = {"val/loss": mlm, "val/ppl": _exp(mlm), "val/yardstick_loss": y, "val/yardstick_ppl": _exp(y)}
        short = pl_module.short_yardstick_sums.reduce(trainer.strategy, pl_module.device)
        s = short["mlm_loss"] / max(short["n_predicted"], 1)
        m.update({"val/short_yardstick_loss": s, "val/short_yardstick_ppl": _exp(s)})
        if self.cfg.data.nsp:
            m["val/nsp_acc"] = sums["nsp_correct"] / max(sums["n_sequences"], 1)
        step = trainer.global_step if self.validating_step is None else self.validating_step
        _emit(trainer, m, step)
        self.last_val = {**m, "step": step}
        self.bar["yardstick_ppl"] = f"{m['val/yardstick_ppl']:.2f}"


class ProgressBar(TQDMProgressBar):
    """Lightning's bar, showing the latest logged loss, tokens/s and validation perplexity."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        for cb in trainer.callbacks:
            if isinstance(cb, StepMetrics):
                items.update(cb.bar)
        return items


class RunCSVLogger(Logger):
    """metrics.csv directly in the run folder, a row per logged step, columns sorted; a resumed run appends to its
    curve (StepBook.start_metrics cuts the file back to the checkpoint's step first). Lightning's CSVLogger (2.6)
    deletes an existing metrics.csv when it starts, so the run folder has its own writer on Lightning's public API."""

    def __init__(self, run_dir: Path):
        super().__init__()
        self.path = Path(run_dir) / "metrics.csv"
        self.rows: list[dict[str, Any]] = []
        self.keys: list[str] | None = None  # the file's columns, once known

    @property
    def name(self) -> str:
        return "run"

    @property
    def version(self) -> str:
        return ""

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass  # the run folder's config.yaml holds them

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        row = {k: v.item() if isinstance(v, Tensor) else v for k, v in metrics.items()}
        self.rows.append({**row, "step": step})

    @rank_zero_only
    def save(self) -> None:
        """Append the rows logged since the last save; a new column rewrites the file with the wider header."""
        if not self.rows:
            return
        if self.keys is None:  # the header of a file a previous session wrote, read once per process
            self.keys = []
            if self.path.is_file():
                with open(self.path, newline="") as f:
                    self.keys = list(csv.DictReader(f).fieldnames or [])
        if self.keys and set().union(*self.rows) <= set(self.keys):
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.keys).writerows(self.rows)
        else:  # a new column: rewrite the file under the wider header
            old_rows = []
            if self.keys:
                with open(self.path, newline="") as f:
                    old_rows = list(csv.DictReader(f))
            self.keys = sorted(set(self.keys).union(*self.rows))
            with open(self.path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.keys)
                writer.writeheader()
                writer.writerows(old_rows + self.rows)
        self.rows = []

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()
