"""Arms -> the paper's rows, by their factor values, and the pairs of rows each paper claim compares."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from analysis.load import Study


def arm_factors(study: Study) -> dict[str, dict[str, Any]]:
    """Each arm's resolved settings: its first run's config.yaml, overridden by the arm's scientific values."""
    out = {}
    arm_meta = {a["name"]: a.get("scientific", {}) for a in study.meta["arms"]}
    for arm in study.arms:
        runs = study.runs[(study.runs["arm"] == arm) & study.runs["expected"]]
        config = next((c for c in runs["config"] if c), {})
        out[arm] = {**config, **arm_meta.get(arm, {})}
    return out


def _by_value(key: str, rows: dict[Any, str]) -> Callable[[dict[str, dict]], dict[str, str | None]]:
    def mapping(factors: dict[str, dict]) -> dict[str, str | None]:
        return {arm: rows.get(f.get(key)) for arm, f in factors.items()}

    return mapping


def _batch_rows(factors: dict[str, dict]) -> dict[str, str | None]:
    """Table 3: three batch sizes map by rank (small/medium/large -> 256/2K/8K); other counts by the ratio to the
    smallest, nearest on a log scale to the paper's 1 : 8 : 32."""
    labels = ["bsz 256", "bsz 2K", "bsz 8K"]
    sizes = {arm: f.get("optim.batch_size") for arm, f in factors.items()}
    distinct = sorted({s for s in sizes.values() if s is not None})
    if len(distinct) == 3:
        return {arm: labels[distinct.index(s)] if s is not None else None for arm, s in sizes.items()}
    out: dict[str, str | None] = {}
    for arm, s in sizes.items():
        if s is None:
            out[arm] = None
            continue
        ratio = math.log(s / distinct[0])
        out[arm] = labels[int(np.argmin([abs(ratio - math.log(r)) for r in (1, 8, 32)]))]
    return out


def _data_steps_rows(factors: dict[str, dict]) -> dict[str, str | None]:
    """Table 4: the smallest data at the fewest steps is 'Books+Wiki'; the largest data by increasing steps is
    '+ additional data', '+ pretrain longer', '+ pretrain even longer'."""
    labels = ["+ additional data", "+ pretrain longer", "+ pretrain even longer"]
    use_tokens = any((f.get("data.data_tokens") or 0) > 0 for f in factors.values())

    def size(f: dict) -> float:
        return float(f.get("data.data_tokens") or 0) if use_tokens else float(f.get("data.data_fraction", 1.0))

    sizes = {arm: size(f) for arm, f in factors.items()}
    steps = {arm: f.get("optim.max_steps") for arm, f in factors.items()}
    small, large = min(sizes.values()), max(sizes.values())
    out: dict[str, str | None] = dict.fromkeys(factors)
    fewest = min(steps[a] for a in factors if sizes[a] == small)
    first = [a for a in factors if sizes[a] == small and steps[a] == fewest]
    if small < large and len(first) == 1:
        out[first[0]] = "RoBERTa, Books+Wiki"
    big = sorted((a for a in factors if sizes[a] == large and small < large), key=lambda a: steps[a])
    for arm, label in zip(big, labels):
        out[arm] = label
    return out


ROW_MAPPINGS: dict[int, Callable[[dict[str, dict]], dict[str, str | None]]] = {
    1: _by_value("data.masking", {"static": "static", "dynamic": "dynamic"}),
    2: _by_value("data.input_format", {"segment_pair_nsp": "SEGMENT-PAIR (+NSP)",
                                       "sentence_pair_nsp": "SENTENCE-PAIR (+NSP)",
                                       "full_sentences": "FULL-SENTENCES", "doc_sentences": "DOC-SENTENCES"}),
    3: _batch_rows,
    4: _data_steps_rows,
}


def row_pairs(number: int) -> list[tuple[str, str, str, str, str]]:
    """(claim, row A, row B, kind, primary metric) in the paper's rows."""
    seg, sent, full, doc = "SEGMENT-PAIR (+NSP)", "SENTENCE-PAIR (+NSP)", "FULL-SENTENCES", "DOC-SENTENCES"
    return {
        1: [("dynamic_not_worse", "dynamic", "static", "noninferior", "downstream")],
        2: [("no_nsp_not_worse", doc, seg, "noninferior", "downstream"),
            ("no_nsp_not_worse", full, seg, "noninferior", "downstream"),
            ("single_sentences_hurt", seg, sent, "superior", "downstream"),
            ("doc_not_worse_than_full", doc, full, "noninferior", "downstream")],
        3: [("medium_batch_lowest_ppl", "bsz 2K", "bsz 256", "superior", "ppl"),
            ("medium_batch_lowest_ppl", "bsz 2K", "bsz 8K", "superior", "ppl"),
            ("bigger_batch_lower_ppl", "bsz 2K", "bsz 256", "superior", "ppl"),
            ("bigger_batch_lower_ppl", "bsz 8K", "bsz 256", "superior", "ppl")],
        4: [("more_data_helps", "+ additional data", "RoBERTa, Books+Wiki", "superior", "downstream"),
            ("longer_helps", "+ pretrain longer", "+ additional data", "superior", "downstream"),
            ("longer_helps", "+ pretrain even longer", "+ pretrain longer", "superior", "downstream")],
    }[number]
