"""Frozen, typed configuration: one dataclass per concern, validated on construction.

Every layer reads these; a bad value fails here, before any work starts, with a message naming the field.
A run's config is `Config`; files are YAML with one section per dataclass, overridden by `section.field=value`.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from harness.errors import UserError
from harness.tokens import SPECIAL_TOKENS

InputFormat = Literal["segment_pair_nsp", "sentence_pair_nsp", "full_sentences", "doc_sentences"]
Masking = Literal["static", "dynamic"]
TokenizerKind = Literal["byte_bpe", "wordpiece"]
Splitter = Literal["punkt", "blingfire"]
NSP_FORMATS = ("segment_pair_nsp", "sentence_pair_nsp")


def _check(cond: bool, name: str, expected: str, value: Any) -> None:
    if not cond:
        raise UserError(f"{name}: expected {expected}, got {value!r}")


@dataclass(frozen=True)
class DataConfig:
    corpus: str = "demo"
    """'demo' (~38 MB of registry-package prose), 'tiny' (< 2 MB, for tests) or a path to the user's own corpus."""
    tokenizer: TokenizerKind = "byte_bpe"
    """byte_bpe: the paper's byte-level BPE (§4.4); wordpiece: BERT's character-level alternative."""
    vocab_size: int = 16_384
    """16K suits a ~40 MB corpus; the paper uses 50,265 (byte BPE) and 30K (BERT)."""
    lowercase: bool = False
    """Lowercase before WordPiece (BERT-uncased); byte-level BPE is always cased."""
    tokenizer_sample_mb: float = 256.0
    """The tokenizer trains on every k-th training document, k the smallest that keeps its sample within this many MB;
    a smaller training split whole. BPE's merges are settled by the frequencies of common words, which a few hundred
    MB fix (the paper trained none on its 160 GB: it reused GPT-2's vocabulary), and training on 256 MB takes ~50 s on
    one thread. The demo sets 9: a quarter of its 36 MB split gives its 4K vocabulary the same compression of unseen
    text in a third of the time (docs/results.md, 2026-12-07)."""
    tokenizer_path: str = ""
    """A `tokenizers` JSON file to use instead of training one (the paper reused GPT-2's 50K byte-level BPE; bring
    RoBERTa's this way). Its special tokens are found by name; data.tokenizer and data.vocab_size are then unused."""
    input_format: InputFormat = "full_sentences"
    """The Table 2 factor; the RoBERTa default is FULL-SENTENCES."""
    masking: Masking = "dynamic"
    """The Table 1 factor: a new mask every epoch, or `static_masks` fixed masks reused in turn."""
    nsp_positive_prob: float = 0.5
    """NSP formats only: share of pairs whose B segment really follows A (BERT: 50%; negatives from another doc)."""
    static_masks: int = 10
    """Original BERT duplicated the data 10x, so each sequence had 10 masks over 40 epochs (§4.1)."""
    mask_prob: float = 0.15
    """Share of non-special tokens selected for prediction (BERT)."""
    random_token_prob: float = 0.1
    """Of the selected tokens, share replaced by a random token (BERT: 10%)."""
    leave_unmasked_prob: float = 0.1
    """Of the selected tokens, share left unchanged (BERT: 10%); the remaining 80% become <mask>."""
    max_seq_len: int = 128
    """Tokens per sequence including special tokens; the paper uses 512."""
    data_fraction: float = 1.0
    """Share of training documents used (Table 4's data size); chosen by document hash, so subsets nest."""
    data_tokens: int = 0
    """If > 0, use the smallest hash-ordered prefix of documents holding at least this many tokens."""
    valid_fraction: float = 0.05
    """Share of documents held out for validation perplexity, chosen by document hash."""
    decode_errors: Literal["strict", "replace"] = "strict"
    """User corpora: 'strict' stops at undecodable bytes naming file and offset; 'replace' substitutes and counts."""
    splitter: Splitter = "punkt"
    """Sentence splitter for prose: punkt (NLTK's, trained on the corpus; every measured table) or blingfire (compiled,
    nothing to train; 96% of its boundaries agree with Punkt's, so it is another corpus: README, Data)."""

    def __post_init__(self) -> None:
        _check(self.input_format in get_args(InputFormat), "data.input_format", f"one of {list(get_args(InputFormat))}",
               self.input_format)
        _check(self.vocab_size > len(SPECIAL_TOKENS) + (256 if self.tokenizer == "byte_bpe" else 0), "data.vocab_size",
               f"more than the special tokens ({len(SPECIAL_TOKENS)}) plus, for byte_bpe, the 256-byte alphabet",
               self.vocab_size)
        _check(0 < self.nsp_positive_prob < 1, "data.nsp_positive_prob", "a probability in (0, 1)",
               self.nsp_positive_prob)
        _check(self.nsp or self.nsp_positive_prob == 0.5, "data.nsp_positive_prob",
               f"to be left at 0.5 with a format without NSP (data.input_format={self.input_format})",
               self.nsp_positive_prob)
        _check(self.static_masks >= 1, "data.static_masks", "an integer >= 1", self.static_masks)
        _check(0 < self.mask_prob < 1, "data.mask_prob", "a probability in (0, 1)", self.mask_prob)
        _check(0 <= self.random_token_prob and 0 <= self.leave_unmasked_prob
               and self.random_token_prob + self.leave_unmasked_prob <= 1,
               "data.random_token_prob + data.leave_unmasked_prob", "non-negative and summing to <= 1",
               (self.random_token_prob, self.leave_unmasked_prob))
        _check(16 <= self.max_seq_len <= 8192, "data.max_seq_len", "an integer in [16, 8192]", self.max_seq_len)
        _check(0 < self.data_fraction <= 1, "data.data_fraction", "a fraction in (0, 1]", self.data_fraction)
        _check(self.data_tokens >= 0, "data.data_tokens", "a token count >= 0 (0 = use data_fraction)",
               self.data_tokens)
        _check(self.data_tokens == 0 or self.data_fraction == 1.0, "data.data_tokens",
               "to be set only when data.data_fraction is 1.0 (give one data size, not both)", self.data_tokens)
        _check(0 < self.valid_fraction < 0.5, "data.valid_fraction", "a fraction in (0, 0.5)", self.valid_fraction)
        _check(self.tokenizer_sample_mb > 0, "data.tokenizer_sample_mb", "a positive number of MB",
               self.tokenizer_sample_mb)

    @property
    def nsp(self) -> bool:
        return self.input_format in NSP_FORMATS

    @property
    def tokenizer_settings(self) -> tuple:
        """What the tokenizer and the train/valid split depend on besides the corpus: runs that share these and the
        corpus share the prepared data (its cache key) and the token ids."""
        # A given tokenizer file, or a sample other than the default, is appended only when set, so the keys of
        # tokenizers trained as before stay as they were.
        given = (self.tokenizer_path,) if self.tokenizer_path else ()
        sample = (self.tokenizer_sample_mb,) if self.tokenizer_sample_mb != DataConfig.tokenizer_sample_mb else ()
        return (self.tokenizer, self.vocab_size, self.lowercase, self.valid_fraction, *given, *sample)


