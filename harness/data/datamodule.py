"""Batches for pretraining: the input-format view, masking, token-budget step plans, and the LightningDataModule.

Equal tokens per step (§4.2): FULL-SENTENCES, the reference, takes exactly `batch_size` sequences per step; the
other formats fill each step to `batch_size` x the mean FULL-SENTENCES length in tokens, so shorter inputs
(SENTENCE-PAIR, DOC-SENTENCES near document ends) get more sequences, as the paper raises their batch size.

The global step plan is a pure function of (seed, epoch); each step is cut into `accumulate x world_size`
micro-batches and rank r takes its share, so every rank and worker count sees the same data. Because masks are a
pure function too, every rank also knows the whole step's masked-token and sequence counts, which each training
micro-batch carries (`step_predicted`, `step_sequences`) so the loss can be normalised as fairseq's: per step.
"""

from __future__ import annotations

from dataclasses import replace

import lightning.pytorch as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from harness.config import DataConfig, OptimConfig
from harness.data import yardstick
from harness.data.formats import Examples, cached_array, cached_examples, select_documents
from harness.data.masking import epoch_key, is_candidate, mask_tokens, n_selected
from harness.data.pipeline import PreparedData, Split
from harness.errors import UserError
from harness.tokens import BOS, EOS, IGNORE_INDEX, PAD

REFERENCE_FORMAT = "full_sentences"
_PLAN_DOMAIN = 0x9A7


