"""The downstream tasks: what each one is, where its data lives, and which data a run actually gets.

Data for a task comes from, in this order: `--data-dir hf` (HF `datasets`' local cache), `--data-dir DIR` (the
official files: GLUE at DIR/<TASK>/*.tsv, SQuAD at DIR/*-v1.1.json / *-v2.0.json, RACE at DIR/RACE/), else the
task's offline stand-in (real labelled data from a registry package, or a task built from the run's held-out text:
harness.finetune.built), else nothing: the result then reads "n/a offline". Every result records its source.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from harness.config import DataConfig
from harness.errors import UserError
from harness.finetune import readers
from harness.finetune.built import BUILT, GAP_WINDOW, RELATION_LABELS, load_built
from harness.finetune.readers import GlueColumns, TextExample

Kind = Literal["classification", "regression", "qa", "multiple_choice"]
REAL = "real"
NA_OFFLINE = "n/a offline"


@dataclass(frozen=True)
class HF:
    """Where HF `datasets` keeps a task: dataset, config, (train, dev) split names, text fields for GLUE."""

    dataset: str
    config: str | None
    splits: tuple[str, str] = ("train", "validation")
    fields: tuple[str, str | None] = ("sentence", None)


@dataclass(frozen=True)
class Task:
    name: str
    kind: Kind
    metric: str
    """The headline metric (0-100), the one seeds are medianed over and configurations are chosen by."""
    files: tuple[str, str] = ()
    """(train, dev) paths under --data-dir."""
    labels: tuple[str, ...] = ()
    """Class labels as written in the files; the index is the class id."""
    glue: GlueColumns | None = None
    hf: HF | None = None
    standin: str | None = None
    """A task in harness.finetune.standins that runs offline when no --data-dir is given (itself for a stand-in)."""

    @property
    def n_outputs(self) -> int:
        return len(self.labels) if self.kind == "classification" else 1


def _glue(name: str, folder: str, metric: str, labels: tuple[str, ...], columns: GlueColumns, hf: HF,
          dev: str = "dev.tsv", standin: str | None = None) -> Task:
    kind = "classification" if labels else "regression"
    return Task(name, kind, metric, (f"{folder}/train.tsv", f"{folder}/{dev}"), labels, columns, hf, standin)


BINARY = ("0", "1")
ENTAILMENT = ("entailment", "not_entailment")
TASKS = {t.name: t for t in [
    _glue("sst2", "SST-2", "accuracy", BINARY, GlueColumns("sentence", None, "label"), HF("glue", "sst2"),
          standin="rt_sentiment"),
    _glue("cola", "CoLA", "mcc", BINARY, GlueColumns(3, None, 1), HF("glue", "cola")),  # header-less TSV
    _glue("mnli", "MNLI", "accuracy", ("contradiction", "entailment", "neutral"),
          GlueColumns("sentence1", "sentence2", "gold_label"),
          HF("glue", "mnli", ("train", "validation_matched"), ("premise", "hypothesis")), dev="dev_matched.tsv"),
    _glue("mnli_mm", "MNLI", "accuracy", ("contradiction", "entailment", "neutral"),
          GlueColumns("sentence1", "sentence2", "gold_label"),
          HF("glue", "mnli", ("train", "validation_mismatched"), ("premise", "hypothesis")), dev="dev_mismatched.tsv"),
    _glue("qnli", "QNLI", "accuracy", ENTAILMENT, GlueColumns("question", "sentence", "label"),
          HF("glue", "qnli", fields=("question", "sentence"))),
    _glue("qqp", "QQP", "accuracy", BINARY, GlueColumns("question1", "question2", "is_duplicate"),
          HF("glue", "qqp", fields=("question1", "question2"))),
    _glue("rte", "RTE", "accuracy", ENTAILMENT, GlueColumns("sentence1", "sentence2", "label"),
          HF("glue", "rte", fields=("sentence1", "sentence2"))),
    _glue("mrpc", "MRPC", "accuracy", BINARY, GlueColumns("#1 String", "#2 String", "Quality"),
          HF("glue", "mrpc", fields=("sentence1", "sentence2"))),
    _glue("stsb", "STS-B", "pearson", (), GlueColumns("sentence1", "sentence2", "score"),
          HF("glue", "stsb", fields=("sentence1", "sentence2"))),
    Task("squad1", "qa", "f1", ("train-v1.1.json", "dev-v1.1.json"), hf=HF("squad", None)),
    Task("squad2", "qa", "f1", ("train-v2.0.json", "dev-v2.0.json"), hf=HF("squad_v2", None)),
    Task("race", "multiple_choice", "accuracy", ("RACE/train", "RACE/dev"), hf=HF("race", "all")),
    # Offline stand-ins (harness.finetune.standins): always their own data.
    Task("rt_sentiment", "classification", "accuracy", labels=("rotten", "fresh"), standin="rt_sentiment"),
    Task("trec6", "classification", "accuracy", labels=("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"), standin="trec6"),
    Task("bbc_news", "classification", "accuracy", labels=("business", "entertainment", "politics", "sports", "tech"),
         standin="bbc_news"),
    # Built from the held-out documents of the run's own corpus (harness.finetune.built): RACE's and MNLI's shapes.
    Task("gap_sentence", "multiple_choice", "accuracy", standin="gap_sentence"),
    Task("sentence_relation", "classification", "accuracy", labels=RELATION_LABELS, standin="sentence_relation"),
]}  # fmt: skip


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise UserError(f"--task {name}: unknown task; expected one of {', '.join(TASKS)}")
    return TASKS[name]


@dataclass(frozen=True)
class TaskData:
    train: list
    dev: list
    source: str
    """"real" (the official data) or "stand-in: <what>"."""
    origin: str
    """Where it was read from: a folder, an HF dataset name, or a pinned package."""


def load_task_data(task: Task, data_dir: Path | str | None, corpus: DataConfig | None = None,
                   gap_window: int = GAP_WINDOW) -> TaskData | None:
    """The task's (train, dev) examples and their source, or None when it has no data offline. `corpus`: the run's
    data settings, whose held-out documents a built task is made of; `gap_window`: gap_sentence's passage length."""
    if task.standin == task.name and task.name in BUILT:
        if corpus is None:
            raise UserError(f"--task {task.name}: a task built from held-out text needs the run's corpus")
        train, dev, describes = load_built(task.name, corpus, gap_window)
        return TaskData(train, dev, f"stand-in: {describes}", f"held-out split of {corpus.corpus}")
    if task.standin == task.name:
        return _standin(task.name)
    if data_dir == "hf":
        return _from_hf(task)
    if data_dir is not None:
        return _from_files(task, Path(data_dir))
    if task.standin is not None:
        return _standin(task.standin)
    return None


