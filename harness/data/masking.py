"""BERT masking as a pure function of (seed, example index, epoch key) — the Table 1 factor.

dynamic: the key is the epoch, so every pass draws a new mask (RoBERTa §4.1).
static:  the key is epoch mod K, so each sequence cycles through K fixed masks — the effect of BERT's 10x
         duplicated preprocessing (each mask seen 4 times in 40 epochs) without the 10x copy on disk.
Because masks depend on nothing else, batches are identical whatever the number of workers or ranks.
"""

from __future__ import annotations

import numpy as np

from harness.config import DataConfig
from harness.tokens import BOS, EOS, IGNORE_INDEX, MASK, PAD, SPECIAL_TOKENS

_DOMAIN = 0x3A5C  # separates the masking stream from other uses of the seed


def epoch_key(cfg: DataConfig, epoch: int) -> int:
    return epoch % cfg.static_masks if cfg.masking == "static" else epoch


def is_candidate(ids: np.ndarray) -> np.ndarray:
    """True at the tokens masking may select: all but <s>, </s>, <pad> and <mask> (<unk> is predicted like a word)."""
    return (ids != BOS) & (ids != EOS) & (ids != PAD) & (ids != MASK)


def _stream(seed: int, index: int, key: int) -> np.random.Generator:
    return np.random.default_rng([seed, _DOMAIN, index, key])


def _n_selected(n_candidates: int, cfg: DataConfig, rng: np.random.Generator) -> int:
    # Probabilistic rounding keeps the expected rate exactly mask_prob for short sequences too (as fairseq).
    return min(n_candidates, int(cfg.mask_prob * n_candidates + rng.random()))


def n_selected(n_candidates: int, cfg: DataConfig, seed: int, index: int, key: int) -> int:
    """How many positions `mask_tokens` selects in example `index` under epoch key `key`, from its number of
    candidates alone: the count is the first draw of the same stream, so a step's total needs no tokens."""
    return _n_selected(n_candidates, cfg, _stream(seed, index, key))


def mask_tokens(ids: np.ndarray, cfg: DataConfig, vocab_size: int, seed: int, index: int, key: int):
    """Return (inputs, labels) for one sequence: 15% of non-special tokens selected; of those 80% <mask>,
    10% a random token, 10% unchanged (cfg's probabilities); labels hold the original id there, IGNORE_INDEX
    elsewhere."""
    rng = _stream(seed, index, key)
    candidates = np.flatnonzero(is_candidate(ids))
    n = _n_selected(len(candidates), cfg, rng)
    chosen = rng.choice(candidates, size=n, replace=False)
    labels = np.full(ids.shape, IGNORE_INDEX, dtype=np.int64)
    labels[chosen] = ids[chosen]
    inputs = ids.astype(np.int64, copy=True)
    u = rng.random(n)
    to_random = u < cfg.random_token_prob
    to_mask = u >= cfg.random_token_prob + cfg.leave_unmasked_prob
    inputs[chosen[to_mask]] = MASK
    # random replacements are drawn from the ordinary tokens, above the special ones
    inputs[chosen[to_random]] = rng.integers(len(SPECIAL_TOKENS), vocab_size, size=int(to_random.sum()))
    return inputs, labels
