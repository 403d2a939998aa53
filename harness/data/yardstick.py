"""The held-out yardstick: one set of masked sequences that every arm of a study is scored on.

Each arm's own validation set is in its own input format, so SENTENCE-PAIR is scored on short single-sentence
contexts and FULL-SENTENCES on whole windows: their perplexities differ by context length alone. The yardstick is
the same text and the same positions for every arm: FULL-SENTENCES windows of the study's `max_seq_len` over the
whole valid split (whatever the arm's data size), the first `n`, no segment B and no NSP, positions chosen by one
fixed seed (not the run's), and every chosen position shown as `<mask>` (no random or kept tokens), so a model that
ignores context cannot do better than the unigram distribution there.

That no-learning reference is the yardstick's unigram perplexity: token frequencies counted on the training split
(add-one), scored at the yardstick's positions. The ratio ppl / unigram ppl says how far an arm got past it. The
other end is the left-bigram count model's perplexity at the same positions (`bigram_ppl`): what trivial local
statistics reach, so a reader sees where between "no context" and "one word of context" an arm stands.

Windows are FULL-SENTENCES' own training inputs: DOC-SENTENCES never sees a mid-sequence `</s>`, and the pair formats
never see long single-segment windows. So Table 2 also scores every arm on a short-context yardstick
(`short_examples`): the same text, each sentence on its own as `<s> sentence </s>`, every chosen position `<mask>`,
with its own unigram reference. A Table 2 perplexity claim is judged on both (analysis.tables).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from harness.config import DataConfig
from harness.data.formats import Examples

SEED = 0x7A5D  # the yardstick's masks: one seed for every arm and run
LOADER_INDEX = 0  # the yardstick's place among the validation loaders (the arm's own format is 1)
SHORT_LOADER_INDEX = 2  # the short-context yardstick's place (after the arm's own, so 0 and 1 keep their meaning)
_COUNT_CHUNK = 1 << 26  # tokens per bincount call: bounded memory on a memmap of billions of tokens
BIGRAM_WEIGHT = 0.8  # the bigram's share in its interpolation with the unigram (the measured reference)
BIGRAM_MAX_TOKENS = 1 << 28  # pairs counted on at most the first 268M training tokens: ~a minute, whatever the corpus
_PAIR_CHUNK = 1 << 24  # tokens per pass when counting pairs (int64 keys: 128 MB a chunk)


MASK_PROB = 0.15  # the paper's rate, whatever an arm trains with (data.mask_prob), so every run is scored alike
DEPENDS_ON = ("corpus", "tokenizer", "vocab_size", "lowercase", "tokenizer_path", "valid_fraction", "max_seq_len",
              "splitter", "tokenizer_sample_mb")
"""The data settings the yardstick keeps from the arm (yardstick_config fixes the others; static_masks and
decode_errors it keeps but never uses): arms that differ in one are scored on different yardsticks, which the
analysis refuses (analysis.load.YARDSTICK_KEYS, kept equal to this by a test)."""


def yardstick_config(cfg: DataConfig) -> DataConfig:
    """The arm's data settings with everything the yardstick fixes: format, whole split, all-<mask> masking at
    the paper's rate (an arm trained at a higher mask rate sees more context here than in training)."""
    return replace(cfg, input_format="full_sentences", masking="dynamic", nsp_positive_prob=0.5, data_fraction=1.0,
                   data_tokens=0, mask_prob=MASK_PROB, random_token_prob=0.0, leave_unmasked_prob=0.0)


def short_examples(windows: Examples, n: int) -> Examples:
    """The short-context yardstick's view: every sentence of the first `n` yardstick windows on its own (a sentence
    the windows cut into pieces, as FULL-SENTENCES does past max_seq_len, piece by piece), document separators left
    out. The same text as the windows, with one sentence of context instead of a window."""
    rows = np.asarray(windows.spans[: windows.offsets[n]])
    window = np.repeat(np.arange(n), np.diff(np.asarray(windows.offsets[: n + 1])))
    keep = rows[:, 0] >= 0  # a (-1, -1) row is a document separator
    spans = rows[keep].astype(np.int64)
    m = len(spans)
    return Examples(spans=spans, offsets=np.arange(m + 1, dtype=np.int64), b_start=np.arange(1, m + 1, dtype=np.int64),
                    nsp=None, docs=np.asarray(windows.docs)[window[keep]], lengths=spans[:, 1] - spans[:, 0] + 2)


