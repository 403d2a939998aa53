"""The learning-rate schedule, one function for pretraining and fine-tuning (a LambdaLR multiplier of the peak LR).

Linear warmup from peak / warmup at step 0 (fairseq's, never 0), then either the paper's linear decay to 0 at the
last step (RoBERTa §3.1, Table 10: `decay=None`), or warmup-stable-decay: the peak held until the last `decay`
steps, which fall linearly to 0. The second keeps the LR high through MLM's early plateau, where a short linear
schedule has already decayed (the demo measurements in docs/results.md).
"""

from __future__ import annotations


def lr_factor(step: int, warmup: int, total: int, decay: int | None = None) -> float:
    """Multiplier of the peak LR for optimizer step `step` (from 0) of `total`: warmup, then hold the peak until the
    last `decay` steps (None: no hold, decay right after warmup), then linear decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup) if decay is None else max(1, decay)
    return max(0.0, min(1.0, (total - step) / span))
