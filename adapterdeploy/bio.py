"""BIO / IOB tag grouping and entity-level metrics: one definition for the runtime's ``entities`` and the
trainer's F1 (pure Python: no torch, no numpy).

Semantics of :func:`tag_spans` over a sequence of word tags (IOB2 ``B-X``/``I-X`` and IOB1, also BIOES
``S-X``/``E-X`` and BILOU ``U-X``/``L-X``; a tag without a prefix is its own type and continues like ``I-``;
``O`` is outside):
    a word starts a new span unless it continues the open one (``I``/``E``/``L`` of the same type);
    ``O`` closes the open span; ``S``/``U`` are one-word spans; ``E``/``L`` close after the word.
This is the grouping of transformers' token-classification pipeline (``aggregation_strategy="simple"``)
applied to words. Entity F1 = seqeval's default (non-strict) micro F1 over exact (start, end, type) spans.
Hand-written because seqeval is not maintained and is one function here; the tests check it by hand.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["entity_metrics", "split_tag", "tag_spans"]

_CONTINUES = ("I", "E", "L")
_ENDS = ("E", "L", "S", "U")


def split_tag(tag: str) -> tuple[str | None, str | None]:
    """``"B-PER"`` -> ``("B", "PER")``; ``"O"`` -> ``(None, None)``; ``"PER"`` -> ``("I", "PER")``."""
    if tag == "O":
        return None, None
    if len(tag) > 2 and tag[1] == "-" and tag[0] in "BIESUL":
        return tag[0], tag[2:]
    return "I", tag


def tag_spans(tags: Sequence[str]) -> list[tuple[int, int, str]]:
    """``(first word, last word inclusive, type)`` of every span, in order (see the module's Semantics)."""
    out: list[tuple[int, int, str]] = []
    start: int | None = None
    kind: str | None = None
    for i, tag in enumerate(tags):
        prefix, k = split_tag(tag)
        if k is None:
            if start is not None:
                out.append((start, i - 1, str(kind)))
            start, kind = None, None
            continue
        if not (start is not None and prefix in _CONTINUES and k == kind):
            if start is not None:
                out.append((start, i - 1, str(kind)))
            start, kind = i, k
        if prefix in _ENDS:
            out.append((start, i, k))
            start, kind = None, None
    if start is not None:
        out.append((start, len(tags) - 1, str(kind)))
    return out


def entity_metrics(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro entity precision / recall / F1 over sentences (exact span and type), and word accuracy."""
    tp = n_gold = n_pred = words = right = 0
    for g, p in zip(gold, pred, strict=True):
        gs, ps = set(tag_spans(g)), set(tag_spans(p))
        tp += len(gs & ps)
        n_gold += len(gs)
        n_pred += len(ps)
        words += len(g)
        right += sum(a == b for a, b in zip(g, p, strict=True))
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "entity_f1": f1,
        "entity_precision": precision,
        "entity_recall": recall,
        "word_accuracy": right / words if words else 0.0,
    }
