"""The encoder and its pretraining heads, in plain torch: read it top to bottom.

Embeddings -> attention -> MLP -> block -> encoder -> heads, as BERT/RoBERTa (post-LayerNorm, GELU, dropout 0.1,
tied MLM decoder). Departures from `transformers.RobertaForMaskedLM`, none changing the maths of the loss:
- positions are numbered from 0 (HF starts at pad_id + 1 = 2; `harness.export` shifts the table);
- the MLM head projects to the vocabulary only at the positions being predicted (~15% of tokens), which removes
  most of the model's FLOPs at a 50K vocabulary, and the last block computes its outputs only there too;
- on CPU, dropout masks come from cheap 16-bit random integers (see `dropout`).
`tests/test_model.py` checks the logits against HF's to 1e-4. Shapes: B batch, T sequence, H hidden, K positions
kept by the last block, N predicted positions, V vocabulary.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.config import ModelConfig
from harness.errors import UserError
from harness.tokens import IGNORE_INDEX, PAD

LN_EPS = 1e-5  # RoBERTa/fairseq (BERT used 1e-12)


@dataclass
class MLMOutput:
    mlm_logits: Tensor  # (N, V) logits at the N selected positions only
    mlm_targets: Tensor  # (N,) token ids to predict at those positions
    nsp_logits: Tensor | None  # (B, 2), index 1 = "B really follows A"; None without NSP


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout. On CPU the keep-mask is built from 16-bit slices of random 64-bit words, p rounded to
    1/65536: torch's CPU bernoulli_ draws one mt19937 double per element and took 15 ms per million elements on one
    core against ~2 ms here (17M dropped elements per step in the benchmark). Other devices use F.dropout (Philox,
    fused). Both follow torch.manual_seed."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    n, drop = x.numel(), round(p * 65536)
    words = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
    keep = (words.view(torch.int16)[:n] >= drop - 32768).view(x.shape)  # P(keep) = 1 - drop / 65536
    return x * keep * (65536 / (65536 - drop))


class Dropout(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)


class Embeddings(nn.Module):
    """word + learned absolute position (from 0) [+ segment A/B when NSP] -> LayerNorm -> dropout."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, pad_id: int, nsp: bool):
        super().__init__()
        self.word = nn.Embedding(vocab_size, cfg.hidden, padding_idx=pad_id)  # <pad> row: 0 at init, no input-side grad
        self.position = nn.Embedding(cfg.max_positions, cfg.hidden)
        self.token_type = nn.Embedding(2, cfg.hidden) if nsp else None  # RoBERTa without NSP has no segments
        self.norm = nn.LayerNorm(cfg.hidden, eps=LN_EPS)
        self.drop = Dropout(cfg.dropout)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None) -> Tensor:
        x = self.word(input_ids) + self.position.weight[: input_ids.size(1)]  # (B, T, H)
        if self.token_type is not None:
            types = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
            x = x + self.token_type(types)
        return self.drop(self.norm(x))


def attention_with_dropout(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, p: float) -> Tensor:
    """softmax(q k^T / sqrt(d)) v with dropout on the probabilities, spelled out: SDPA's CPU kernels cannot fuse
    dropout and fall back to this same maths, but with torch's slow CPU bernoulli."""
    scores = (q * (1.0 / math.sqrt(q.size(-1)))) @ k.transpose(-2, -1)  # (B, heads, T, T)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return dropout(scores.softmax(-1), p, True) @ v  # (B, heads, T, H / heads)