def unigram_counts(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """(V,) occurrences of each token id in `tokens` (a memmap is read in chunks)."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for start in range(0, len(tokens), _COUNT_CHUNK):
        counts += np.bincount(np.asarray(tokens[start : start + _COUNT_CHUNK]), minlength=vocab_size)[:vocab_size]
    return counts


def document_unigram_counts(tokens: np.ndarray, doc_bounds: np.ndarray, docs: np.ndarray, vocab_size: int
                            ) -> np.ndarray:
    """(V,) occurrences of each token id in documents `docs`, document d being tokens[doc_bounds[d]:doc_bounds[d+1]]
    (read in chunks, as `unigram_counts`)."""
    keep = np.zeros(len(doc_bounds) - 1, dtype=bool)
    keep[docs] = True
    counts = np.zeros(vocab_size, dtype=np.int64)
    for start in range(0, len(tokens), _COUNT_CHUNK):
        chunk = np.asarray(tokens[start : start + _COUNT_CHUNK])
        doc = np.searchsorted(doc_bounds, np.arange(start, start + len(chunk)), side="right") - 1
        counts += np.bincount(chunk[keep[doc]], minlength=vocab_size)[:vocab_size]
    return counts


def log_unigram(counts: np.ndarray) -> np.ndarray:
    """Add-one log-probabilities of the counts: the unigram model that `unigram_ppl` scores."""
    return np.log(counts + 1.0) - math.log(counts.sum() + len(counts))


def unigram_ppl(counts: np.ndarray, targets: np.ndarray) -> float:
    """Perplexity of add-one unigram probabilities at the target ids: the score of a model that uses no context."""
    return float(math.exp(-log_unigram(counts)[targets].mean())) if len(targets) else math.nan


def bigram_ppl(tokens: np.ndarray, counts: np.ndarray, prev: np.ndarray, targets: np.ndarray,
               weight: float = BIGRAM_WEIGHT) -> float:
    """Perplexity at `targets` of the left-bigram count model given each target's true left neighbour `prev`:
    P(t | p) = weight * c(p, t) / c(p) + (1 - weight) * the add-one unigram's P(t), or the unigram alone where p was
    never seen (e.g. <s>). Pairs are counted on the first BIGRAM_MAX_TOKENS of `tokens` (the training split), and
    only those the targets need; `counts` are the unigram counts of the whole split. The left neighbour is the
    text's, even where the yardstick masks it (15% of positions), so this reference is, if anything, too good."""
    vocab = len(counts)
    prev, targets = prev.astype(np.int64), targets.astype(np.int64)
    wanted = np.unique(prev * vocab + targets)
    pairs = np.zeros(len(wanted), dtype=np.int64)
    prev_seen = np.zeros(vocab, dtype=np.int64)
    end = min(len(tokens), BIGRAM_MAX_TOKENS)
    for start in range(0, end - 1, _PAIR_CHUNK):
        chunk = np.asarray(tokens[start : min(end, start + _PAIR_CHUNK + 1)]).astype(np.int64)
        keys = chunk[:-1] * vocab + chunk[1:]
        prev_seen += np.bincount(chunk[:-1], minlength=vocab)[:vocab]
        at = np.minimum(np.searchsorted(wanted, keys), len(wanted) - 1)
        hit = wanted[at] == keys
        pairs += np.bincount(at[hit], minlength=len(wanted))
    pair = pairs[np.searchsorted(wanted, prev * vocab + targets)]
    seen = prev_seen[prev]
    unigram = np.exp(log_unigram(counts)[targets])
    p = np.where(seen > 0, weight * pair / np.maximum(seen, 1) + (1 - weight) * unigram, unigram)
    return float(math.exp(-np.log(p).mean())) if len(targets) else math.nan
