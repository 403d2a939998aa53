"""Extractive QA (SQuAD): question + context windows -> start/end targets, and logits -> answer text.

A feature is `<s> question </s></s> context window </s>` (for an NSP encoder, `<s> question </s> window </s>`
with segment ids, see features.py). Contexts longer than a window are split into windows
that start `doc_stride` tokens apart (BERT's SQuAD recipe). Answers are mapped to tokens through the tokenizer's
character offsets; a window that does not hold the whole answer, or an unanswerable question, points at <s>
(position 0), which is also where SQuAD 2.0 predicts "no answer". At prediction time a token that several windows
hold is scored only in the window where it has the most context (BERT's max-context rule).
"""

from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer

from harness.finetune.features import Feature, prefix
from harness.finetune.readers import QAExample
from harness.tokens import EOS

N_BEST = 20  # start and end candidates per window (BERT's n_best_size)


def token_span(offsets: list[tuple[int, int]], start: int, end: int) -> tuple[int, int] | None:
    """First and last token overlapping characters [start, end); offsets may include a leading space."""
    tokens = [i for i, (a, b) in enumerate(offsets) if a < end and b > start]
    return (tokens[0], tokens[-1]) if tokens else None


def qa_features(tok: Tokenizer, examples: list[QAExample], max_len: int, max_query_len: int, doc_stride: int,
                nsp: bool, train: bool) -> tuple[list[Feature], int]:
    """Features for every window of every example, and the number of training examples dropped because their
    answer text is not at answer_start (a few in the official SQuAD train files)."""
    questions = [e.ids[:max_query_len] for e in tok.encode_batch([e.question for e in examples],
                                                                 add_special_tokens=False)]
    unique = list(dict.fromkeys(e.context for e in examples))
    contexts = dict(zip(unique, tok.encode_batch(unique, add_special_tokens=False)))
    features, dropped = [], 0
    for index, (example, question) in enumerate(zip(examples, questions)):
        context = contexts[example.context]
        answer = None
        if train and example.answers:
            text, start = example.answers[0]
            answer = token_span(context.offsets, start, start + len(text))
            if example.context[start : start + len(text)] != text or answer is None:
                dropped += 1
                continue
        head = prefix(question, nsp)
        window = max_len - len(head) - 1
        n = len(context.ids)
        for w0 in range(0, max(n - window, 0) + doc_stride, doc_stride):
            w1 = min(w0 + window, n)
            feature = {"input_ids": [*head, *context.ids[w0:w1], EOS], "example": index,
                       "context_start": len(head), "offsets": context.offsets[w0:w1], "window": (w0, w1)}
            if nsp:
                feature["type_from"] = len(head)
            if train:
                inside = answer is not None and w0 <= answer[0] and answer[1] < w1
                shift = len(head) - w0
                feature["start"], feature["end"] = (answer[0] + shift, answer[1] + shift) if inside else (0, 0)
            features.append(feature)
            if w1 == n:
                break
    return features, dropped


def max_context(windows: list[tuple[int, int]], index: int) -> np.ndarray:
    """(w1 - w0,) bool for window `index` = [w0, w1) of a context's windows: True at the tokens this window gives
    the most context of all the windows holding them, scored min(left, right) + 0.01 * window length; ties go to
    the earlier window (BERT's run_squad `_check_is_max_context`)."""
    w0, w1 = windows[index]
    tokens = np.arange(w0, w1)
    best_score, best = np.full(len(tokens), -np.inf), np.full(len(tokens), -1)
    for k, (a, b) in enumerate(windows):
        score = np.minimum(tokens - a, b - 1 - tokens) + 0.01 * (b - a)
        better = (tokens >= a) & (tokens < b) & (score > best_score)
        best_score[better], best[better] = score[better], k
    return best == index


def predict_answers(features: list[Feature], start_logits: list[np.ndarray], end_logits: list[np.ndarray],
                    examples: list[QAExample], max_answer_len: int, allow_no_answer: bool) -> list[str]:
    """The best span over all windows of each example (max start + end logit, end >= start, at most
    max_answer_len tokens), a span starting in a window only where that window gives its start token the most
    context (`max_context`, as BERT). With allow_no_answer (SQuAD 2.0), "" when the <s> score (start[0] + end[0],
    its lowest over the windows, as BERT) beats the best span."""
    best = [(-np.inf, "")] * len(examples)
    null = [np.inf] * len(examples)
    windows: dict[int, list[tuple[int, int]]] = {}  # example -> its windows, in context tokens
    for f in features:
        windows.setdefault(f["example"], []).append(tuple(f["window"]))
    for f, s_all, e_all in zip(features, start_logits, end_logits):
        i, c0, offsets = f["example"], f["context_start"], f["offsets"]
        null[i] = min(null[i], float(s_all[0] + e_all[0]))
        s_log, e_log = s_all[c0 : c0 + len(offsets)], e_all[c0 : c0 + len(offsets)]
        starts, ends = np.argsort(-s_log)[:N_BEST], np.argsort(-e_log)[:N_BEST]
        valid = (ends[None, :] >= starts[:, None]) & (ends[None, :] < starts[:, None] + max_answer_len)
        valid &= max_context(windows[i], windows[i].index(tuple(f["window"])))[starts][:, None]
        scores = np.where(valid, s_log[starts][:, None] + e_log[ends][None, :], -np.inf)  # (starts, ends)
        if valid.any() and scores.max() > best[i][0]:
            s, e = np.unravel_index(scores.argmax(), scores.shape)
            best[i] = (float(scores.max()), examples[i].context[offsets[starts[s]][0] : offsets[ends[e]][1]].strip())
    if allow_no_answer:
        return ["" if null_score > score else text for (score, text), null_score in zip(best, null)]
    return [text for _, text in best]
