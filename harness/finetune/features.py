"""Examples -> token ids as the encoder saw text in pretraining, padded per batch.

A pair is RoBERTa's `<s> A </s></s> B </s>` with no segment ids, except for an encoder pretrained with NSP, which
gets its own pretraining layout, BERT's `<s> A </s> B </s>` with segment ids 0 for A and 1 for B. The run's own
tokenizer encodes each text without specials (byte-level BPE adds the prefix space itself); the specials are added
here, so ids do not depend on a post-processor saved in tokenizer.json.
"""

from __future__ import annotations

import numpy as np
import torch
from tokenizers import Tokenizer
from torch.utils.data import Sampler

from harness.finetune.readers import ChoiceExample, TextExample
from harness.tokens import BOS, EOS, PAD

# input_ids: list[int], or one list per option; label; type_from: where segment B starts (NSP encoders only; one per
# option); QA adds its own keys (see qa.py).
Feature = dict


def load_tokenizer(path) -> Tokenizer:
    tok = Tokenizer.from_file(str(path))
    tok.no_truncation()  # truncation and padding happen here, per task
    tok.no_padding()
    return tok


def _encode(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    # encode_batch_fast: the same ids without character offsets, which only QA reads (qa.py encodes for itself)
    return [e.ids for e in tok.encode_batch_fast(texts, add_special_tokens=False)]


def prefix(a: list[int], nsp: bool) -> list[int]:
    """The tokens before segment B: `<s> a </s></s>`, or `<s> a </s>` for an NSP encoder."""
    return [BOS, *a, EOS] if nsp else [BOS, *a, EOS, EOS]


def join(a: list[int], b: list[int] | None, max_len: int, nsp: bool) -> tuple[list[int], int | None]:
    """Ids of `a` alone or of the pair, cutting the longer text first until it fits (longest-first); and where
    segment B starts for an NSP encoder (else None)."""
    if b is None:
        return [BOS, *a[: max_len - 2], EOS], None
    la, lb, budget = len(a), len(b), max_len - len(prefix([], nsp)) - 1
    while la + lb > budget:
        la, lb = (la - 1, lb) if la >= lb else (la, lb - 1)
    head = prefix(a[:la], nsp)
    return [*head, *b[:lb], EOS], len(head) if nsp else None


def _feature(ids: list[int], type_from: int | None, **rest) -> Feature:
    return {"input_ids": ids, **({"type_from": type_from} if type_from is not None else {}), **rest}


def text_features(tok: Tokenizer, examples: list[TextExample], max_len: int, nsp: bool) -> list[Feature]:
    a = _encode(tok, [e.text_a for e in examples])
    pair = examples and examples[0].text_b is not None
    b = _encode(tok, [e.text_b for e in examples]) if pair else [None] * len(examples)
    return [_feature(*join(x, y, max_len, nsp), label=e.label) for x, y, e in zip(a, b, examples)]


def choice_features(tok: Tokenizer, examples: list[ChoiceExample], max_len: int, nsp: bool) -> list[Feature]:
    """One (context, question + option) pair per option (fairseq's RACE recipe: a cloze question's `_` is filled
    with the option). The context is cut to fit; the question-option part keeps at most half."""
    qa_ids = iter(_encode(tok, [_question_option(e.question, o) for e in examples for o in e.options]))
    contexts = _encode(tok, [e.context for e in examples])
    features = []
    for e, context in zip(examples, contexts):
        options, type_from = [], []
        for _ in e.options:
            qa = next(qa_ids)[: max_len // 2]
            head = prefix(context[: max_len - len(qa) - len(prefix([], nsp)) - 1], nsp)
            options.append([*head, *qa, EOS])
            type_from.append(len(head))
        features.append(_feature(options, type_from if nsp else None, label=e.label))
    return features


def _question_option(question: str, option: str) -> str:
    return question.replace("_", option) if "_" in question else f"{question} {option}"


def pad(rows: list[list[int]]) -> torch.Tensor:
    """(N, T_max) long, padded with <pad>."""
    out = torch.full((len(rows), max(len(r) for r in rows)), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def collate(features: list[Feature]) -> dict[str, torch.Tensor]:
    """input_ids (B, T), or (B, options, T) for multiple choice; attention_mask True at real tokens; label (B,)."""
    first = features[0]["input_ids"]
    if isinstance(first[0], list):  # multiple choice
        n = len(first)
        ids = pad([opt for f in features for opt in f["input_ids"]]).view(len(features), n, -1)
    else:
        ids = pad([f["input_ids"] for f in features])
    batch = {"input_ids": ids, "attention_mask": ids != PAD}
    if "type_from" in features[0]:  # segment ids: 1 from where B starts to the last real token
        starts = torch.tensor([f["type_from"] for f in features]).view(*ids.shape[:-1], 1)
        batch["token_type_ids"] = ((torch.arange(ids.shape[-1]) >= starts) & batch["attention_mask"]).long()
    if "label" in features[0]:
        dtype = torch.float if isinstance(features[0]["label"], float) else torch.long
        batch["label"] = torch.tensor([f["label"] for f in features], dtype=dtype)
    for key in ("start", "end"):  # QA training targets
        if key in features[0]:
            batch[key] = torch.tensor([f[key] for f in features], dtype=torch.long)
    return batch


def _length(f: Feature) -> int:
    ids = f["input_ids"]
    return max(len(option) for option in ids) if isinstance(ids[0], list) else len(ids)


class LengthGroupedBatches(Sampler):
    """Shuffled batches of similar-length features, so little of a CPU step is spent on padding: each epoch,
    shuffle, cut into mega-batches of MEGA batches, sort each by length, split into batches, shuffle the batches
    (as HF's group_by_length; fairseq sorts globally)."""

    MEGA = 50

    def __init__(self, features: list[Feature], batch_size: int, seed: int):
        self.lengths = np.array([_length(f) for f in features])
        self.batch_size, self.rng = batch_size, np.random.default_rng(seed)

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self):
        order, mega = self.rng.permutation(len(self.lengths)), self.MEGA * self.batch_size
        batches = []
        for i in range(0, len(order), mega):
            chunk = order[i : i + mega]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches += [chunk[j : j + self.batch_size].tolist() for j in range(0, len(chunk), self.batch_size)]
        yield from (batches[k] for k in self.rng.permutation(len(batches)))