@dataclass(frozen=True)
class ModelConfig:
    preset: Literal["tiny", "mini", "small", "base", "large", "custom"] = "mini"
    """Named sizes; 'custom' takes the fields below as given. base = BERT-base (L12 H768 A12)."""
    n_layers: int = 0
    """Transformer blocks (0 = from the preset)."""
    hidden: int = 0
    """Model width H (0 = from the preset)."""
    n_heads: int = 0
    """Attention heads; must divide hidden (0 = from the preset)."""
    ffn_mult: int = 4
    """MLP width = ffn_mult * hidden, as BERT."""
    max_positions: int = 512
    """Size of the learned position table; sequences may not be longer."""
    dropout: float = 0.1
    """Dropout everywhere (attention, residual, embeddings), as BERT."""
    norm: Literal["post", "pre"] = "post"
    """post-LayerNorm as BERT/RoBERTa; pre-LN as an option for stability studies."""
    position_init: Literal["normal", "sinusoidal"] = "normal"
    """The learned position table at step 0: N(0, 0.02) as BERT, or the Transformer's sinusoids scaled to the same
    spread, so that neighbouring positions start similar (locality without learning it; still learned, and exported
    to HF as the same table)."""
    output_bias_init: Literal["zero", "unigram"] = "zero"
    """The MLM decoder's bias at step 0: zero as BERT/RoBERTa, or the log-unigram frequencies of the arm's training
    text (add-one), so the model predicts the unigram distribution from the first step instead of spending its first
    hundreds of steps learning it (Meister et al. 2023; measured in docs/results.md)."""

    PRESETS: typing.ClassVar[dict[str, tuple[int, int, int]]] = {
        "tiny": (2, 128, 2),
        "mini": (4, 256, 4),
        "small": (4, 512, 8),
        "base": (12, 768, 12),
        "large": (24, 1024, 16),
    }

    def __post_init__(self) -> None:
        _check(self.preset in (*self.PRESETS, "custom"), "model.preset", f"one of {[*self.PRESETS, 'custom']}",
               self.preset)
        layers, hidden, heads = self.PRESETS.get(self.preset, (0, 0, 0))
        object.__setattr__(self, "n_layers", self.n_layers or layers)
        object.__setattr__(self, "hidden", self.hidden or hidden)
        object.__setattr__(self, "n_heads", self.n_heads or heads)
        _check(self.n_layers > 0, "model.n_layers", "an integer > 0", self.n_layers)
        _check(self.hidden > 0, "model.hidden", "an integer > 0", self.hidden)
        _check(self.n_heads > 0 and self.hidden % self.n_heads == 0, "model.n_heads",
               f"a positive divisor of model.hidden={self.hidden}", self.n_heads)
        _check(0 <= self.dropout < 1, "model.dropout", "a probability in [0, 1)", self.dropout)


