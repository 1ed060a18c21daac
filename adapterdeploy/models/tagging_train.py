"""Training and scoring tagging (token classification) heads: the token-level parts of the trainer.

Semantics (sentence = words w_0..w_{n-1} with tags y_0..y_{n-1}; the tokenizer splits words into subwords):
    ids      = tokenizer(words, is_split_into_words=True, truncation=True, max_length)
    label[s] = y[word_ids[s]] at the first subword of each word, -100 (ignored) at every other position
    loss     = cross_entropy(logits[B*S, L], label[B*S], ignore_index=-100)
    predicted tag of word w = argmax logits[first subword of w]   (words cut by truncation: "O")
    metrics  = adapterdeploy.bio.entity_metrics (entity F1 / precision / recall, word accuracy) + eval_loss
First-subword labelling is what the runtime reads (runtime/tagging.py) and what transformers' token
classification examples train with.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from adapterdeploy.bio import entity_metrics
from adapterdeploy.errors import ConfigError
from adapterdeploy.tagging_data import TaggingDataset

__all__ = ["IGNORE_INDEX", "encode_tagging", "evaluate_tagging", "tagging_loss", "tagging_tokenizer"]

IGNORE_INDEX = -100
# Byte-level BPE bases: a word's first subword carries the space marker only with add_prefix_space, which
# transformers requires for pre-split words (the runtime's words after a space carry it too).
PREFIX_SPACE_MODELS = ("roberta", "xlm-roberta")


def tagging_tokenizer(base: Any) -> Any:
    """The base's tokenizer set up for pre-split words (``add_prefix_space`` on byte-level BPE bases)."""
    if base.model_type not in PREFIX_SPACE_MODELS:
        return base.load_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(base.path), local_files_only=True, add_prefix_space=True)


def encode_tagging(tokenizer: Any, data: TaggingDataset, max_length: int) -> Any:
    """Tokenize every sentence's words once; labels at first subwords (``EncodedData`` with token labels)."""
    from transformers.utils import logging as hf_logging

    from adapterdeploy.models.trainer import EncodedData

    words = [list(s.words) for s in data.sentences]
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        full = tokenizer(words, is_split_into_words=True, truncation=False)["input_ids"]
        enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
    except (ValueError, TypeError) as exc:  # e.g. a byte-level BPE tokenizer built without add_prefix_space
        raise ConfigError(f"this base's tokenizer cannot tokenize pre-split words: {exc}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    labels = torch.full((len(words), max_length), IGNORE_INDEX, dtype=torch.long)
    for i, sentence in enumerate(data.sentences):
        previous = None
        for s, w in enumerate(enc.word_ids(i)):
            if w is not None and w != previous:
                labels[i, s] = sentence.tags[w]
            previous = w
    types = enc.get("token_type_ids")
    return EncodedData(
        input_ids=tuple(tuple(x) for x in enc["input_ids"]),
        token_type_ids=tuple(tuple(x) for x in types) if types is not None else None,
        labels=labels,
        truncated=sum(len(x) > max_length for x in full),
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        token_level=True,
        gold_tags=tuple(s.tags for s in data.sentences),
        label_names=data.labels,
    )


def tagging_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross entropy over the labelled (first-subword) positions of ``[B, S, L]`` logits."""
    return nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels[:, : logits.shape[1]].reshape(-1), ignore_index=IGNORE_INDEX
    )


@torch.no_grad()
def evaluate_tagging(model: nn.Module, enc: Any, batch_size: int = 32) -> dict[str, float]:
    """Entity and word metrics of ``model`` on encoded sentences (see the module's Semantics)."""
    was_training = model.training
    model.eval()
    names = enc.label_names
    gold: list[list[str]] = [[names[t] for t in tags] for tags in enc.gold_tags]
    pred: list[list[str]] = [[] for _ in gold]
    loss_sum, n = 0.0, 0
    try:
        order = sorted(range(len(enc)), key=lambda r: len(enc.input_ids[r]))
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            inputs, labels = enc.batch(rows)
            logits = model(**inputs)
            loss_sum += float(tagging_loss(logits, labels)) * len(rows)
            n += len(rows)
            best = logits.argmax(-1)
            for j, r in enumerate(rows):
                keep = labels[j, : logits.shape[1]] != IGNORE_INDEX
                tags = [names[int(k)] for k in best[j][keep]]
                pred[r] = tags + ["O"] * (len(gold[r]) - len(tags))  # words cut by truncation
    finally:
        model.train(was_training)
    metrics = entity_metrics(gold, pred)
    metrics["eval_loss"] = loss_sum / max(n, 1)
    return metrics
