"""Tokenization with ``tokenizers`` from the deployment's tokenizer.json: validation, truncation, dynamic padding.

Semantics:
    count[i]   = len(encode(row_i))                   untruncated, special tokens included
    truncated  = count[i] > max_length                (strict=True refuses such rows instead)
    ids[i]     = encode(row_i, truncation=longest_first, max_length) if truncated else encode(row_i)
    batch      = ids padded with pad_id to max(len(ids[i])) over the batch (never to max_length)
    mask[i, j] = 1 for j < len(ids[i]) else 0
    types[i]   = the tokenizer's type ids, or all 0 when the model has one token type (RoBERTa family)

Each row is tokenized once without truncation (giving the cheap ``token_counts`` and the truncated flag);
only over-long rows are tokenized a second time with truncation on. Two tokenizer instances, configured
once and never mutated afterwards, keep this thread-safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Encoding, Tokenizer

from adapterdeploy.artifacts import Manifest, safe_relpath
from adapterdeploy.errors import ArtifactError, InputError

__all__ = ["Padded", "Row", "TextEncoder", "TokenRow", "length_buckets", "validate_row", "validate_rows"]

Row = str | tuple[str, str]
PAD_TOKENS = ("[PAD]", "<pad>", "<PAD>")


def validate_row(row: Any, where: str) -> Row:
    """One input row: a non-empty string or a pair of non-empty strings (returned as a tuple)."""
    if isinstance(row, str):
        if not row.strip():
            raise InputError(f"{where} is an empty text; every input needs at least one non-space character")
        return row
    if isinstance(row, (tuple, list)):
        if len(row) != 2:
            raise InputError(f"{where} is a {type(row).__name__} of {len(row)} items; a text pair has exactly 2")
        a, b = row
        for part, which in ((a, "first"), (b, "second")):
            if not isinstance(part, str):
                raise InputError(f"{where}: the {which} text of the pair is a {type(part).__name__}, not a str")
            if not part.strip():
                raise InputError(f"{where}: the {which} text of the pair is empty")
        return (a, b)
    raise InputError(f"{where} is a {type(row).__name__}; pass a str or a (text_a, text_b) pair")


def validate_rows(inputs: Any, what: str = "inputs") -> list[Row]:
    """A list of rows; a bare string is refused (it would be ambiguous with a list of characters)."""
    if isinstance(inputs, str):
        raise InputError(f"{what} is a single str; pass a list of texts, e.g. [{inputs[:30]!r}]")
    if not isinstance(inputs, Sequence):
        raise InputError(f"{what} must be a list of texts or (text_a, text_b) pairs, got {type(inputs).__name__}")
    return [validate_row(row, f"{what}[{i}]") for i, row in enumerate(inputs)]


@dataclass(frozen=True)
class TokenRow:
    """One tokenized row (after truncation when needed)."""

    ids: list[int]
    type_ids: list[int]
    count: int  # untruncated token count
    truncated: bool
    pair: bool = False  # encoded from a (text_a, text_b) pair
    # For tagging rows: the input text and the tokenizers Encoding (word ids, character offsets). Kept, not
    # copied out, so sequence-level rows pay nothing for them; not part of equality.
    text: str | None = field(default=None, compare=False, repr=False)
    encoding: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Padded:
    """A padded batch, int64 arrays of shape [rows, longest row]."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    truncated: np.ndarray  # bool [rows]


ONE_TOKEN_TYPE_MODELS = ("roberta", "xlm-roberta")  # their embeddings have one token type


