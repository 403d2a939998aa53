"""Task heads over the encoder's final hidden states (B, T, H)."""

from __future__ import annotations

from torch import Tensor, nn


class SequenceHead(nn.Module):
    """RoBERTa's classification head on the <s> state: dropout, dense H->H, tanh, dropout, linear H->n_out.
    n_out is the number of classes, 1 for regression, and 1 per option for multiple choice (fairseq's RACE)."""

    def __init__(self, hidden: int, n_out: int, dropout: float):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.dense = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, n_out)

    def forward(self, h: Tensor) -> Tensor:  # (B, T, H) -> (B, n_out)
        x = self.drop(h[:, 0])
        return self.out(self.drop(self.dense(x).tanh()))


class SpanHead(nn.Module):
    """Extractive QA: one linear layer gives a start and an end logit per token (BERT's SQuAD head)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.out = nn.Linear(hidden, 2)

    def forward(self, h: Tensor) -> Tensor:  # (B, T, H) -> (B, T, 2)
        return self.out(h)


def make_head(kind: str, hidden: int, n_out: int, dropout: float) -> nn.Module:
    head = SpanHead(hidden) if kind == "qa" else SequenceHead(hidden, n_out, dropout)
    for module in head.modules():  # BERT's init, as the encoder's
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
    return head
