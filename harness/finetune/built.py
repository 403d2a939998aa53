"""Fine-tuning tasks built from held-out text, for the paper's task shapes that no offline data has (shared/DATA.md).

No RACE, SQuAD or MNLI file can be had offline, and no pinned registry package carries human-labelled sentence pairs
or passages with questions. So two tasks are built, as the probing literature builds them, from the valid split of
the run's own corpus (harness.data.pipeline.held_out_documents): documents no run of the study trained on.

  gap_sentence       RACE's shape (DiscoEval's sentence position, as multiple choice): a passage of GAP_WINDOW
                     consecutive sentences with the middle one replaced by "___", and GAP_OPTIONS candidate sentences:
                     the one taken out and others drawn from other held-out documents. Fine-tuned through the
                     multiple-choice head and features that read the official RACE files (harness.finetune.features
                     .choice_features), so the same code path serves RACE at paper scale.
  sentence_relation  MNLI's shape (two segments, three labels): is B the sentence right after A ("next"), a sentence
                     of A's own document at least RELATION_GAP sentences away ("same_document"), or a sentence of
                     another held-out document ("other_document")? Through the pair features that read MNLI.
                     By construction it rewards what NSP trains: NSP's negatives come from another document, so an
                     NSP encoder has practised the "other_document" class (the tables print this).

Each held-out document goes wholly to train or to dev by a hash of its text (DEV_FRACTION), and distractors are drawn
from the same part, so no dev sentence is ever seen in fine-tuning. Everything is a function of the text and fixed
seeds; the result is cached as JSON lines under cache_root()/finetune/, keyed by the corpus and the valid split.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from harness.config import DataConfig
from harness.errors import UserError
from harness.files import cache_root
from harness.finetune.readers import ChoiceExample, TextExample

VERSION = 1  # bump when a builder or the split rule changes
DEV_FRACTION = 0.25  # share of held-out documents (by hash) whose examples form dev
GAP_WINDOW = 3  # sentences per passage, the middle one out (5: no larger gap at ~2x the tokens; docs/results.md)
GAP_OPTIONS = 4  # candidates per passage (RACE has 4): the true sentence and GAP_OPTIONS - 1 from other documents
GAP = "___"
RELATION_GAP = 3  # "same_document": B at least this many sentences from A, so it is not the next one
RELATION_LABELS = ("next", "same_document", "other_document")


def _doc_key(document: list[str]) -> float:
    digest = hashlib.blake2b("\n".join(document).encode(), digest_size=8, person=b"finetune-built").digest()
    return int.from_bytes(digest, "big") / 2**64


def gap_sentence(documents: list[list[str]], seed: int, window: int = GAP_WINDOW) -> list[ChoiceExample]:
    """Non-overlapping windows of `window` sentences of each document, the middle one the answer, shuffled among
    distractors from other documents of `documents`."""
    rng = np.random.default_rng(seed)
    owner = [(d, s) for d, doc in enumerate(documents) for s in range(len(doc))]  # every sentence, by document
    out = []
    for d, doc in enumerate(documents):
        for start in range(0, len(doc) - window + 1, window):
            passage = doc[start : start + window]
            middle = window // 2
            options = [passage[middle]]
            while len(options) < GAP_OPTIONS:
                od, os_ = owner[rng.integers(len(owner))]
                if od != d and documents[od][os_] not in options:
                    options.append(documents[od][os_])
            order = rng.permutation(GAP_OPTIONS)
            context = " ".join([*passage[:middle], GAP, *passage[middle + 1 :]])
            out.append(ChoiceExample(context, "", tuple(options[i] for i in order), int(np.argmax(order == 0))))
    return out


def sentence_relation(documents: list[list[str]], seed: int) -> list[TextExample]:
    """One pair per sentence A that has a next sentence, its label drawn uniformly from RELATION_LABELS (a document
    too short for a sentence RELATION_GAP away gives "next" or "other_document")."""
    rng = np.random.default_rng(seed)
    out = []
    for d, doc in enumerate(documents):
        for i in range(len(doc) - 1):
            far = [j for j in range(len(doc)) if abs(j - i) >= RELATION_GAP]
            label = int(rng.integers(len(RELATION_LABELS) if far else 2))
            label = label if far or label == 0 else 2
            if label == 0:
                b = doc[i + 1]
            elif label == 1:
                b = doc[far[rng.integers(len(far))]]
            else:
                other = documents[(d + 1 + rng.integers(len(documents) - 1)) % len(documents)]
                b = other[rng.integers(len(other))]
            out.append(TextExample(doc[i], b, label))
    return out


@dataclass(frozen=True)
class Built:
    name: str
    describes: str
    """Recorded in every result as `built: <describes>`; gap_sentence's names its passage length, `{window}`."""
    build: Callable[..., list]
    """(documents, seed, **shape) -> examples."""


BUILT = {b.name: b for b in (
    Built("gap_sentence", "gap sentence, built from held-out text (a passage of {window} sentences, the middle one "
                          f"removed: pick it among {GAP_OPTIONS}, the others from other documents)", gap_sentence),
    Built("sentence_relation", "sentence relation, built from held-out text (is B the next sentence, one of the same "
                               f"document {RELATION_GAP}+ sentences away, or one of another document?)",
          sentence_relation),
)}  # fmt: skip


def load_built(name: str, data: DataConfig, gap_window: int = GAP_WINDOW) -> tuple[list, list, str]:
    """(train, dev) examples of a built task over `data`'s corpus, built once, then read from the cache, and what they
    are. `gap_window`: gap_sentence's sentences per passage (the frontier tries others)."""
    from harness.data.corpus import prepare_corpus
    from harness.data.pipeline import held_out_documents

    corpus = prepare_corpus(data.corpus, decode_errors=data.decode_errors, splitter=data.splitter)
    shape = {"window": gap_window} if name == "gap_sentence" else {}
    key = "".join(f"-w{w}" for w in shape.values())
    folder = cache_root() / "finetune" / f"{name}-v{VERSION}{key}-{corpus.key}-{data.valid_fraction:g}"
    if not (folder / "dev.jsonl").exists():
        documents = list(held_out_documents(data))
        parts = ([d for d in documents if _doc_key(d) >= DEV_FRACTION],
                 [d for d in documents if _doc_key(d) < DEV_FRACTION])
        if min(len(p) for p in parts) < 2:
            raise UserError(f"--task {name}: the corpus {data.corpus} holds out {len(documents)} document(s); a built "
                            f"task needs at least 2 in each of its train and dev parts (raise data.valid_fraction)")
        examples = [BUILT[name].build(part, seed, **shape) for part, seed in zip(parts, (0, 1))]
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for part, rows in zip(("train", "dev"), examples):
            (tmp / f"{part}.jsonl").write_text("".join(json.dumps(_row(e)) + "\n" for e in rows), encoding="utf-8")
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    return _read(folder / "train.jsonl"), _read(folder / "dev.jsonl"), BUILT[name].describes.format(**shape)


def _row(e: ChoiceExample | TextExample) -> dict:
    if isinstance(e, ChoiceExample):
        return {"context": e.context, "question": e.question, "options": list(e.options), "label": e.label}
    return {"text_a": e.text_a, "text_b": e.text_b, "label": e.label}


def _read(path) -> list:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [ChoiceExample(r["context"], r["question"], tuple(r["options"]), r["label"]) if "options" in r
            else TextExample(r["text_a"], r["text_b"], r["label"]) for r in rows]
