"""Readers for the official downstream formats: GLUE TSVs, SQuAD JSON, RACE folders, and HF `datasets`' cache.

Each returns a list of examples; a label outside the task's label set, a short row or an answer outside its
context is a UserError naming the file and line (or question), so a wrong file fails before any training.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError

csv.field_size_limit(sys.maxsize)  # some GLUE rows (QNLI, MNLI parses) pass csv's 128 KB default


@dataclass(frozen=True)
class TextExample:
    """A single sentence (text_b None) or a sentence pair; label is a class index, or a float for regression."""

    text_a: str
    text_b: str | None
    label: int | float


@dataclass(frozen=True)
class QAExample:
    qid: str
    question: str
    context: str
    answers: tuple[tuple[str, int], ...]
    """(text, character offset in context) of each gold answer; empty when unanswerable (SQuAD 2.0)."""


@dataclass(frozen=True)
class ChoiceExample:
    context: str
    question: str
    options: tuple[str, ...]
    label: int


@dataclass(frozen=True)
class GlueColumns:
    """Where a GLUE file keeps its fields: header names, or 0-based indices for the header-less CoLA files."""

    text_a: str | int
    text_b: str | int | None
    label: str | int


def read_glue_tsv(path: Path, columns: GlueColumns, labels: tuple[str, ...]) -> list[TextExample]:
    """A GLUE train/dev TSV. `labels` empty means a regression score in [0, 5] (STS-B)."""
    examples = []
    with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: GLUE's MRPC files start with a BOM
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)  # MNLI/QQP text holds stray quote marks
        index = _glue_index(rows, columns, path)
        for row in rows:
            if not row:
                continue
            if len(row) <= max(index):
                raise UserError(f"{path}:{rows.line_num}: expected at least {max(index) + 1} tab-separated fields, "
                                f"got {len(row)}")
            fields = [row[i] for i in index]
            label = _label(fields[-1], labels, f"{path}:{rows.line_num}")
            examples.append(TextExample(fields[0], fields[1] if columns.text_b is not None else None, label))
    return examples


def check_glue_header(path: Path, columns: GlueColumns) -> None:
    """A GLUE TSV's header alone, as read_glue_tsv reads it: what `finetune` checks before torch loads."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        _glue_index(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), columns, path)


def _glue_index(rows, columns: GlueColumns, path: Path) -> list[int]:
    """Where text_a, text_b (when there is one) and label are in a row: from the header, the first of `rows`, or the
    indices given for a header-less file; a UserError when the header lacks one."""
    header = next(rows, []) if isinstance(columns.label, str) else None
    wanted = [c for c in (columns.text_a, columns.text_b, columns.label) if c is not None]
    if header is not None and not all(c in header for c in wanted):
        raise UserError(f"{path}: expected a header with columns {wanted}, got {header}")
    return [header.index(c) if header is not None else c for c in wanted]


def _label(raw: str, labels: tuple[str, ...], where: str) -> int | float:
    if labels:
        if raw not in labels:
            raise UserError(f"{where}: label {raw!r} is not one of {list(labels)}")
        return labels.index(raw)
    try:
        score = float(raw)
    except ValueError:
        score = float("nan")
    if not 0.0 <= score <= 5.0:
        raise UserError(f"{where}: score {raw!r} is not a number in [0, 5]")
    return score


