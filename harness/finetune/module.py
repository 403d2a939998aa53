"""The fine-tuning LightningModule: encoder + task head, the loss per task kind, AdamW with the paper's schedule,
and a dev score after every epoch (kept in `history`, so the runner can take the best epoch: early stopping)."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.model import MaskedLM
from harness.schedule import lr_factor


class FinetuneModule(L.LightningModule):
    def __init__(self, model: MaskedLM, head: nn.Module, kind: str, lr: float, warmup_ratio: float,
                 weight_decay: float, beta2: float, eps: float, score: Callable[[list[Tensor]], dict[str, float]]):
        super().__init__()
        model.mlm_head = model.nsp_head = None  # pretraining heads: not used downstream
        self.model, self.head, self.kind = model, head, kind
        self.lr, self.warmup_ratio, self.weight_decay, self.beta2, self.eps = lr, warmup_ratio, weight_decay, beta2, eps
        self.score = score  # dev outputs, in dev order -> metrics
        self.history: list[dict[str, float]] = []  # one row per epoch: epoch, train_loss, dev metrics
        self._dev_outputs: list[Tensor] = []
        self._train_losses: list[Tensor] = []

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Logits: (B, classes) classification, (B,) regression, (B, T, 2) QA start/end, (B, options) choice."""
        ids, mask, types = batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")
        if self.kind == "multiple_choice":  # every option is a sequence of its own; one score each
            B, N, T = ids.shape
            flat = None if types is None else types.view(B * N, T)
            return self.head(self.model.encode(ids.view(B * N, T), mask.view(B * N, T), flat)).view(B, N)
        out = self.head(self.model.encode(ids, mask, types))
        if self.kind == "qa":
            return out.masked_fill(~mask[..., None], -1e4)  # padding is never an answer
        return out.squeeze(-1) if self.kind == "regression" else out

    def loss(self, out: Tensor, batch: dict[str, Tensor]) -> Tensor:
        if self.kind == "regression":
            return F.mse_loss(out.float(), batch["label"])
        if self.kind == "qa":  # mean of the start and end cross-entropies (BERT)
            return (F.cross_entropy(out[..., 0], batch["start"]) + F.cross_entropy(out[..., 1], batch["end"])) / 2
        return F.cross_entropy(out, batch["label"])

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.loss(self(batch), batch)
        self._train_losses.append(loss.detach())
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._dev_outputs.append(self(batch).float().cpu())

    def on_validation_epoch_end(self) -> None:
        losses = self._train_losses
        train_loss = torch.stack(losses).mean().item() if losses else math.nan
        scores = self.score(self._dev_outputs)
        self.history.append({"epoch": self.current_epoch + 1, "train_loss": train_loss, **scores})
        self._dev_outputs, self._train_losses = [], []

    def configure_optimizers(self):
        decay = [p for n, p in self.named_parameters() if p.ndim >= 2 and "norm" not in n]  # not biases, LayerNorm
        rest = [p for n, p in self.named_parameters() if not (p.ndim >= 2 and "norm" not in n)]
        groups = [{"params": decay, "weight_decay": self.weight_decay}, {"params": rest, "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=self.lr, betas=(0.9, self.beta2), eps=self.eps)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        # linear warmup to the peak, then linear decay to 0 (RoBERTa Table 10): pretraining's schedule
        schedule = partial(lr_factor, warmup=int(self.warmup_ratio * total), total=total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
