"""Downstream metrics, all on a 0-100 scale as the paper's tables: accuracy, F1, Matthews correlation (CoLA),
Pearson/Spearman (STS-B), and SQuAD's exact match and F1 with the official normalisation (evaluate-v2.0.py)."""

from __future__ import annotations

import collections
import re
import string

import numpy as np
from scipy import stats


def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    return 100.0 * float(np.mean(pred == gold))


def binary_f1(pred: np.ndarray, gold: np.ndarray) -> float:
    """F1 of the positive class (label 1), as GLUE reports for MRPC and QQP."""
    tp = float(np.sum((pred == 1) & (gold == 1)))
    denom = float(np.sum(pred == 1) + np.sum(gold == 1))
    return 100.0 * 2 * tp / denom if denom else 0.0


def matthews(pred: np.ndarray, gold: np.ndarray) -> float:
    """Matthews correlation for binary labels; 0 when a row or column of the confusion matrix is empty."""
    tp, tn = float(np.sum((pred == 1) & (gold == 1))), float(np.sum((pred == 0) & (gold == 0)))
    fp, fn = float(np.sum((pred == 1) & (gold == 0))), float(np.sum((pred == 0) & (gold == 1)))
    denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 100.0 * (tp * tn - fp * fn) / denom if denom else 0.0


def _correlation(statistic, x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.std() == 0 or y.std() == 0:
        # A constant prediction (a fine-tune stuck on one value) has no correlation: 0, where scipy gives nan and a
        # ConstantInputWarning. Checked first, so scipy never sees such input.
        return 0.0
    return 100.0 * float(statistic(x, y).statistic)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    return _correlation(stats.pearsonr, x, y)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson of average ranks (ties share their mean rank)."""
    return _correlation(stats.spearmanr, x, y)


def classification_metrics(logits: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    pred = logits.argmax(-1)
    out = {"accuracy": accuracy(pred, gold)}
    if logits.shape[-1] == 2:
        out |= {"f1": binary_f1(pred, gold), "mcc": matthews(pred, gold)}
    return out


def regression_metrics(pred: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    return {"pearson": pearson(pred, gold), "spearman": spearman(pred, gold)}


# ---- SQuAD, as the official evaluation script ------------------------------------------------------------


def normalize_answer(s: str) -> str:
    """Lowercase, drop punctuation, drop the articles a/an/the, collapse whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s, flags=re.UNICODE)
    return " ".join(s.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:  # SQuAD 2.0: "no answer" scores 1 only against "no answer"
        return float(pred_tokens == gold_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: list[str], golds: list[list[str]]) -> dict[str, float]:
    """Mean over questions of the best score against any gold answer. As the official script, gold answers that
    normalise to nothing are dropped, and a question left without one (unanswerable) has the gold [""]."""
    golds = [[g for g in gs if normalize_answer(g)] or [""] for gs in golds]
    em = [max(exact_match(p, g) for g in gs) for p, gs in zip(predictions, golds)]
    f = [max(f1(p, g) for g in gs) for p, gs in zip(predictions, golds)]
    return {"exact": 100.0 * float(np.mean(em)), "f1": 100.0 * float(np.mean(f))}