class SelfAttention(nn.Module):
    """Bidirectional multi-head attention: one fused QKV matmul, then SDPA (or, training on CPU, the same maths
    spelled out so that the dropout on the probabilities uses the cheap mask)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden)  # rows: query, key, value (split for HF export)
        self.out = nn.Linear(cfg.hidden, cfg.hidden)
        self.dropout = cfg.dropout

    def forward(self, x: Tensor, xq: Tensor, mask: Tensor | None) -> Tensor:
        """Queries xq (B, K, H) attend to x (B, T, H) -> (B, K, H). Usually xq is x; see `Block`."""
        H = x.size(-1)
        if xq is x:
            q, k, v = self.qkv(x).split(H, dim=-1)  # each (B, T, H)
        else:
            q = F.linear(xq, self.qkv.weight[:H], self.qkv.bias[:H])  # (B, K, H)
            k, v = F.linear(x, self.qkv.weight[H:], self.qkv.bias[H:]).split(H, dim=-1)
        q, k, v = (t.unflatten(-1, (self.n_heads, -1)).transpose(1, 2) for t in (q, k, v))  # (B, heads, ., H/heads)
        # mask: (B, 1, 1, T) True at real keys, or None for no padding (SDPA's fastest kernel)
        p = self.dropout if self.training else 0.0
        if p > 0 and x.device.type == "cpu":
            y = attention_with_dropout(q, k, v, mask, p)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # (B, heads, K, H / heads)
        return self.out(y.transpose(1, 2).flatten(2))  # (B, K, H)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.up = nn.Linear(cfg.hidden, cfg.ffn_mult * cfg.hidden)
        self.down = nn.Linear(cfg.ffn_mult * cfg.hidden, cfg.hidden)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.gelu(self.up(x)))  # exact (erf) GELU, as BERT and HF's "gelu"


def take(x: Tensor, positions: Tensor | None) -> Tensor:
    """x (B, T, H) at per-sequence positions (B, K) -> (B, K, H); x itself when positions is None."""
    return x if positions is None else x.gather(1, positions[..., None].expand(-1, -1, x.size(-1)))


class Block(nn.Module):
    """post-LN (BERT/RoBERTa): x = LN(x + drop(f(x))); pre-LN: x = x + drop(f(LN(x))).

    With `positions` (B, K) only those positions' outputs are computed (every position still serves as a key and
    value): the encoder's last block needs only the ~15% of positions the loss reads, which saves ~70% of its work.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pre_norm = cfg.norm == "pre"
        self.attn = SelfAttention(cfg)
        self.norm1 = nn.LayerNorm(cfg.hidden, eps=LN_EPS)
        self.mlp = MLP(cfg)
        self.norm2 = nn.LayerNorm(cfg.hidden, eps=LN_EPS)
        self.drop = Dropout(cfg.dropout)

    def forward(self, x: Tensor, mask: Tensor | None, positions: Tensor | None = None) -> Tensor:
        if self.pre_norm:
            n = self.norm1(x)
            x = take(x, positions) + self.drop(self.attn(n, take(n, positions), mask))
            return x + self.drop(self.mlp(self.norm2(x)))
        xq = take(x, positions)
        x = self.norm1(xq + self.drop(self.attn(x, xq, mask)))
        return self.norm2(x + self.drop(self.mlp(x)))


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int, pad_id: int, nsp: bool):
        super().__init__()
        self.max_positions = cfg.max_positions
        self.embed = Embeddings(cfg, vocab_size, pad_id, nsp)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.final_norm = nn.LayerNorm(cfg.hidden, eps=LN_EPS) if cfg.norm == "pre" else None  # pre-LN needs one

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None, token_type_ids: Tensor | None,
                output_positions: Tensor | None = None) -> Tensor:
        """(B, T) ids -> (B, T, H) final states, or (B, K, H) at `output_positions` (B, K) only."""
        if input_ids.size(1) > self.max_positions:
            raise UserError(
                f"data.max_seq_len: expected <= model.max_positions={self.max_positions}, "
                f"got a batch of length {input_ids.size(1)}"
            )
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        x = self.embed(input_ids, token_type_ids)  # (B, T, H)
        for i, block in enumerate(self.blocks):
            x = block(x, mask, output_positions if i == len(self.blocks) - 1 else None)
        return x if self.final_norm is None else self.final_norm(x)