@dataclass(frozen=True)
class OptimConfig:
    batch_size: int = 64
    """Sequences per optimizer step in the reference format; shorter formats get more (token budget)."""
    micro_batch_size: int = 64
    """Sequences per forward pass per device; batch_size = micro x accumulation x world size."""
    max_steps: int = 1000
    """Optimizer steps."""
    peak_lr: float = 1e-3
    """Peak learning rate after warmup (paper BERT-base: 1e-4 at batch 256; Table 3 tunes it per batch size)."""
    warmup_steps: int = 100
    """Linear warmup, then linear decay to 0 (paper: 10K of 1M steps)."""
    decay_fraction: float = 1.0
    """Share of max_steps over which the LR decays linearly to 0 at the end, after holding the peak since warmup
    (warmup-stable-decay, harness.schedule); 1.0 (or anything reaching back into warmup) is the paper's linear
    decay from the end of warmup. A short run at 0.2 keeps the LR high through MLM's early plateau."""
    beta1: float = 0.9
    beta2: float = 0.98
    """0.98 improves stability with large batches (RoBERTa §3.1); BERT used 0.999."""
    eps: float = 1e-6
    weight_decay: float = 0.01
    """Applied to weights, not to biases or LayerNorm."""
    grad_clip: float = 0.0
    """Gradient-norm clipping (0 = none, as RoBERTa's final recipe)."""

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "optim.batch_size", "an integer >= 1", self.batch_size)
        _check(self.micro_batch_size >= 1, "optim.micro_batch_size", "an integer >= 1", self.micro_batch_size)
        _check(self.max_steps >= 1, "optim.max_steps", "an integer >= 1", self.max_steps)
        _check(self.peak_lr > 0, "optim.peak_lr", "a positive float", self.peak_lr)
        _check(0 <= self.warmup_steps <= self.max_steps, "optim.warmup_steps", "in [0, optim.max_steps]",
               self.warmup_steps)
        _check(0 < self.decay_fraction <= 1, "optim.decay_fraction", "a fraction in (0, 1] (1 = the paper's linear "
               "decay)", self.decay_fraction)

    @property
    def decay_steps(self) -> int:
        """The last steps over which the LR decays (at most every step after warmup)."""
        return min(self.max_steps - self.warmup_steps, max(1, round(self.decay_fraction * self.max_steps)))

    def accumulation(self, devices: int) -> int:
        """Micro-batches per device per optimizer step: batch_size = micro_batch_size x accumulation x devices."""
        per_step = self.micro_batch_size * devices
        _check(self.batch_size % per_step == 0, "optim.batch_size",
               f"a multiple of optim.micro_batch_size x devices = {self.micro_batch_size} x {devices} = {per_step}",
               self.batch_size)
        return self.batch_size // per_step


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    """Seeds model init, NSP pairing, batch order and masks."""
    study: str = "scratch"
    """Run folder: runs/<study>/<arm>/seed_<seed>/."""
    arm: str = "default"
    runs_dir: str = "runs"
    precision: Literal["auto", "32", "bf16-mixed"] = "auto"
    """auto: bf16-mixed on GPU, 32 on CPU."""
    devices: int = 1
    log_every: int = 10
    val_every: int = 100
    checkpoint_every: int = 0
    """Keep a checkpoint every N steps besides 'last' (0 = only 'last')."""
    num_workers: int = 2
    wandb: Literal["offline", "online", "disabled"] = "offline"
    stop_at_step: int = 0
    """Stop after this optimizer step, leaving the LR schedule (optim.max_steps, warmup) as it is (0 = run to
    optim.max_steps): a tuning trial runs its arm's own schedule up to a token budget (harness.grid.plan)."""

    def __post_init__(self) -> None:
        _check(bool(self.study) and bool(self.arm), "train.study / train.arm", "non-empty names",
               (self.study, self.arm))
        _check(self.devices >= 1, "train.devices", "an integer >= 1", self.devices)
        _check(self.log_every >= 1, "train.log_every", "an integer >= 1", self.log_every)
        _check(self.val_every >= 1, "train.val_every", "an integer >= 1", self.val_every)
        _check(self.checkpoint_every >= 0, "train.checkpoint_every", "an integer >= 0 (0 = only 'last')",
               self.checkpoint_every)
        _check(self.num_workers >= 0, "train.num_workers", "an integer >= 0", self.num_workers)
        _check(self.stop_at_step >= 0, "train.stop_at_step", "an integer >= 0 (0 = run to optim.max_steps)",
               self.stop_at_step)


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        """The rules that tie one section to another, checked wherever a Config is built (a run's load, every arm of
        an experiment file at load), so that pretraining meets no combination it must refuse. Rules that need the
        machine (GPUs visible, bf16 support) stay in harness.pretrain.preflight."""
        d, m, o, t = self.data, self.model, self.optim, self.train
        _check(t.stop_at_step <= o.max_steps, "train.stop_at_step",
               f"at most optim.max_steps={o.max_steps} (0 = run to optim.max_steps)", t.stop_at_step)
        _check(d.max_seq_len <= m.max_positions, "data.max_seq_len",
               f"at most model.max_positions={m.max_positions} (the position table)", d.max_seq_len)
        o.accumulation(t.devices)  # the batch splits evenly over micro-batches and devices

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