class MaskedLMDataset(Dataset):
    """Item (example index, epoch key) → one masked sequence; no state, so workers need no epoch signal."""

    def __init__(self, split: Split, examples: Examples, cfg: DataConfig, vocab_size: int, seed: int):
        self.tokens, self.ex, self.cfg, self.vocab_size, self.seed = split.tokens, examples, cfg, vocab_size, seed

    def __len__(self) -> int:
        return len(self.ex)

    def assemble(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Token ids `<s> A </s> [B </s>]` and token types (0 for A, 1 for B) of example i."""
        lo, mid, hi = self.ex.offsets[i], self.ex.b_start[i], self.ex.offsets[i + 1]
        parts, b_from = [np.array([BOS])], None
        for j in range(lo, hi):
            if j == mid:
                parts.append(np.array([EOS]))
                b_from = sum(len(p) for p in parts)
            start, end = self.ex.spans[j]
            parts.append(np.array([EOS]) if start < 0 else np.asarray(self.tokens[start:end]))
        parts.append(np.array([EOS]))
        ids = np.concatenate(parts).astype(np.int64)
        types = np.zeros(len(ids), dtype=np.int64)
        if b_from is not None:
            types[b_from:] = 1
        return ids, types

    def __getitem__(self, item: tuple[int, ...]) -> dict:
        """item: (example index, epoch key), in training followed by its step's totals (`StepSampler`)."""
        i, key, *step_totals = item
        ids, types = self.assemble(i)
        inputs, labels = mask_tokens(ids, self.cfg, self.vocab_size, self.seed, i, key)
        out = {"input_ids": inputs, "labels": labels}
        if step_totals:
            out["step_predicted"], out["step_sequences"] = step_totals
        if self.ex.nsp is not None:
            out["token_type_ids"] = types
            out["nsp_label"] = int(self.ex.nsp[i])
        return out


def collate(items: list[dict]) -> dict:
    """Pad to the longest sequence in the micro-batch; attention_mask is None when nothing is padded."""
    lengths = [len(x["input_ids"]) for x in items]
    T, B = max(lengths), len(items)
    input_ids = torch.full((B, T), PAD, dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    for b, x in enumerate(items):
        input_ids[b, : lengths[b]] = torch.from_numpy(x["input_ids"])
        labels[b, : lengths[b]] = torch.from_numpy(x["labels"])
    batch = {"input_ids": input_ids, "labels": labels, "n_tokens": sum(lengths), "attention_mask": None}
    if min(lengths) < T:
        batch["attention_mask"] = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    if "step_predicted" in items[0]:  # the same in every item of a training micro-batch
        batch["step_predicted"], batch["step_sequences"] = items[0]["step_predicted"], items[0]["step_sequences"]
    if "token_type_ids" in items[0]:
        types = torch.zeros((B, T), dtype=torch.long)
        for b, x in enumerate(items):
            types[b, : lengths[b]] = torch.from_numpy(x["token_type_ids"])
        batch["token_type_ids"] = types
        batch["nsp_labels"] = torch.tensor([x["nsp_label"] for x in items], dtype=torch.long)
    return batch


def plan_epoch(lengths: np.ndarray, seed: int, epoch: int, batch_size: int, token_budget: int | None):
    """Optimizer steps of one epoch, each an array of example indices. Fixed `batch_size` sequences per step, or,
    with a token budget, consecutive shuffled examples grouped so each step holds `token_budget` tokens on average
    (an example joins the step in which its first token falls). The incomplete last step is dropped."""
    order = np.random.default_rng([seed, _PLAN_DOMAIN, epoch]).permutation(len(lengths))
    if token_budget is None:
        n = len(order) // batch_size
        return list(order[: n * batch_size].reshape(n, batch_size))
    starts = np.cumsum(lengths[order]) - lengths[order]
    step_of = starts // token_budget
    n = int(np.cumsum(lengths[order])[-1] // token_budget)  # only steps whose budget is fully covered
    bounds = np.searchsorted(step_of, np.arange(n + 1))
    return [order[bounds[s] : bounds[s + 1]] for s in range(n)]


def candidate_counts(tokens: np.ndarray, ex: Examples, chunk: int = 1 << 26) -> np.ndarray:
    """(E,) tokens of each example that masking may select (`is_candidate`): its text tokens, less any special id
    the text itself holds (a literal "<s>" in a web page is tokenised as one); the added <s> and </s> never are."""
    # positions of the non-candidate ids in the split, found a chunk at a time: few, so sorted and small
    excluded = np.concatenate([np.flatnonzero(~is_candidate(tokens[s : s + chunk])) + s
                               for s in range(0, len(tokens), chunk)] or [np.zeros(0, dtype=np.int64)])
    start, end = ex.spans[:, 0], ex.spans[:, 1]
    inside = np.searchsorted(excluded, end) - np.searchsorted(excluded, start)
    per_span = np.where(start >= 0, end - start - inside, 0)  # a (-1, -1) row is an added </s>
    total = np.concatenate([[0], np.cumsum(per_span)])
    return total[ex.offsets[1:]] - total[ex.offsets[:-1]]


def step_totals(step: np.ndarray, candidates: np.ndarray, cfg: DataConfig, seed: int, key: int) -> tuple[int, int]:
    """(masked tokens, sequences) of one whole optimizer step, over all its micro-batches and ranks: `n_selected`
    is the rule `mask_tokens` applies, so every rank computes the same totals without communicating."""
    return sum(n_selected(int(candidates[i]), cfg, seed, int(i), key) for i in step), len(step)


class StepSampler(Sampler):
    """Yields this rank's micro-batches as lists of (example index, epoch key, step's masked tokens, step's
    sequences): the step totals are the loss's denominators (`PretrainModule.training_step`)."""

    def __init__(self, lengths, candidates, cfg: DataConfig, seed, batch_size, token_budget, accumulate, world_size,
                 rank):
        self.lengths, self.candidates, self.cfg, self.seed = lengths, candidates, cfg, seed
        self.batch_size, self.token_budget = batch_size, token_budget
        self.chunks, self.rank, self.accumulate = accumulate * world_size, rank, accumulate
        self.epoch, self.start = 0, 0
        self._plan: list[np.ndarray] = []
        self._plan_epoch: int | None = None

    def set_epoch(self, epoch: int) -> None:
        """Called by the training layer at each epoch start (Lightning only calls it on samplers, not on a
        batch_sampler like this one)."""
        self.epoch = epoch

    def set_start(self, micro_batch: int) -> None:
        """Skip this many micro-batches of the current epoch on the next pass (exact mid-epoch resume)."""
        self.start = micro_batch

    def steps(self) -> list[np.ndarray]:
        """This epoch's plan, computed once per epoch (len() and iteration both read it)."""
        if self._plan_epoch != self.epoch:
            self._plan = plan_epoch(self.lengths, self.seed, self.epoch, self.batch_size, self.token_budget)
            self._plan_epoch = self.epoch
        return self._plan

    def __len__(self) -> int:
        return len(self.steps()) * self.accumulate

    def __iter__(self):
        key = epoch_key(self.cfg, self.epoch)
        start, self.start = self.start, 0
        k = 0
        for step in self.steps():
            parts = np.array_split(step, self.chunks)
            totals = None  # computed only for steps this pass yields: a resume pays nothing for the steps it skips
            for part in parts[self.rank * self.accumulate : (self.rank + 1) * self.accumulate]:
                if k >= start:
                    totals = totals or step_totals(step, self.candidates, self.cfg, self.seed, key)
                    yield [(int(i), key, *totals) for i in part]
                k += 1


class PretrainDataModule(L.LightningDataModule):
    def __init__(self, prepared: PreparedData, data: DataConfig, optim: OptimConfig, seed: int,
                 num_workers: int = 2, world_size: int = 1, rank: int = 0, valid_sequences: int = 512):
        super().__init__()
        self.prepared, self.cfg, self.optim, self.seed = prepared, data, optim, seed
        self.num_workers, self.world_size, self.rank = num_workers, world_size, rank
        self.valid_sequences = valid_sequences
        self.accumulate = optim.accumulation(world_size)
        self.train_sampler: StepSampler | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.trainer is not None:
            self.world_size, self.rank = self.trainer.world_size, self.trainer.global_rank
        if self.train_sampler is not None:
            return
        prepared, vocab = self.prepared, self.prepared.vocab_size
        train = prepared.split("train")
        self.train_examples, folder = cached_examples(prepared, "train", self.cfg, self.seed)
        self.train_set = MaskedLMDataset(train, self.train_examples, self.cfg, vocab, self.seed)
        self.token_budget = None
        if self.cfg.input_format != REFERENCE_FORMAT:
            ref, _ = cached_examples(prepared, "train", self.cfg, self.seed, REFERENCE_FORMAT)
            self.token_budget = int(round(self.optim.batch_size * ref.lengths.mean()))
        candidates = cached_array(folder / "candidates.npy",
                                  lambda: candidate_counts(train.tokens, self.train_examples))
        self.train_sampler = StepSampler(self.train_examples.lengths, candidates, self.cfg, self.seed,
                                         self.optim.batch_size, self.token_budget, self.accumulate, self.world_size,
                                         self.rank)
        if len(self.train_sampler.steps()) == 0:
            raise UserError(f"data.corpus={self.cfg.corpus}: too little text for one step of optim.batch_size="
                            f"{self.optim.batch_size} ({len(self.train_examples)} sequences); lower the batch size")
        valid = self.prepared.split("valid")
        # Data size (Table 4) shrinks the training documents only: every arm is measured on the same held-out set.
        self.valid_examples, _ = cached_examples(prepared, "valid", replace(self.cfg, data_fraction=1.0, data_tokens=0),
                                                 self.seed)
        self.valid_set = MaskedLMDataset(valid, self.valid_examples, self.cfg, vocab, self.seed)
        # The yardstick: the same held-out windows and positions for every arm (harness.data.yardstick).
        ycfg = yardstick.yardstick_config(self.cfg)
        windows, yardstick_folder = cached_examples(prepared, "valid", ycfg, yardstick.SEED)
        self.yardstick_set = MaskedLMDataset(valid, windows, ycfg, vocab, yardstick.SEED)
        n = min(self.valid_sequences, len(self.yardstick_set))
        items = [self.yardstick_set[(i, 0)] for i in range(n)]
        labels = np.concatenate([np.asarray(item["labels"]) for item in items])
        # each target's left neighbour in the text: the label where the yardstick masked it, else the input
        text = np.concatenate([np.where(np.asarray(it["labels"]) != IGNORE_INDEX, it["labels"], it["input_ids"])
                               for it in items])
        picked = np.flatnonzero(labels != IGNORE_INDEX)  # never position 0 (<s>), so picked - 1 is in its sequence
        targets = labels[picked]
        counts = self._split_unigram_counts()
        self.yardstick_unigram_ppl = yardstick.unigram_ppl(counts, targets)
        # counted once per prepared data and yardstick view (up to a minute at scale), not at every run's start
        bigram_file = yardstick_folder / f"bigram_ppl_{n}.npy"
        self.yardstick_bigram_ppl = float(cached_array(
            bigram_file, lambda: np.array(yardstick.bigram_ppl(train.tokens, counts, text[picked - 1], targets))))
        # The short-context yardstick: the same text, one sentence at a time (yardstick.short_examples).
        self.short_yardstick_set = MaskedLMDataset(valid, yardstick.short_examples(self.yardstick_set.ex, n), ycfg,
                                                   vocab, yardstick.SEED)
        short = np.concatenate([np.asarray(self.short_yardstick_set[(i, 0)]["labels"])
                                for i in range(len(self.short_yardstick_set))])
        self.short_yardstick_unigram_ppl = yardstick.unigram_ppl(counts, short[short != IGNORE_INDEX])

    def train_unigram_counts(self) -> np.ndarray:
        """(V,) token counts of the training text this arm uses: the whole split, or the documents of its data size
        (Table 4), so a smaller arm's output-bias init (model.output_bias_init) knows nothing of text it never sees."""
        if self.cfg.data_fraction == 1.0 and not self.cfg.data_tokens:
            return self._split_unigram_counts()
        train = self.prepared.split("train")
        return yardstick.document_unigram_counts(train.tokens, train.sentences[train.documents],
                                                 select_documents(train, self.cfg), self.prepared.vocab_size)

    def _split_unigram_counts(self) -> np.ndarray:
        """(V,) token counts of the whole training split, cached beside the prepared data."""
        train = self.prepared.split("train")
        return cached_array(self.prepared.dir / "train.unigram_counts.npy",
                            lambda: yardstick.unigram_counts(train.tokens, self.prepared.vocab_size))

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_sampler.steps())

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.train_sampler)

    def val_dataloader(self) -> list[DataLoader]:
        """[the yardstick (yardstick.LOADER_INDEX), the arm's own format, the short-context yardstick
        (yardstick.SHORT_LOADER_INDEX)]: the first `valid_sequences` of the first two, the sentences of the
        yardstick's windows for the third; fixed masks (epoch key 0), so the perplexities are comparable across
        steps."""
        return [self._fixed_loader(self.yardstick_set), self._fixed_loader(self.valid_set), self._short_loader()]

    def _short_loader(self) -> DataLoader:
        """Consecutive sentences per micro-batch, as many as fit the long yardstick's micro-batch once padded."""
        budget = self.optim.micro_batch_size * self.cfg.max_seq_len  # padded tokens
        batches: list[list] = [[]]
        longest = 0
        for i, n in enumerate(np.asarray(self.short_yardstick_set.ex.lengths)):
            if batches[-1] and (len(batches[-1]) + 1) * max(longest, n) > budget:
                batches.append([])
                longest = 0
            batches[-1].append((i, 0))
            longest = max(longest, int(n))
        return self._loader(self.short_yardstick_set, [b for b in batches if b][self.rank :: self.world_size])

    def _fixed_loader(self, dataset: MaskedLMDataset) -> DataLoader:
        n = min(self.valid_sequences, len(dataset))
        mb = self.optim.micro_batch_size
        batches = [[(i, 0) for i in range(s, min(s + mb, n))] for s in range(0, n, mb)]
        return self._loader(dataset, batches[self.rank :: self.world_size])

    def _loader(self, dataset: Dataset, batch_sampler) -> DataLoader:
        return DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available())
