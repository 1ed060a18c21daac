"""The Open Inference Protocol's binary tensor data extension (Triton's ``binary_tensor_data``), both ways.

A request with the ``Inference-Header-Content-Length: N`` header carries N bytes of JSON followed by the
raw tensors, in the order of the inputs that declare ``parameters.binary_data_size``. A BYTES tensor's raw
form is each element as a 4-byte little-endian length and then its bytes; the same framing is the raw form
of BYTES in gRPC's ``raw_input_contents`` / ``raw_output_contents``. FP32 is little-endian IEEE float,
BOOL one byte per element, INT64 little-endian. Responses use the same layout for the outputs the client
asks to get binary.

Hand-written (about 60 lines) because the only libraries that implement the framing are client libraries
(tritonclient, kserve) with heavy dependencies the server must not need; numpy does the number packing.
Every length is checked against the bytes that are actually there, so a hostile header can neither
overrun the body nor make the server allocate more than the body's size.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from adapterdeploy.errors import InputError

__all__ = [
    "BINARY_EXTENSION",
    "HEADER",
    "decode_bytes_elements",
    "encode_bytes_elements",
    "encode_tensor",
    "header_length",
    "split_body",
    "split_raw",
]

BINARY_EXTENSION = "binary_tensor_data"
HEADER = "Inference-Header-Content-Length"
_LENGTH = struct.Struct("<I")
_DIGITS = re.compile(r"[0-9]{1,18}")


def header_length(value: str | None, body_size: int) -> int | None:
    """The ``Inference-Header-Content-Length`` header as an int (None without it), checked against the body."""
    if value is None:
        return None
    text = value.strip()
    if not _DIGITS.fullmatch(text):  # ASCII only: str.isdigit() also accepts "²" or "١", which int() refuses
        raise InputError(f"the {HEADER} header {value[:40]!r} is not a non-negative whole number of bytes")
    length = int(text)
    if length > body_size:
        raise InputError(
            f"the {HEADER} header says the JSON part has {length} bytes but the whole body has {body_size}; "
            "send the JSON header and then the binary tensors"
        )
    return length


def split_body(body: bytes, json_length: int | None) -> tuple[bytes, bytes]:
    """(JSON part, binary part) of a request body; without the header the whole body is JSON."""
    if json_length is None:
        return body, b""
    return body[:json_length], body[json_length:]


def split_raw(blob: bytes, sizes: Sequence[object], where: str = "inputs") -> list[bytes | None]:
    """Cut the binary part into one chunk per tensor that declares ``binary_data_size`` (None for the others).

    Every byte must belong to exactly one tensor: a size past the end, or bytes left over, is an error.
    """
    out: list[bytes | None] = []
    offset = 0
    for i, size in enumerate(sizes):
        if size is None:
            out.append(None)
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InputError(f"{where}[{i}].parameters.binary_data_size is {size!r}; it must be a byte count >= 0")
        if offset + size > len(blob):
            raise InputError(
                f"{where}[{i}].parameters.binary_data_size is {size} but only {len(blob) - offset} bytes of binary "
                "data are left after the JSON header; the sizes must add up to the binary part of the body"
            )
        out.append(blob[offset : offset + size])
        offset += size
    if offset != len(blob):
        raise InputError(
            f"the body has {len(blob) - offset} bytes after the JSON header and the declared binary tensors; "
            f"check {HEADER} and each input's binary_data_size"
        )
    return out


def decode_bytes_elements(raw: bytes, where: str) -> list[bytes]:
    """A raw BYTES tensor (4-byte little-endian length, then the bytes, per element) as its elements."""
    out: list[bytes] = []
    view = memoryview(raw)
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise InputError(
                f"{where}: {len(view) - offset} stray bytes at the end; each element needs a "
                "4-byte little-endian length before its bytes"
            )
        (size,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if size > len(view) - offset:
            raise InputError(f"{where}[{len(out)}] declares {size} bytes but only {len(view) - offset} remain")
        out.append(bytes(view[offset : offset + size]))
        offset += size
    return out


def encode_bytes_elements(values: Sequence[bytes]) -> bytes:
    """The raw BYTES form of ``values`` (the inverse of :func:`decode_bytes_elements`)."""
    return b"".join(_LENGTH.pack(len(v)) + v for v in values)


def encode_tensor(datatype: str, data: Sequence[Any]) -> bytes:
    """The raw form of a flat output tensor of type BYTES (str elements), FP32, BOOL or INT64."""
    if datatype == "BYTES":
        return encode_bytes_elements([str(v).encode("utf-8") for v in data])
    if datatype == "FP32":
        return np.asarray(data, dtype="<f4").tobytes()
    if datatype == "BOOL":
        return np.asarray(data, dtype=np.bool_).tobytes()
    if datatype == "INT64":
        return np.asarray(data, dtype="<i8").tobytes()
    raise ValueError(f"no raw form for datatype {datatype!r}")