def read_squad(path: Path, v2: bool) -> list[QAExample]:
    """SQuAD 1.1 / 2.0 JSON: data[].paragraphs[].{context, qas[].{id, question, answers[], is_impossible}}."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a SQuAD JSON file ({type(e).__name__}: {e})") from None
    examples = []
    for article in data:
        for paragraph in article["paragraphs"]:
            context = paragraph["context"]
            for qa in paragraph["qas"]:
                impossible = bool(qa.get("is_impossible", False))
                if impossible and not v2:
                    raise UserError(f"{path}: question {qa['id']} is unanswerable (is_impossible), which only "
                                    "SQuAD 2.0 allows; is this a v2.0 file?")
                answers = () if impossible else tuple((a["text"], int(a["answer_start"])) for a in qa["answers"])
                if not impossible and not answers:
                    raise UserError(f"{path}: question {qa['id']} has no answer and is not marked is_impossible")
                for text, start in answers:
                    if not 0 <= start <= len(context) - len(text):
                        raise UserError(f"{path}: question {qa['id']}: answer_start {start} lies outside its context")
                examples.append(QAExample(str(qa["id"]), qa["question"], context, answers))
    return examples


RACE_LETTERS = "ABCDEFGH"


def read_race(folder: Path) -> list[ChoiceExample]:
    """RACE: `<split>/{middle,high}/*.txt`, each a JSON {article, questions[], options[][], answers[] (letters)}."""
    files = sorted(folder.glob("*/*.txt"))
    if not files:
        raise UserError(f"{folder}: no RACE files; expected {folder}/middle/*.txt and/or {folder}/high/*.txt")
    examples = []
    for file in files:
        try:
            doc = json.loads(file.read_text(encoding="utf-8"))
            article, questions, options, answers = doc["article"], doc["questions"], doc["options"], doc["answers"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise UserError(f"{file}: not a RACE JSON file ({type(e).__name__}: {e})") from None
        for i, (question, opts, answer) in enumerate(zip(questions, options, answers)):
            letters = RACE_LETTERS[: len(opts)]
            if answer not in letters:
                raise UserError(f"{file}: question {i}: answer {answer!r} is not one of {list(letters)}")
            examples.append(ChoiceExample(article, question, tuple(opts), letters.index(answer)))
    return examples


# ---- HF `datasets`, from its local cache only --------------------------------------------------------------


def load_hf(dataset: str, config: str | None, splits: tuple[str, str]) -> list:
    """[train rows, dev rows] from HF `datasets`' local cache, never the network (a lookup that would download
    fails at once with HF_DATASETS_OFFLINE=1)."""
    os.environ["HF_DATASETS_OFFLINE"] = "1"  # read by `datasets` at import time
    os.environ["HF_HUB_OFFLINE"] = "1"
    name = f"{dataset}/{config}" if config else dataset
    try:
        import datasets
    except ImportError:
        raise UserError(f"--data-dir hf: HF datasets is not available (the `datasets` package is not installed), "
                        f"so {name} cannot be read from its cache; give --data-dir with the official files") from None
    try:
        loaded = datasets.load_dataset(dataset, config)
        return [loaded[split] for split in splits]
    except Exception as e:  # `datasets` raises many types for "not cached"; all mean the same here
        raise UserError(f"--data-dir hf: {name} is not in the local HF datasets cache "
                        f"({type(e).__name__}); give --data-dir with the official files") from None


def hf_text(rows, fields: tuple[str, str | None], labels: tuple[str, ...], where: str) -> list[TextExample]:
    """GLUE rows from `datasets`: text fields, and an integer label mapped onto `labels` by name when the names
    match (MNLI orders its classes differently), else by index (binary tasks name theirs e.g. negative/positive)."""
    names = rows.features["label"].names if labels else []
    by_name = bool(names) and all(n in labels for n in names)
    out = []
    for i, row in enumerate(rows):
        raw = row["label"]
        if labels:
            if not 0 <= raw < len(names):
                raise UserError(f"{where}: row {i}: label {raw!r} is outside the task's label set {list(labels)}")
            raw = labels.index(names[raw]) if by_name else raw
        out.append(TextExample(row[fields[0]], row[fields[1]] if fields[1] else None, raw))
    return out


def hf_squad(rows) -> list[QAExample]:
    return [QAExample(row["id"], row["question"], row["context"],
                      tuple(zip(row["answers"]["text"], row["answers"]["answer_start"]))) for row in rows]


def hf_race(rows, where: str) -> list[ChoiceExample]:
    out = []
    for i, row in enumerate(rows):
        letters = RACE_LETTERS[: len(row["options"])]
        if row["answer"] not in letters:
            raise UserError(f"{where}: row {i}: answer {row['answer']!r} is not one of {list(letters)}")
        out.append(ChoiceExample(row["article"], row["question"], tuple(row["options"]), letters.index(row["answer"])))
    return out