class MLMHead(nn.Module):
    """RoBERTa's: dense H->H, GELU, LayerNorm, then the decoder tied to the word embeddings plus a bias."""

    def __init__(self, cfg: ModelConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden, cfg.hidden)
        self.norm = nn.LayerNorm(cfg.hidden, eps=LN_EPS)
        self.decoder_weight = word_embeddings.weight  # (V, H), shared: the same Parameter object
        self.bias = nn.Parameter(torch.zeros(word_embeddings.num_embeddings))

    def forward(self, h: Tensor) -> Tensor:  # (N, H) -> (N, V)
        return F.linear(self.norm(F.gelu(self.dense(h))), self.decoder_weight, self.bias)


class NSPHead(nn.Module):
    """BERT's pooler (dense + tanh on the first token) then a linear layer to {not next, next}."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pooler = nn.Linear(cfg.hidden, cfg.hidden)
        self.classifier = nn.Linear(cfg.hidden, 2)

    def forward(self, first: Tensor) -> Tensor:  # (B, H) -> (B, 2)
        return self.classifier(torch.tanh(self.pooler(first)))


def param_generator(seed: int, name: str) -> torch.Generator:
    """A CPU generator for parameter `name`, seeded from a stable hash of (seed, name) (Python's hash() is salted
    per process), so a parameter's initial value depends on nothing else: not on which parameters come before it."""
    digest = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8, person=b"param-init").digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)  # seeds are < 2**63


@torch.no_grad()
def init_weights(model: nn.Module, seed: int) -> None:
    """BERT's init: N(0, 0.02) weights, zero biases, LayerNorm 1/0, a zero <pad> embedding. Each weight is drawn
    from its own generator (`param_generator`), so arms of different shapes (the NSP arms' token-type embedding and
    NSP head) start from identical values for every parameter they share, which keeps seeds paired across arms."""
    for prefix, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            w = module.weight
            # drawn on the CPU, so the values do not depend on the device either
            w.copy_(torch.empty(w.shape).normal_(0.0, 0.02, generator=param_generator(seed, f"{prefix}.weight")))
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.zero_()
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            module.weight[module.padding_idx].zero_()
        if isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()