# The run folder a config trains into: here, torch-free, for the command line's checks before torch loads.
RESULT_STATUSES = ("finished", "diverged")  # a run folder with either needs no more training
# What a run does with a checkpoint it cannot read: it stops, rather than start over and overwrite its metrics.
CANNOT_RESUME = ("not restarted from step 0: `grid run --restart-cell ARM SEED` (a grid cell) or moving the run "
                 "folder aside starts it afresh")


def run_dir_of(cfg: Config) -> Path:
    t = cfg.train
    return Path(t.runs_dir) / t.study / t.arm / f"seed_{t.seed}"


def flatten(sections: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """{section: {field: value}} (a Config's `to_dict`) -> {"section.field": value}, the names overrides use."""
    return {f"{section}.{key}": value for section, values in sections.items() for key, value in values.items()}


def coerce(value: Any, tp: Any, name: str) -> Any:
    """Parse/validate one value against a field type (a Literal, float, int, bool, str, or tuple[X, ...] given as a
    list); strings from the command line are YAML-parsed. Errors name the field: `name: expected ..., got ...`."""
    origin = get_origin(tp)
    # A string that is one of a Literal's values stays a string: YAML would read train.precision's '32' as 32.
    if isinstance(value, str) and tp is not str and not (origin is Literal and value in get_args(tp)):
        value = yaml.safe_load(value)
    if origin is Literal:
        _check(value in get_args(tp), name, f"one of {list(get_args(tp))}", value)
        return value
    if origin is tuple:
        _check(isinstance(value, list), name, "a list", value)
        return tuple(coerce(item, get_args(tp)[0], name) for item in value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads '1e-4' as a string
            try:
                value = float(value)
            except ValueError:
                pass
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), name, "a number", value)
        return float(value)
    if tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), name, "an integer", value)
        return value
    if tp is bool:
        _check(isinstance(value, bool), name, "true or false", value)
        return value
    if tp is str:
        _check(isinstance(value, (str, int, float)), name, "a string", value)
        return str(value)
    raise TypeError(f"unsupported config type {tp} for {name}")


def build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    """Construct dataclass `cls` from a dict, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise UserError(f"{prefix}{key}: unknown key; expected one of {sorted(fields)}")
        kwargs[key] = coerce(value, hints[key], f"{prefix}{key}")
    return cls(**kwargs)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """YAML file (sections data/model/optim/train) plus `section.field=value` overrides."""
    raw = read_yaml(Path(path), "config file") if path is not None else {}
    return with_overrides(raw, overrides)


def read_yaml(path: Path, what: str) -> dict[str, Any]:
    """A YAML file holding a mapping; a missing file or bad YAML is a one-line UserError naming the file."""
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:  # as `data prepare` names a corpus file's bad byte
        raise UserError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); save the "
                        f"{what} as UTF-8") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping, got {type(raw).__name__}")
    return raw


def with_overrides(raw: dict[str, dict[str, Any]], overrides: list[str] | tuple[str, ...] = ()) -> Config:
    sections = {f.name: f.type for f in dataclasses.fields(Config)}
    for section, values in raw.items():
        if values is not None and not isinstance(values, dict):  # `data: [corpus, tiny]`: before dict() of it
            raise UserError(f"{section}: expected a mapping of fields, got {values!r}")
    merged: dict[str, dict[str, Any]] = {k: dict(v or {}) for k, v in raw.items()}
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise UserError(f"{item!r}: expected an override of the form section.field=value")
        merged.setdefault(section, {})[name] = value
    hints = typing.get_type_hints(Config)
    parts = {}
    for section, values in merged.items():
        if section not in sections:
            raise UserError(f"{section}: unknown config section; expected one of {sorted(sections)}")
        if not isinstance(values, dict):
            raise UserError(f"{section}: expected a mapping of fields, got {values!r}")
        parts[section] = build(hints[section], values, f"{section}.")
    return Config(**parts)
