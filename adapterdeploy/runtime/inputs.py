"""Streaming readers of prediction inputs for ``adapterdeploy predict --input FILE`` (no labels needed).

Formats by extension: ``.jsonl``/``.ndjson`` (a JSON string, a [text_a, text_b] list, or an object with a text
column per datasets.py's names), ``.tsv`` (header; tab-separated, no quoting) and ``.csv`` (header; CSV
quoting), anything else one text per line. Rows are yielded one at a time, so a file of any size streams
through in batches; the byte offset travels with each row for a progress bar.

Memory stays bounded whatever the file holds: lines are read with ``readline(limit)``, so a line longer
than ``max_chars`` (the server's ``--max-chars-per-text`` default) is refused after reading at most that
many characters — a 10 MB line or ``/dev/zero`` never reaches memory whole, let alone the tokenizer. A
binary file (not UTF-8, or with NUL bytes) is refused with its line number.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from adapterdeploy.datasets import TEXT_COLUMNS
from adapterdeploy.datasets import TEXT_PAIR_COLUMNS as PAIR_COLUMNS
from adapterdeploy.errors import DataError
from adapterdeploy.runtime.tokenization import Row

__all__ = ["MAX_CHARS_PER_TEXT", "PAIR_COLUMNS", "TEXT_COLUMNS", "iter_inputs"]

MAX_CHARS_PER_TEXT = 20000  # per input line of predict --input, and per text in the server (same default)


def _from_json(value: Any, where: str) -> Row:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value):
        return (value[0], value[1])
    if isinstance(value, dict):
        text = next((value[c] for c in TEXT_COLUMNS if c in value), None)
        if not isinstance(text, str):
            raise DataError(f"{where}: no text column (one of {', '.join(TEXT_COLUMNS)}) with a string value")
        pair = next((value[c] for c in PAIR_COLUMNS if c in value), None)
        return (text, pair) if isinstance(pair, str) else text
    raise DataError(f"{where}: expected a string, a [text_a, text_b] list or an object, got {type(value).__name__}")


def _columns(header: list[str], where: str) -> tuple[int, int | None]:
    names = [h.strip() for h in header]
    text = next((names.index(c) for c in TEXT_COLUMNS if c in names), None)
    if text is None:
        raise DataError(f"{where}: the header {names} has no text column; name one of {', '.join(TEXT_COLUMNS)}")
    pair = next((names.index(c) for c in PAIR_COLUMNS if c in names), None)
    return text, pair


def _bounded_lines(stream: IO[str], name: str, max_chars: int) -> Iterator[str]:
    """Lines of ``stream``, each read with a bound: DataError for a longer line, a NUL byte or non-UTF-8 bytes."""
    lineno = 0
    while True:
        try:
            line = stream.readline(max_chars + 2)  # + room for "\r\n": a longer read means a longer line
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{name}:{lineno + 1}: not UTF-8 text ({exc.reason} at byte {exc.start} of a chunk); "
                "is it a binary file? pass a UTF-8 text file"
            ) from None
        if not line:
            return
        lineno += 1
        if len(line.rstrip("\r\n")) > max_chars:
            raise DataError(
                f"{name}:{lineno}: the line is longer than {max_chars} characters "
                "(--max-chars-per-text); split it, or raise the limit"
            )
        if "\x00" in line:
            raise DataError(f"{name}:{lineno}: contains a NUL byte; is it a binary file? pass a UTF-8 text file")
        yield line


def iter_inputs(stream: IO[str], name: str, max_chars: int = MAX_CHARS_PER_TEXT) -> Iterator[tuple[Row, int]]:
    """Yield ``(row, bytes read so far)`` from an open text stream; ``name`` picks the format and labels errors."""
    suffix = Path(name).suffix.lower()
    done = 0
    if suffix in (".tsv", ".csv"):
        lines = _bounded_lines(stream, name, max_chars)
        header_line = next(lines, None)
        if header_line is None:
            return
        done += len(header_line.encode())
        if suffix == ".tsv":
            header = header_line.rstrip("\r\n").split("\t")
        else:
            header = next(csv.reader([header_line]))
        text_i, pair_i = _columns(header, f"{name}:1")
        reader = (l_.rstrip("\r\n").split("\t") for l_ in lines) if suffix == ".tsv" else csv.reader(lines)
        for lineno, fields in enumerate(reader, start=2):
            done += sum(len(f) for f in fields) + len(fields)
            if not fields or fields == [""]:
                continue
            if max(text_i, pair_i or 0) >= len(fields):
                raise DataError(f"{name}:{lineno}: {len(fields)} fields, the header has {len(header)}")
            yield ((fields[text_i], fields[pair_i]) if pair_i is not None else fields[text_i]), done
        return
    for lineno, line in enumerate(_bounded_lines(stream, name, max_chars), start=1):
        done += len(line.encode())
        stripped = line.rstrip("\r\n")
        if not stripped.strip():
            continue
        if suffix in (".jsonl", ".ndjson"):
            try:
                value = json.loads(stripped)
            except json.JSONDecodeError as exc:
                raise DataError(f"{name}:{lineno}: not valid JSON ({exc.msg})") from exc
            yield _from_json(value, f"{name}:{lineno}"), done
        else:
            yield stripped, done
