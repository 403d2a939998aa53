"""Fine-tuning protocols: named, frozen settings read strictly from configs/finetune.yaml."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import coerce, read_yaml
from harness.errors import UserError
from harness.finetune.tasks import TASKS

PROTOCOLS_FILE = Path(__file__).resolve().parents[2] / "configs" / "finetune.yaml"


@dataclass(frozen=True)
class Protocol:
    name: str
    """The section name in configs/finetune.yaml; recorded with every result."""
    lrs: tuple[float, ...] = (1e-5, 2e-5, 3e-5)
    """Peak learning rates searched (RoBERTa Table 10)."""
    batch_sizes: tuple[int, ...] = (16, 32)
    """Batch sizes searched (RoBERTa Table 10)."""
    epochs: int = 10
    """Passes over the training set; dev is scored after each and the best epoch kept (early stopping)."""
    warmup_ratio: float = 0.06
    """Share of steps with a linear warmup, then linear decay to 0 (RoBERTa Table 10: 6%)."""
    seeds: int = 5
    """Fine-tuning seeds; results are the median over them (the paper: 5)."""
    max_seq_len: int = 512
    """Tokens per input including special tokens (capped by the encoder's max_positions)."""
    doc_stride: int = 128
    """QA: tokens between the starts of consecutive context windows (BERT's SQuAD setting)."""
    max_query_len: int = 64
    """QA: question tokens kept (BERT's SQuAD setting)."""
    max_answer_len: int = 30
    """QA: longest answer span considered at prediction time, in tokens (BERT's SQuAD setting)."""
    max_train_examples: int = 0
    """Cap on training examples, taken as a fixed seeded sample (0 = all)."""
    max_dev_examples: int = 0
    """Cap on dev examples, a fixed seeded sample (0 = all); the same sample for every seed and configuration."""
    weight_decay: float = 0.1
    """AdamW weight decay, not on biases or LayerNorm (RoBERTa Table 10)."""
    beta2: float = 0.98
    """Adam beta2 (RoBERTa Table 10); beta1 is 0.9."""
    eps: float = 1e-6
    """Adam epsilon (RoBERTa Table 10)."""
    dropout: float = 0.1
    """Dropout in the encoder and the head while fine-tuning (BERT/RoBERTa fine-tune with 0.1), whatever the
    pretraining run used."""
    tasks: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """Per-task overrides of the settings above, {task: {setting: value}}: the paper tunes SQuAD and RACE apart
    from GLUE's grid. `for_task` applies them; the runner fine-tunes with its result."""

    def __post_init__(self) -> None:
        def check(cond: bool, field: str, expected: str) -> None:
            if not cond:
                raise UserError(f"{self.name}.{field}: expected {expected}, got {getattr(self, field)!r}")

        check(len(self.lrs) > 0 and all(lr > 0 for lr in self.lrs), "lrs", "a non-empty list of positive numbers")
        check(len(self.batch_sizes) > 0 and all(b >= 1 for b in self.batch_sizes), "batch_sizes",
              "a non-empty list of integers >= 1")
        check(self.epochs >= 1, "epochs", "an integer >= 1")
        check(0 <= self.warmup_ratio < 1, "warmup_ratio", "a fraction in [0, 1)")
        check(self.seeds >= 1, "seeds", "an integer >= 1")
        check(16 <= self.max_seq_len <= 8192, "max_seq_len", "an integer in [16, 8192]")
        check(1 <= self.max_query_len <= self.max_seq_len // 2, "max_query_len", "in [1, max_seq_len / 2]")
        check(1 <= self.doc_stride <= self.max_seq_len - self.max_query_len - 4, "doc_stride",
              "in [1, max_seq_len - max_query_len - 4]")
        check(self.max_answer_len >= 1, "max_answer_len", "an integer >= 1")
        check(self.max_train_examples >= 0, "max_train_examples", "an integer >= 0 (0 = all)")
        check(self.max_dev_examples >= 0, "max_dev_examples", "an integer >= 0 (0 = all)")
        check(self.weight_decay >= 0, "weight_decay", "a number >= 0")
        check(0 < self.beta2 < 1, "beta2", "a number in (0, 1)")
        check(self.eps > 0, "eps", "a positive number")
        check(0 <= self.dropout < 1, "dropout", "a fraction in [0, 1)")
        for task, overrides in self.tasks.items():  # each task's settings are checked as a whole, named as such
            check(task in TASKS, "tasks", f"known task names ({', '.join(TASKS)})")
            dataclasses.replace(self, name=f"{self.name}.tasks.{task}", tasks={}, **overrides)

    def grid(self) -> list[tuple[float, int]]:
        """Every (peak LR, batch size) configuration, in a fixed order."""
        return [(lr, bs) for bs in self.batch_sizes for lr in self.lrs]

    def for_task(self, task: str) -> Protocol:
        """The settings `task` runs with: this protocol with the task's overrides applied (none: unchanged)."""
        return dataclasses.replace(self, tasks={}, **self.tasks.get(task, {}))

    def to_dict(self) -> dict[str, Any]:
        # As a summary's JSON holds them (lists, not tuples), without `tasks`: a protocol resolved by for_task holds
        # in its fields the settings that ran.
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items() if k != "tasks"}


def _known(names: Any, allowed: Any, where: str, what: str) -> None:
    for name in names:
        if name not in allowed:
            raise UserError(f"{where}.{name}: unknown {what}; expected one of {sorted(allowed)}")


def _settings(where: str, values: Any, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """A mapping of protocol settings, each key a known setting (or one of `extra`, returned as it is) and each
    value of its field's type."""
    hints = typing.get_type_hints(Protocol)
    keys = [f.name for f in dataclasses.fields(Protocol) if f.name not in ("name", "tasks")] + list(extra)
    if not isinstance(values, dict):
        raise UserError(f"{where}: expected a mapping of protocol settings, got {values!r}")
    _known(values, keys, where, "protocol key")
    return {key: raw if key in extra else coerce(raw, hints[key], f"{where}.{key}") for key, raw in values.items()}


def parse_protocol(name: str, values: dict[str, Any]) -> Protocol:
    kwargs = _settings(name, values, extra=("tasks",))
    tasks = kwargs.pop("tasks", {})
    if not isinstance(tasks, dict):
        raise UserError(f"{name}.tasks: expected a mapping of task names to settings, got {tasks!r}")
    _known(tasks, TASKS, f"{name}.tasks", "task")
    overrides = {task: _settings(f"{name}.tasks.{task}", raw) for task, raw in tasks.items()}
    return Protocol(name=name, **kwargs, tasks=overrides)


def load_protocols(path: Path = PROTOCOLS_FILE) -> dict[str, Protocol]:
    raw = read_yaml(path, "protocol file")
    return {name: parse_protocol(name, values) for name, values in raw.items()}


def load_protocol(name: str, path: Path = PROTOCOLS_FILE) -> Protocol:
    protocols = load_protocols(path)
    if name not in protocols:
        raise UserError(f"--protocol {name}: unknown protocol; expected one of {sorted(protocols)} (in {path})")
    return protocols[name]
