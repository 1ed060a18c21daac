"""Tagging (token classification) results: per-token logits -> one label per word -> merged entity spans.

Why words and not subword tokens: users label words (CoNLL files, spans in their text), and a word split
into several subwords must get one label. We label a word with its *first* subword's prediction, as
transformers' token-classification pipeline does with ``aggregation_strategy="first"`` and as the trainer
trains (only first subwords carry a label; ``models/trainer.py``). Words are the tokenizer's own
pre-tokenized words (``Encoding.word_ids``: whitespace and punctuation splits for BERT's WordPiece), with
character offsets into the input text.

Semantics (row r, token positions s of the first sequence, word w = the positions with word_ids[s] == w):
    p[s]      = softmax(logits[s])
    first(w)  = min s of word w;  start(w) = offsets[first(w)][0];  end(w) = offsets[last(w)][1]
    label(w)  = labels[argmax p[first(w)]];  score(w) = max p[first(w)];  word = text[start(w):end(w)]
Entities (``spans=True``): the words' tags grouped by :func:`adapterdeploy.bio.tag_spans` (IOB2, IOB1, BIOES,
BILOU; transformers' ``aggregation_strategy="simple"`` grouping applied to words), each
    entity = (text[start of first word : end of last word], type, mean of the words' scores)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from adapterdeploy.bio import tag_spans
from adapterdeploy.config import HeadConfig
from adapterdeploy.runtime.prediction import Entity, Prediction, WordLabel

__all__ = ["merge_entities", "tagging_prediction", "with_entities", "word_spans"]


def word_spans(encoding: Any) -> list[tuple[int, int, int]]:
    """``(first token position, start, end)`` of each word of the encoding's first sequence, in order."""
    words: dict[int, list[int]] = {}
    seq = encoding.sequence_ids
    for s, (w, q) in enumerate(zip(encoding.word_ids, seq, strict=True)):
        if w is None or q != 0:
            continue
        span = words.get(w)
        if span is None:
            words[w] = [s, s]
        else:
            span[1] = s
    offsets = encoding.offsets
    return [(first, offsets[first][0], offsets[last][1]) for first, last in words.values()]


def tagging_prediction(
    task: str, config: HeadConfig, logits: np.ndarray, encoding: Any, text: str, truncated: bool
) -> Prediction:
    """One row's :class:`Prediction` from its per-token logits ``[S, labels]`` (see the module's Semantics)."""
    spans = word_spans(encoding)
    firsts = np.array([f for f, _, _ in spans], dtype=np.int64)
    x = np.asarray(logits, dtype=np.float64)[firsts] if spans else np.zeros((0, config.num_labels))
    x = np.exp(x - x.max(axis=1, keepdims=True)) if spans else x
    probs = x / x.sum(axis=1, keepdims=True) if spans else x
    best = probs.argmax(axis=1) if spans else np.zeros(0, dtype=np.int64)
    names = config.labels
    words = tuple(
        WordLabel(word=text[a:b], start=int(a), end=int(b), label=names[int(k)], score=float(p[k]))
        for (_, a, b), p, k in zip(spans, probs, best, strict=True)
    )
    score = float(np.mean([w.score for w in words])) if words else 0.0
    return Prediction(task=task, label=None, score=score, truncated=truncated, tokens=words)


def merge_entities(words: Sequence[WordLabel], text: str) -> tuple[Entity, ...]:
    """Merge words into entity spans by their tags (:func:`adapterdeploy.bio.tag_spans`)."""
    out = []
    for i, j, kind in tag_spans([w.label for w in words]):
        a, b = words[i].start, words[j].end
        score = float(np.mean([w.score for w in words[i : j + 1]]))
        out.append(Entity(word=text[a:b], start=a, end=b, label=kind, score=score))
    return tuple(out)


def with_entities(prediction: Any, text: Any) -> Any:
    """A tagging prediction with its merged ``entities``; anything else unchanged."""
    if isinstance(prediction, Prediction) and prediction.tokens is not None and isinstance(text, str):
        return replace(prediction, entities=merge_entities(prediction.tokens, text))
    return prediction