def sinusoids(n_positions: int, dim: int) -> Tensor:
    """(n_positions, dim) sin/cos of the position at geometric wavelengths from 2 pi to 10000 x 2 pi (Vaswani et al.
    2017, section 3.5): the table `model.position_init=sinusoidal` starts from."""
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (dim / 2,)
    table = torch.zeros(n_positions, dim, dtype=torch.float64)
    table[:, 0::2], table[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)[:, : dim // 2]
    return table.float()


class MaskedLM(nn.Module):
    """Encoder + MLM head (+ NSP head for the segment/sentence-pair formats); `seed` fixes the init (`init_weights`)."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, pad_id: int = PAD, nsp: bool = False, *, seed: int):
        super().__init__()
        self.cfg, self.vocab_size, self.pad_id, self.nsp = cfg, vocab_size, pad_id, nsp
        self.encoder = Encoder(cfg, vocab_size, pad_id, nsp)
        self.mlm_head = MLMHead(cfg, self.encoder.embed.word)  # its decoder is the word embedding: initialised there
        self.nsp_head = NSPHead(cfg) if nsp else None
        init_weights(self, seed)
        if cfg.position_init == "sinusoidal":  # N(0, 0.02)'s spread, so positions weigh as much as at BERT's init
            table = sinusoids(cfg.max_positions, cfg.hidden)
            with torch.no_grad():
                self.encoder.embed.position.weight.copy_(table * (0.02 / table.std()))

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None,
               token_type_ids: Tensor | None = None) -> Tensor:
        """(B, T) token ids -> (B, T, H) final hidden states, for fine-tuning heads."""
        return self.encoder(input_ids, attention_mask, token_type_ids)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                labels: Tensor | None = None) -> MLMOutput:
        """input_ids (B, T); attention_mask (B, T) True at real tokens (None = no padding); labels (B, T) with -100
        where nothing is predicted. Without labels every position is projected and the targets are the inputs."""
        if labels is None:
            h = self.encoder(input_ids, attention_mask, token_type_ids)  # (B, T, H)
            h_sel, targets = h.flatten(0, 1), input_ids.flatten()
        else:
            positions, valid = self.loss_positions(labels)  # (B, K) each
            h = self.encoder(input_ids, attention_mask, token_type_ids, positions)  # (B, K, H)
            picked = labels.gather(1, positions).masked_fill(~valid, IGNORE_INDEX)  # (B, K)
            selected = picked != IGNORE_INDEX  # row-major, so in the order of labels[labels != -100]
            h_sel, targets = h[selected], picked[selected]  # (N, H), (N,)
        nsp_logits = self.nsp_head(h[:, 0]) if self.nsp_head is not None else None  # position 0 is always slot 0
        return MLMOutput(mlm_logits=self.mlm_head(h_sel), mlm_targets=targets, nsp_logits=nsp_logits)

    @staticmethod
    def loss_positions(labels: Tensor) -> tuple[Tensor, Tensor]:
        """Per sequence, the positions the losses read: those with a label, and position 0 (NSP's input), in
        order and left-aligned, padded to the longest count K with unneeded positions: (B, K) positions, (B, K)
        True where needed."""
        needed = labels != IGNORE_INDEX
        needed[:, 0] = True
        k = int(needed.sum(1).max())
        positions = torch.sort((~needed).byte(), dim=1, stable=True).indices[:, :k]  # needed ones first, in order
        return positions, needed.gather(1, positions)

    def num_params(self) -> int:
        """Parameters counted once (the decoder shares the word embeddings)."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int, n_predicted_per_token: float) -> float:
        """Training matmul FLOPs per input token (forward + backward = 3x forward), for MFU: the work the loss needs.

        Per layer: QKV and output projections 8H^2, MLP 4HF, attention scores and mixing 4TH. The last layer needs
        keys and values (4H^2) everywhere but the rest only at the predicted positions and position 0; the MLM head
        (dense 2H^2 + decoder 2HV) only at the predicted ones; the NSP head once per sequence. Elementwise work
        (LayerNorm, GELU, softmax, dropout, the optimiser) and padded slots are left out, as is usual.
        """
        H, F_, L, T = self.cfg.hidden, self.cfg.ffn_mult * self.cfg.hidden, self.cfg.n_layers, seq_len
        V = self.vocab_size
        query_side = 4 * H * H + 4 * H * F_ + 4 * T * H  # Q and output projections, MLP, attention
        kv = 4 * H * H
        needed = min(1.0, n_predicted_per_token + 1 / T)  # share of positions the last layer computes
        encoder = (L - 1) * (kv + query_side) + kv + needed * query_side
        head = n_predicted_per_token * (2 * H * H + 2 * H * V)
        nsp = (2 * H * H + 4 * H) / T if self.nsp else 0.0
        return 3.0 * (encoder + head + nsp)


def count_params(cfg: ModelConfig, vocab_size: int, nsp: bool = False) -> int:
    """Parameter count from the config alone (no allocation), matching `MaskedLM.num_params`."""
    H, F_, L, P = cfg.hidden, cfg.ffn_mult * cfg.hidden, cfg.n_layers, cfg.max_positions
    embed = vocab_size * H + P * H + (2 * H if nsp else 0) + 2 * H
    block = (3 * H * H + 3 * H) + (H * H + H) + (H * F_ + F_) + (F_ * H + H) + 4 * H
    final = 2 * H if cfg.norm == "pre" else 0
    head = (H * H + H) + 2 * H + vocab_size
    nsp_head = (H * H + H) + (2 * H + 2) if nsp else 0
    return embed + L * block + final + head + nsp_head