def _standin(name: str) -> TaskData:
    from harness.finetune import standins  # imported here: official data never needs the package fetcher

    labels = TASKS[name].labels  # sst2's stand-in keeps SST-2's classes: rotten = 0 (negative), fresh = 1
    train, dev = standins.load_standin(name)
    examples = [[TextExample(text, None, labels.index(label)) for text, label in part] for part in (train, dev)]
    standin = standins.STANDINS[name]
    return TaskData(*examples, f"stand-in: {standin.describes}", standin.source.pin)


def check_files(task: Task, data_dir: Path) -> list[Path]:
    """The task's (train, dev) paths under data_dir; a UserError naming every one that is missing, or a GLUE file
    whose header lacks a column the task reads (a comma-separated file, another task's)."""
    if not data_dir.is_dir():
        raise UserError(f"--data-dir {data_dir}: not a folder")
    paths = [data_dir / f for f in task.files]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise UserError(f"--data-dir {data_dir}: task {task.name} needs {', '.join(task.files)}; "
                        f"missing {', '.join(missing)}")
    if task.glue is not None:
        for path in paths:
            readers.check_glue_header(path, task.glue)
    return paths


def _from_files(task: Task, data_dir: Path) -> TaskData:
    paths = check_files(task, data_dir)
    if task.glue is not None:
        parts = [readers.read_glue_tsv(p, task.glue, task.labels) for p in paths]
    elif task.kind == "qa":
        parts = [readers.read_squad(p, v2=task.name == "squad2") for p in paths]
    else:
        parts = [readers.read_race(p) for p in paths]
    return TaskData(*parts, REAL, str(data_dir))


def _from_hf(task: Task) -> TaskData:
    hf = task.hf
    rows = readers.load_hf(hf.dataset, hf.config, hf.splits)
    where = [f"{hf.dataset}/{hf.config or ''}:{split}" for split in hf.splits]
    if task.kind == "qa":
        parts = [readers.hf_squad(r) for r in rows]
    elif task.kind == "multiple_choice":
        parts = [readers.hf_race(r, w) for r, w in zip(rows, where)]
    else:
        parts = [readers.hf_text(r, hf.fields, task.labels, w) for r, w in zip(rows, where)]
    return TaskData(*parts, REAL, f"HF datasets cache: {hf.dataset}/{hf.config or ''}")