class TextEncoder:
    """The deployment's tokenizer with its max_length, pad id and token-type rule."""

    def __init__(
        self, tokenizer_file: str | Path, max_length: int, *, single_token_type: bool = False, pad_id: int | None = None
    ) -> None:
        try:
            self._plain = Tokenizer.from_file(str(tokenizer_file))
            self._trunc = Tokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # tokenizers raises a bare Exception on a malformed file
            raise ArtifactError(f"cannot read the tokenizer {tokenizer_file}: {exc}") from exc
        padding = self._plain.padding
        self._plain.no_padding()
        self._plain.no_truncation()
        self._trunc.no_padding()
        self._trunc.enable_truncation(max_length, strategy="longest_first")
        self.max_length = int(max_length)
        self.single_token_type = single_token_type
        if pad_id is None and padding:
            pad_id = int(padding["pad_id"])
        if pad_id is None:
            pad_id = next((i for t in PAD_TOKENS if (i := self._plain.token_to_id(t)) is not None), 0)
        self.pad_id = int(pad_id)

    @classmethod
    def of_deployment(cls, root: str | Path, manifest: Manifest) -> TextEncoder:
        """The deployment's tokenizer with the base's pad id and token-type rule (from ``manifest.base``).

        RoBERTa-family embeddings have one token type: a tokenizer emitting type 1 for pairs would index past
        the table, so those bases get zeros whatever the tokenizer says.
        """
        base = manifest.base
        return cls(
            Path(root) / safe_relpath(manifest.tokenizer.file),
            manifest.tokenizer.max_length,
            single_token_type=base.type_vocab_size <= 1 or base.model_type in ONE_TOKEN_TYPE_MODELS,
            pad_id=base.pad_token_id,
        )

    def _encode(self, tok: Tokenizer, rows: Sequence[Row]) -> list[Encoding]:
        return tok.encode_batch(list(rows), add_special_tokens=True)

    def count(self, rows: Sequence[Row]) -> list[int]:
        """Untruncated token counts (special tokens included); for servers' limits."""
        return [len(e.ids) for e in self._encode(self._plain, rows)] if rows else []

    def tokenize(
        self, rows: Sequence[Row], *, strict: bool = False, labels: Sequence[str] | None = None
    ) -> list[TokenRow]:
        """Tokenize ``rows``; ``labels[i]`` names row i in error messages (default ``inputs[i]``)."""
        if not rows:
            return []
        encs = self._encode(self._plain, rows)
        long_rows = [i for i, e in enumerate(encs) if len(e.ids) > self.max_length]
        if long_rows and strict:
            i = long_rows[0]
            where = labels[i] if labels is not None else f"inputs[{i}]"
            more = f" (and {len(long_rows) - 1} more rows)" if len(long_rows) > 1 else ""
            raise InputError(
                f"{where} has {len(encs[i].ids)} tokens, the deployment's max_length is {self.max_length}{more}; "
                "pass strict=False to truncate it (the row is then flagged truncated), shorten the text, "
                "or re-export the deployment with a larger --max-length"
            )
        cut: dict[int, Encoding] = {}
        if long_rows:  # rows over max_length are encoded again, truncated
            cut = dict(zip(long_rows, self._encode(self._trunc, [rows[i] for i in long_rows]), strict=True))
        out = []
        for i, e in enumerate(encs):
            t = cut.get(i, e)
            row = rows[i]
            out.append(
                TokenRow(
                    ids=t.ids,
                    type_ids=t.type_ids,
                    count=len(e.ids),
                    truncated=i in cut,
                    pair=isinstance(row, tuple),
                    text=row if isinstance(row, str) else None,
                    encoding=t,
                )
            )
        return out

    def pad(self, rows: Sequence[TokenRow]) -> Padded:
        """Pad to the longest row of this batch (dynamic padding)."""
        n = len(rows)
        width = max((len(r.ids) for r in rows), default=1)
        ids = np.full((n, width), self.pad_id, dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        types = np.zeros((n, width), dtype=np.int64)
        for i, r in enumerate(rows):
            k = len(r.ids)
            ids[i, :k] = r.ids
            mask[i, :k] = 1
            if not self.single_token_type:
                types[i, :k] = r.type_ids
        return Padded(ids, mask, types, np.array([r.truncated for r in rows], dtype=bool))


def length_buckets(lengths: Sequence[int], max_rows: int, weights: Sequence[int] | None = None) -> list[list[int]]:
    """Split row indices into length-sorted chunks of at most ``max_rows`` (weighted) rows.

    Sorting by length before chunking keeps padding small for large inputs: each chunk pads to its own
    longest row. ``weights[i]`` is how many rows index i expands to downstream (e.g. tasks in a fan-out);
    a chunk always holds at least one index.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    w = weights or [1] * len(lengths)
    chunks: list[list[int]] = []
    cur: list[int] = []
    load = 0
    for i in order:
        if cur and load + w[i] > max_rows:
            chunks.append(cur)
            cur, load = [], 0
        cur.append(i)
        load += w[i]
    if cur:
        chunks.append(cur)
    return chunks
